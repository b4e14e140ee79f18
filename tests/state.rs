//! Saved prompt states (`Session::save_state` / `load_state`): a state restored into a new session on a
//! newly opened model gives logits bit-identical to evaluating the prompt again, and so does evaluating
//! further tokens, for every KV cache type, with a stacked adapter set and on Gemma 3's sliding-window
//! rings; a state of another model, KV type, adapter set or scale, or too many tokens is refused with
//! the difference named; truncated, bit-flipped and swept files are refused without a panic; and every
//! refused load leaves the session as it was.
mod common;
use common::state_file::{layout, resealed};
use common::*;
use edge_run::adapter::Adapter;
use edge_run::session::KvType;
use edge_run::{Model, Session, SessionConfig};
use std::path::Path;
use std::sync::Arc;

fn cfg(n_ctx: usize, kv: KvType) -> SessionConfig {
    SessionConfig {
        n_ctx,
        n_batch: 64,
        n_threads: 2,
        type_k: kv,
        type_v: kv,
        ..Default::default()
    }
}

/// About 300 tokens of the reference sequences, one after another.
fn prompt_300() -> Vec<u32> {
    let mut ids: Vec<u32> = sequences().into_iter().flat_map(|(_, s)| s).collect();
    while ids.len() < 300 {
        ids.extend_from_within(..);
    }
    ids.truncate(300);
    ids
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `a` and `b` give bit-identical logits now and over `n` greedy tokens (each evaluates its own argmax;
/// the argmaxes must agree).
#[track_caller]
fn same_continuation(a: &mut Session, b: &mut Session, n: usize, what: &str) {
    assert_eq!(a.n_past(), b.n_past(), "{what}: n_past");
    assert_eq!(a.tokens(), b.tokens(), "{what}: tokens");
    for step in 0..=n {
        let (la, lb) = (a.logits().to_vec(), b.logits().to_vec());
        assert!(
            bits(&la) == bits(&lb),
            "{what}: logits differ at step {step}"
        );
        if step == n {
            break;
        }
        let t = edge_run::sampling::argmax(&la) as u32;
        a.eval(&[t]).unwrap();
        b.eval(&[t]).unwrap();
    }
}

/// `s` holds what `twin` holds: tokens, logits, and the next token's logits.
#[track_caller]
fn unchanged(s: &mut Session, twin: &mut Session, what: &str) {
    assert_eq!(s.n_past(), twin.n_past(), "{what}: n_past changed");
    assert_eq!(s.tokens(), twin.tokens(), "{what}: tokens changed");
    assert_eq!(
        s.last_logits().map(bits),
        twin.last_logits().map(bits),
        "{what}: logits changed"
    );
}

#[track_caller]
fn refused(r: edge_run::Result<Vec<u8>>, needles: &[&str]) -> String {
    let e = match r {
        Ok(_) => panic!("accepted; expected an error naming {needles:?}"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(e.contains(n), "error does not name `{n}`: {e}");
    }
    e
}

fn temp(name: &str) -> TempDir {
    TempDir::new("state", name)
}

#[test]
fn restored_state_continues_bit_identically_for_every_kv_type() {
    let prompt = prompt_300();
    let dir = temp("kv-types");
    for kv in KvType::ALL {
        let mut fresh = Session::new(open_smollm2(), cfg(512, kv)).unwrap();
        fresh.eval(&prompt).unwrap();
        let file = dir.join(format!("{}.state", kv.name()));
        fresh.save_state(&file).unwrap();
        // Another model object, as another process would open it.
        let mut restored = Session::new(open_smollm2(), cfg(512, kv)).unwrap();
        restored.eval(&prompt[..7]).unwrap(); // something to replace
        assert!(restored.load_state(&file).unwrap().is_empty());
        same_continuation(&mut fresh, &mut restored, 20, kv.name());
    }
}

#[test]
fn restored_state_with_stacked_adapters_and_application_data() {
    let prompt = prompt_300();
    let m1 = open_smollm2();
    let [pirate, shout] = shared_adapters(&m1, ["pirate.gguf", "shout.gguf"]);
    let mut fresh = Session::new(m1.clone(), cfg(512, KvType::F16)).unwrap();
    fresh
        .set_adapters(&[(&pirate, 1.0), (&shout, 0.5)])
        .unwrap();
    fresh.eval(&prompt).unwrap();
    let mut bytes = Vec::new();
    fresh.save_state_to(&mut bytes, b"conversation").unwrap();

    let m2 = open_smollm2();
    let [pirate2, shout2] = shared_adapters(&m2, ["pirate.gguf", "shout.gguf"]);
    let new = || Session::new(m2.clone(), cfg(512, KvType::F16)).unwrap();
    let mut restored = new();
    restored
        .set_adapters(&[(&pirate2, 1.0), (&shout2, 0.5)])
        .unwrap();
    let app = restored.load_state_from(&bytes, "adapters.state").unwrap();
    assert_eq!(app, b"conversation");
    same_continuation(&mut fresh, &mut restored, 20, "pirate 1.0 + shout 0.5");

    // Another scale, another order, one adapter missing, none: refused, naming the sets.
    let sets: [&[(&Arc<Adapter>, f32)]; 4] = [
        &[(&pirate2, 1.0), (&shout2, 0.25)],
        &[(&shout2, 0.5), (&pirate2, 1.0)],
        &[(&pirate2, 1.0)],
        &[],
    ];
    for set in sets {
        let (mut s, mut twin) = (new(), new());
        for x in [&mut s, &mut twin] {
            x.set_adapters(set).unwrap();
            x.eval(&prompt[..5]).unwrap();
        }
        let e = refused(
            s.load_state_from(&bytes, "adapters.state"),
            &["adapters.state", "adapter set", "pirate.gguf", "scale 0.5"],
        );
        eprintln!("{e}");
        unchanged(&mut s, &mut twin, "adapter mismatch");
        same_continuation(&mut s, &mut twin, 1, "after an adapter mismatch");
    }
}

#[test]
fn mismatches_are_refused_and_leave_the_session_unchanged() {
    let prompt = prompt_300();
    let dir = temp("mismatch");
    let model = open_smollm2();
    let mut saver = Session::new(model.clone(), cfg(512, KvType::Q8_0)).unwrap();
    saver.eval(&prompt).unwrap();
    let q8 = dir.join("q8.state");
    saver.save_state(&q8).unwrap();
    let mut tiny = Session::new(
        Arc::new(Model::open(fixture("tiny-q8_0.gguf")).unwrap()),
        cfg(64, KvType::F16),
    )
    .unwrap();
    tiny.eval(&[1, 2, 3]).unwrap();
    let tiny_file = dir.join("tiny.state");
    tiny.save_state(&tiny_file).unwrap();

    let new = |n_ctx, kv: KvType| {
        let mut s = Session::new(model.clone(), cfg(n_ctx, kv)).unwrap();
        s.eval(&prompt[..9]).unwrap();
        s
    };
    let q8s = q8.display().to_string();
    let cases: [(usize, KvType, &Path, Vec<&str>); 4] = [
        (
            512,
            KvType::F16,
            &q8,
            vec![&q8s, "KV type K q8_0; this session's is f16"],
        ),
        (
            512,
            KvType::F32,
            &q8,
            vec![&q8s, "KV type K q8_0; this session's is f32"],
        ),
        (
            128,
            KvType::Q8_0,
            &q8,
            vec![
                &q8s,
                "holds 300 tokens",
                "tokens.count",
                "context holds 128",
            ],
        ),
        (
            512,
            KvType::F16,
            &tiny_file,
            vec!["tiny.state", "the model"],
        ),
    ];
    for (n_ctx, kv, file, needles) in cases {
        let (mut s, mut twin) = (new(n_ctx, kv), new(n_ctx, kv));
        eprintln!("{}", refused(s.load_state(file), &needles));
        unchanged(&mut s, &mut twin, &needles[1..].join(" "));
        same_continuation(&mut s, &mut twin, 1, "after a refused load");
    }
    // The other way round: a large state of another model into the tiny one's session.
    eprintln!(
        "{}",
        refused(tiny.load_state(&q8), &["q8.state", "the model"])
    );
    assert_eq!(tiny.tokens(), &[1, 2, 3]);
    // A missing file names itself.
    refused(tiny.load_state(&dir.join("none.state")), &["none.state"]);
}

#[test]
fn hostile_state_files_are_refused_without_a_panic_or_a_change() {
    let model = open_smollm2();
    let prompt = &prompt_300()[..24];
    let [pirate] = shared_adapters(&model, ["pirate.gguf"]);
    let new = || {
        let mut s = Session::new(model.clone(), cfg(64, KvType::F16)).unwrap();
        s.set_adapters(&[(&pirate, 0.75)]).unwrap();
        s
    };
    let mut saver = new();
    saver.eval(prompt).unwrap();
    let mut good = Vec::new();
    saver.save_state_to(&mut good, b"{}").unwrap();
    let (mut s, mut twin) = (new(), new());
    for x in [&mut s, &mut twin] {
        x.eval(&prompt[..3]).unwrap();
    }
    let name = "hostile.state";
    let mut n_cases = 0;
    let mut check = |bytes: &[u8], what: &str, needles: &[&str]| {
        let e = refused(s.load_state_from(bytes, name), needles);
        assert!(
            e.contains(name),
            "{what}: error does not name the file: {e}"
        );
        unchanged(&mut s, &mut twin, what);
        n_cases += 1;
    };
    let kv = model.hp.kv_dim();
    let lay = layout(&good, model.hp.n_layer, 2 * 2 * kv, model.hp.n_vocab);
    // Truncation: every offset of the identity and the tokens, then every 997th byte.
    let cuts = (0..lay.context_end + 2).chain((lay.context_end..good.len()).step_by(997));
    for cut in cuts.chain([good.len() - 1]) {
        check(&good[..cut], &format!("cut at {cut}"), &[]);
    }
    // Every bit of every byte before the logits flipped: the checksum refuses it; resealed, the
    // identity's fields refuse it (a token id or flag may legitimately change, so only the identity).
    for i in 0..lay.context_end {
        for bit in [0, 3, 7] {
            let mut b = good.clone();
            b[i] ^= 1 << bit;
            check(&b, &format!("byte {i} bit {bit}"), &[]);
            if i < lay.identity_end && !lay.names.iter().any(|r| r.contains(&i) && i >= r.start + 8)
            {
                check(&resealed(b), &format!("resealed byte {i} bit {bit}"), &[]);
            }
        }
    }
    // Every length and count swept, resealed.
    for &(field, at) in &lay.lengths {
        for v in [0u64, 1, 1 << 31, 1 << 32, 1 << 63, u64::MAX] {
            let mut b = good.clone();
            if u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) == v {
                continue;
            }
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            check(&resealed(b), &format!("{field} = {v}"), &[]);
        }
    }
    // Wrong magic and version; trailing bytes; the checksum itself.
    let mut b = good.clone();
    b[..8].copy_from_slice(b"GGUF\0\0\0\0");
    check(&resealed(b), "magic", &["magic"]);
    for v in [0u32, 2, u32::MAX] {
        let mut b = good.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        check(&resealed(b), "version", &["version", &v.to_string()]);
    }
    let mut b = good[..good.len() - 8].to_vec();
    b.extend_from_slice(&[0; 9]);
    check(
        &resealed(b),
        "trailing bytes",
        &["bytes after the last layer"],
    );
    let mut b = good.clone();
    let n = b.len();
    b[n - 1] ^= 1;
    check(&b, "checksum", &["checksum"]);
    // Larger than any state this session could write: refused before it is read whole.
    let mut b = good.clone();
    b.resize(good.len() + edge_run::state::MAX_APP_BYTES + (1 << 20), 0);
    check(
        &b,
        "oversized",
        &["size", "more than a state of this session can be"],
    );
    let dir = temp("oversized");
    let big = dir.join(name);
    std::fs::write(&big, &b).unwrap();
    let e = refused(
        s.load_state(&big),
        &["size", "more than a state of this session can be"],
    );
    assert!(e.contains(&big.display().to_string()), "{e}");
    unchanged(&mut s, &mut twin, "oversized file");
    eprintln!("{n_cases} hostile state files refused");
    same_continuation(&mut s, &mut twin, 1, "after the hostile files");
    // And the good one is accepted.
    s.load_state_from(&good, name).unwrap();
    same_continuation(&mut s, &mut saver, 3, "the good file");
}

/// Gemma 3 270M (window 512) past its window, at a context of 1024: the local layers save only their
/// ring's last 512 positions, and the restored session continues bit-identically.
#[test]
fn gemma3_rings_past_the_window_restore_bit_identically() {
    let open = || Arc::new(Model::open(gemma_path()).unwrap());
    let m = open();
    assert_eq!(m.hp.n_swa, 512);
    let mut prompt = Vec::new();
    while prompt.len() < 600 {
        prompt.extend(prompt_300().iter().map(|&t| t % m.hp.n_vocab as u32));
    }
    prompt.truncate(600);
    let mut fresh = Session::new(m, cfg(1024, KvType::F16)).unwrap();
    fresh.eval(&prompt).unwrap();
    let mut bytes = Vec::new();
    fresh.save_state_to(&mut bytes, &[]).unwrap();
    let mut restored = Session::new(open(), cfg(1024, KvType::F16)).unwrap();
    restored.load_state_from(&bytes, "gemma.state").unwrap();
    same_continuation(&mut fresh, &mut restored, 20, "gemma3 600 tokens");
}

/// The tiny Gemma 3 fixture (window 5): rings that wrapped, a truncate into overwritten slots (the
/// save replays first), and a file whose ring keeps fewer positions than the session needs.
#[test]
fn tiny_gemma3_rings_replay_and_narrow_rings() {
    let m = Arc::new(Model::open(fixture("tiny-gemma3.gguf")).unwrap());
    let toks: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % m.hp.n_vocab as u32).collect();
    let new = || Session::new(m.clone(), cfg(64, KvType::F16)).unwrap();
    let mut fresh = new();
    fresh.eval(&toks).unwrap();
    fresh.truncate(30); // reaches into overwritten ring slots: a replay is pending
    fresh.eval(&toks[30..31]).unwrap();
    let mut bytes = Vec::new();
    fresh.save_state_to(&mut bytes, &[]).unwrap();
    let mut restored = new();
    restored
        .load_state_from(&bytes, "tiny-gemma3.state")
        .unwrap();
    same_continuation(&mut fresh, &mut restored, 10, "tiny gemma3");

    // Save right after a truncate into the ring (the save replays, which leaves the last kept
    // position's logits), and after one that needs no replay (no logits are saved).
    for (keep, replays) in [(20, true), (39, false)] {
        let mut a = new();
        a.eval(&toks).unwrap();
        a.truncate(keep);
        let mut bytes = Vec::new();
        a.save_state_to(&mut bytes, &[]).unwrap();
        let mut b = new();
        b.load_state_from(&bytes, "truncated.state").unwrap();
        assert_eq!(b.last_logits().is_some(), replays, "keep {keep}");
        assert_eq!(a.last_logits().map(bits), b.last_logits().map(bits));
        a.eval(&toks[keep..keep + 1]).unwrap();
        b.eval(&toks[keep..keep + 1]).unwrap();
        same_continuation(&mut a, &mut b, 5, "after a truncate");
    }

    // A ring layer keeping one position fewer than the window: refused by the ring check.
    let local = m.hp.swa.iter().position(|&s| s).unwrap();
    let row = 2 * 2 * m.hp.kv_dim();
    let mut bytes = Vec::new();
    fresh.save_state_to(&mut bytes, &[]).unwrap();
    let lay = layout(&bytes, m.hp.n_layer, row, m.hp.n_vocab);
    let at = lay
        .lengths
        .iter()
        .filter(|(f, _)| f.starts_with("layers"))
        .nth(local)
        .unwrap()
        .1;
    let rows = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(rows as usize, m.hp.n_swa, "a local layer keeps its window");
    let mut b = bytes[..at].to_vec();
    b.extend_from_slice(&(rows - 1).to_le_bytes());
    let k0 = at + 8;
    let k_len = rows as usize * row / 2;
    b.extend_from_slice(&bytes[k0 + row / 2..k0 + k_len]);
    b.extend_from_slice(&bytes[k0 + k_len + row / 2..]);
    let mut s = new();
    s.eval(&toks[..2]).unwrap();
    let e = refused(
        s.load_state_from(&resealed(b), "narrow.state"),
        &["narrow.state", &format!("layer {local}"), "sliding window"],
    );
    eprintln!("{e}");
    assert_eq!(s.tokens(), &toks[..2]);
}

/// Save and load time against evaluating the same 300-token prompt (printed; run with --nocapture).
#[test]
fn save_and_load_time_vs_prompt_evaluation() {
    let prompt = prompt_300();
    let model = open_smollm2();
    let dir = temp("timing");
    let file = dir.join("p.state");
    for kv in KvType::ALL {
        let mut s = Session::new(model.clone(), cfg(2048, kv)).unwrap();
        s.eval(&prompt[..8]).unwrap(); // warm the weights' pages
        s.reset();
        let t = std::time::Instant::now();
        s.eval(&prompt).unwrap();
        let eval = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        s.save_state(&file).unwrap();
        let save = t.elapsed().as_secs_f64();
        let mut r = Session::new(model.clone(), cfg(2048, kv)).unwrap();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            r.load_state(&file).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let size = std::fs::metadata(&file).unwrap().len();
        eprintln!(
            "state {}: prompt of {} tokens evaluated in {:.1} ms; saved in {:.1} ms ({:.2} MiB); \
             loaded in {:.1} ms = {:.1}% of the evaluation",
            kv.name(),
            prompt.len(),
            eval * 1e3,
            save * 1e3,
            size as f64 / 1048576.0,
            best * 1e3,
            100.0 * best / eval
        );
        assert_eq!(bits(r.logits()), bits(s.logits()));
    }
}
