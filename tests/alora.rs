//! Activated LoRA (aLoRA) on the real model: logits against Hugging Face + PEFT (alone and stacked
//! with a plain LoRA), positions before the invocation bit-identical to the base, the base's KV cache
//! reused when an aLoRA is switched on mid-conversation, the GGUF form (llama.cpp's key, written by
//! `adapter convert`), the interactive chat switching one on between turns, and `merge`'s refusal
//! (malformed invocation tokens: tests/hostile.rs; the C API: tests/capi.rs).
mod common;
use common::*;
use edge_run::adapter::{alora, Adapter};
use edge_run::{Model, Session, SessionConfig};
use std::sync::Arc;

/// `<|im_start|>assistant\n`, the test adapter's invocation (see scripts/make_alora_reference.py).
const INVOCATION: [u32; 4] = [1, 520, 9531, 198];

fn alora_sequences() -> Vec<(String, Vec<u32>)> {
    sequences_in(&root().join("tests/data/reference/smollm2/alora_sequences.json"))
}

fn cfg(n_batch: usize) -> SessionConfig {
    all_logits(128, n_batch, 2)
}

/// Every position's logits of `ids` with the adapter set `set`, evaluated in batches of `n_batch`.
fn run(
    model: &Arc<Model>,
    set: &[(&Arc<Adapter>, f32)],
    ids: &[u32],
    n_batch: usize,
) -> Vec<Vec<f32>> {
    let mut s = Session::new(model.clone(), cfg(n_batch)).unwrap();
    s.set_adapters(set).unwrap();
    let mut rows = Vec::new();
    s.eval_each(ids, |_, l| rows.push(l.to_vec())).unwrap();
    rows
}

/// One adapter of a set and its scale.
type Entry<'a> = (&'a Arc<Adapter>, f32);

fn metrics(npz: &str, model: &Arc<Model>, set: &[(&Arc<Adapter>, f32)]) -> Metrics {
    let runs: Vec<_> = alora_sequences()
        .into_iter()
        .map(|(name, ids)| (name, run(model, set, &ids, 64)))
        .collect();
    metrics_vs_smollm2_npz(npz, &runs)
}

#[test]
fn alora_matches_hf_peft_alone_and_stacked() {
    let model = open_smollm2();
    let [alora, pirate] = shared_adapters(&model, ["alora-peft", "pirate-peft"]);
    assert_eq!(alora.invocation_tokens(), Some(&INVOCATION[..]));
    let cases: [(&str, Vec<Entry>, &str); 2] = [
        ("aLoRA alone", vec![(&alora, 1.0)], "hf_alora.npz"),
        (
            "pirate + aLoRA",
            vec![(&pirate, 1.0), (&alora, 1.0)],
            "hf_pirate1_alora1.npz",
        ),
    ];
    for (what, set, npz) in &cases {
        let m = metrics(npz, &model, set);
        eprintln!("{what} vs HF+PEFT: {m:?}");
        assert!(m.kl_mean <= 0.0025, "{what}: mean KL {}", m.kl_mean);
        assert!(m.top1 >= 0.985, "{what}: top-1 {}", m.top1);
    }
    // The references are far from what ignoring the gate would give: the base model (the aLoRA
    // never applied) and the aLoRA applied everywhere (as a plain LoRA) both miss the bar.
    let base = metrics("hf_alora.npz", &model, &[]);
    assert!(
        base.kl_mean > 0.02,
        "the aLoRA barely changes the logits: {base:?}"
    );
    let z = read_npz(&root().join("tests/data/reference/smollm2/hf_alora.npz"));
    let (name, ids) = alora_sequences()
        .into_iter()
        .find(|(n, _)| n == "chat_capital")
        .unwrap();
    let plain = Arc::new(plain_copy(
        &model,
        &root().join("tests/data/adapters/alora-peft"),
    ));
    let everywhere = compare(
        &reference(&z, &name),
        &run(&model, &[(&plain, 1.0)], &ids, 64),
    );
    assert!(everywhere.kl_mean > 0.02, "ungated aLoRA: {everywhere:?}");
}

/// The aLoRA's factors as a plain LoRA: the same folder without `alora_invocation_tokens`.
fn plain_copy(model: &Model, src: &std::path::Path) -> Adapter {
    let dir = empty_temp_dir("alora", "plain");
    let cfg = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["alora_invocation_tokens"] = serde_json::Value::Null;
    std::fs::write(dir.join("adapter_config.json"), v.to_string()).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let a = Adapter::load(&dir, &model.base_info).unwrap();
    assert!(!a.is_alora());
    a
}

#[test]
fn positions_before_the_invocation_are_the_base_bit_for_bit() {
    let model = open_smollm2();
    let [alora, pirate] = shared_adapters(&model, ["alora-peft", "pirate-peft"]);
    // Alone (against the base model) and stacked with a plain LoRA (against that LoRA alone).
    let sets: [(&str, Vec<Entry>); 2] = [("alone", vec![]), ("stacked", vec![(&pirate, 1.0)])];
    for (name, ids) in alora_sequences() {
        let start = alora::last_occurrence(&ids, &[], &INVOCATION).unwrap_or(ids.len());
        // One batch straddling the invocation, and batches of 8 (before, straddling, after).
        for ((how, without), n_batch) in sets.iter().flat_map(|s| [(s, 64), (s, 8)]) {
            let mut with_set = without.clone();
            with_set.push((&alora, 1.0));
            let base = run(&model, without, &ids, n_batch);
            let with = run(&model, &with_set, &ids, n_batch);
            for p in 0..start {
                let same = base[p]
                    .iter()
                    .zip(&with[p])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{name} {how}, batch {n_batch}: position {p} < invocation {start} differs"
                );
            }
            if start < ids.len() {
                assert_ne!(
                    base[start], with[start],
                    "{name} {how}: the aLoRA does nothing at {start}"
                );
            }
        }
    }
}

#[test]
fn switching_to_an_alora_mid_conversation_reuses_the_base_cache() {
    let model = open_smollm2();
    let [alora] = shared_adapters(&model, ["alora-peft"]);
    let (_, ids) = alora_sequences()
        .into_iter()
        .find(|(n, _)| n == "chat_capital")
        .unwrap();
    let start = alora::last_occurrence(&ids, &[], &INVOCATION).unwrap();
    let (prefix, rest) = ids.split_at(start);
    // The base evaluates the prefix; the aLoRA is switched on; the rest (invocation on) follows.
    let mut switched = Session::new(model.clone(), cfg(64)).unwrap();
    switched.eval(prefix).unwrap();
    switched.set_adapters(&[(&alora, 1.0)]).unwrap();
    let mut got = Vec::new();
    switched
        .eval_each(rest, |_, l| got.push(l.to_vec()))
        .unwrap();
    assert_eq!(
        switched.n_past(),
        ids.len(),
        "the prefix was evaluated again"
    );
    // The aLoRA set from the start, evaluated in the same two calls.
    let mut throughout = Session::new(model.clone(), cfg(64)).unwrap();
    throughout.set_adapters(&[(&alora, 1.0)]).unwrap();
    throughout.eval(prefix).unwrap();
    let mut want = Vec::new();
    throughout
        .eval_each(rest, |_, l| want.push(l.to_vec()))
        .unwrap();
    assert_eq!(got, want);
    // And both agree with the reference at the positions after the switch.
    let z = read_npz(&root().join("tests/data/reference/smollm2/hf_alora.npz"));
    let r = reference(&z, "chat_capital");
    let full = run(&model, &[(&alora, 1.0)], &ids, 64);
    let m = compare(&r, &full);
    assert!(m.kl_mean <= 0.0025, "{m:?}");
    // Decode steps, one token per eval: the invocation is complete only at its last token, so the
    // session evaluates its first tokens again with the aLoRA then; from there on the logits are the
    // batched run's (up to the decode path's own rounding).
    let mut steps = Session::new(model.clone(), cfg(1)).unwrap();
    steps.set_adapters(&[(&alora, 1.0)]).unwrap();
    let rows: Vec<Vec<f32>> = ids
        .iter()
        .map(|&t| steps.eval(&[t]).unwrap().to_vec())
        .collect();
    let done = start + INVOCATION.len() - 1;
    let kl: Vec<f64> = (done..ids.len())
        .map(|p| kl_div(&full[p], &rows[p]))
        .collect();
    let mean = kl.iter().sum::<f64>() / kl.len() as f64;
    assert!(
        mean < 2e-4,
        "decode steps vs one batch after the invocation: mean KL {mean}"
    );
    // Without the second evaluation (the same factors as a plain LoRA switched on at the
    // invocation's last token: the cache entries of its first tokens lack them) the difference is
    // far larger, so the check above can fail.
    let plain = Arc::new(plain_copy(
        &model,
        &root().join("tests/data/adapters/alora-peft"),
    ));
    let mut late = Session::new(model.clone(), cfg(64)).unwrap();
    late.eval(&ids[..done]).unwrap();
    late.set_adapters(&[(&plain, 1.0)]).unwrap();
    let mut late_rows = Vec::new();
    late.eval_each(&ids[done..], |_, l| late_rows.push(l.to_vec()))
        .unwrap();
    let kl_late: f64 = (done..ids.len())
        .map(|p| kl_div(&full[p], &late_rows[p - done]))
        .sum::<f64>()
        / kl.len() as f64;
    eprintln!("after the invocation, mean KL to one batch: decode steps {mean:.2e}, no re-evaluation {kl_late:.2e}");
    assert!(kl_late > 10.0 * mean.max(1e-5), "{kl_late} vs {mean}");
}

#[test]
fn gguf_form_carries_the_invocation() {
    let model = open_smollm2();
    let [peft] = shared_adapters(&model, ["alora-peft"]);
    let dir = TempDir::new("alora", "gguf");
    let out = dir.join("alora.gguf");
    let src = root().join("tests/data/adapters/alora-peft");
    let o = convert_cli(&src, &smollm2_path(), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gguf = Arc::new(Adapter::load(&out, &model.base_info).unwrap());
    assert_eq!(gguf.invocation_tokens(), Some(&INVOCATION[..]));
    let (_, ids) = alora_sequences()
        .into_iter()
        .find(|(n, _)| n == "chat_capital")
        .unwrap();
    let a = run(&model, &[(&peft, 1.0)], &ids, 64);
    let b = run(&model, &[(&gguf, 1.0)], &ids, 64);
    let start = alora::last_occurrence(&ids, &[], &INVOCATION).unwrap();
    assert_eq!(a[..start], b[..start]);
    let z = read_npz(&root().join("tests/data/reference/smollm2/hf_alora.npz"));
    let m = compare(&reference(&z, "chat_capital"), &b);
    assert!(m.kl_mean <= 0.0025 && m.top1 >= 0.985, "{m:?}");
}

#[test]
fn merge_refuses_an_alora() {
    let dir = TempDir::new("alora", "merge");
    let out = dir.join("merged.gguf");
    let src = root().join("tests/data/adapters/alora-peft");
    let o = smollm2_with_adapter("merge", &src, &["-o", path_arg(&out), "--type", "q8_0"]);
    refused(&o, 1, "cannot be merged");
    assert!(!out.exists());
}

#[test]
fn info_describes_an_alora() {
    let src = root().join("tests/data/adapters/alora-peft");
    let text = success_stdout(&info_with_adapter(&src));
    assert!(
        text.contains("aLoRA") && text.contains("[1, 520, 9531, 198]"),
        "{text}"
    );
}

#[test]
fn diagnose_describes_an_alora() {
    let src = root().join("tests/data/adapters/alora-peft");
    let o = smollm2_with_adapter("diagnose", &src, &["--max-tokens", "600", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&success_stdout(&o)).unwrap();
    let a = &v["adapters"][0]["alora"];
    assert_eq!(a["invocation_tokens"], serde_json::json!(INVOCATION));
    // The built-in probe's first assistant turn.
    let start = a["starts_at"]
        .as_u64()
        .expect("the probe holds the invocation") as usize;
    assert!(start > 0 && start < 600, "{a}");
    // The aLoRA changes the distributions (after its invocation only).
    let kl = v["runs"][1]["kl_base_mean"].as_f64().expect("kl_base_mean");
    assert!(kl > 0.0, "{v}");
}

#[test]
fn cli_chat_applies_an_alora_to_the_answer() {
    let model = smollm2_path();
    let src = root().join("tests/data/adapters/alora-peft");
    let chat = |adapter: Option<&std::path::Path>| {
        let mut args = vec![
            "-m",
            path_arg(&model),
            "--chat",
            "-p",
            "What is the capital of France?",
        ];
        args.extend(["--temp", "0", "-n", "12", "-c", "256"]);
        if let Some(a) = adapter {
            args.extend(["--adapter", path_arg(a)]);
        }
        success_stdout(&edge_run(&args))
    };
    // The chat template ends the prompt with the invocation (`<|im_start|>assistant\n`), so the
    // answer is the aLoRA's; without the invocation (a plain continuation) it is the base's.
    let (base, with) = (chat(None), chat(Some(&src)));
    assert_ne!(base, with, "the aLoRA did not change the answer");
    let plain = |adapter: Option<&std::path::Path>| {
        let mut args = vec!["-m", path_arg(&model), "-p", "The capital of France is"];
        args.extend(["--temp", "0", "-n", "8", "-c", "64"]);
        if let Some(a) = adapter {
            args.extend(["--adapter", path_arg(a)]);
        }
        let o = edge_run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    assert_eq!(
        plain(None),
        plain(Some(&src)),
        "the aLoRA acted without its invocation"
    );
}

/// The interactive chat on SmolLM2 (greedy, 16 tokens a reply) with `input` on stdin and `flags`:
/// the replies (stdout) and the number of prompt tokens each turn evaluated (stderr).
fn interactive(input: &str, flags: &[&str]) -> (String, Vec<usize>) {
    use std::io::Write;
    let m = smollm2_path();
    let mut args = vec!["-m", path_arg(&m), "--chat", "-n", "16", "--temp", "0"];
    args.extend(["-c", "512"]);
    args.extend(flags);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    let prompts = e
        .split("prompt ")
        .skip(1)
        .filter_map(|r| r.split_once(" tokens in ")?.0.parse().ok())
        .collect();
    (String::from_utf8_lossy(&o.stdout).into_owned(), prompts)
}

#[test]
fn interactive_chat_switches_to_an_alora_without_evaluating_again() {
    let src = root().join("tests/data/adapters/alora-peft");
    let (q1, q2) = ("What is the capital of France?", "Tell me about Rome.");
    let add = format!("/adapter add {}", src.display());
    let (base, base_prompts) = interactive(&format!("{q1}\n{q2}\n"), &[]);
    let (switched, prompts) = interactive(&format!("{q1}\n{add}\n{q2}\n"), &[]);
    let (again, again_prompts) =
        interactive(&format!("{q1}\n{add}\n{q2}\n"), &["--reeval-on-swap"]);
    let (b, s, a): (Vec<_>, Vec<_>, Vec<_>) = (
        base.lines().collect(),
        switched.lines().collect(),
        again.lines().collect(),
    );
    assert_eq!(b.len(), 2, "{base:?}");
    assert_eq!((s.len(), a.len()), (2, 2), "{switched:?} / {again:?}");
    // The first reply is the base's; the second, after the switch, is the aLoRA's (its invocation
    // ends the second prompt) ...
    assert_eq!(s[0], b[0]);
    assert_ne!(s[1], b[1], "the aLoRA did not change the second reply");
    // ... computed on the base's cache of the first turn: the same reply as evaluating the whole
    // conversation again with the aLoRA, with only the second turn's new tokens evaluated.
    assert_eq!(s[1], a[1]);
    assert_eq!(prompts, base_prompts, "{prompts:?} vs {base_prompts:?}");
    assert_eq!(prompts.len(), 2);
    assert!(
        again_prompts[1] > prompts[0] + prompts[1],
        "{again_prompts:?} vs {prompts:?}"
    );
}

/// On a model with sliding-window layers (the tiny Gemma 3 fixture, window 5), an aLoRA switched on
/// long after its invocation: evaluating again from the invocation needs positions the ring has
/// already overwritten, so the session evaluates the whole context again; the last positions' logits
/// are then exactly those of a session that had the aLoRA all along.
#[test]
fn switching_an_alora_on_after_the_window_passed_its_invocation() {
    let dir = root().join("models/fixtures");
    let model = Arc::new(Model::open(dir.join("tiny-gemma3.gguf")).unwrap());
    assert!(model.hp.n_swa > 0 && model.hp.n_swa < 8);
    // The fixture's PEFT adapter with an invocation.
    let src = dir.join("tiny-gemma3-lora-peft");
    let tmp = TempDir::new("alora", "gemma3");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    let invocation = [5u32, 9];
    v["alora_invocation_tokens"] = serde_json::json!(invocation);
    std::fs::write(tmp.join("adapter_config.json"), v.to_string()).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        tmp.join("adapter_model.safetensors"),
    )
    .unwrap();
    let alora = Arc::new(Adapter::load(&tmp, &model.base_info).unwrap());
    assert!(alora.is_alora());
    let mut ids: Vec<u32> = (0..40).map(|i| 20 + (i * 37) % 200).collect();
    ids[3..5].copy_from_slice(&invocation);
    let (head, tail) = ids.split_at(36);
    let cfg = all_logits(64, 4, 1);
    let last = |s: &mut Session| {
        let mut rows = Vec::new();
        s.eval_each(tail, |_, l| rows.push(l.to_vec())).unwrap();
        assert_eq!(s.n_past(), ids.len());
        rows
    };
    let mut all_along = Session::new(model.clone(), cfg.clone()).unwrap();
    all_along.set_adapters(&[(&alora, 1.0)]).unwrap();
    all_along.eval(head).unwrap();
    let want = last(&mut all_along);
    let mut switched = Session::new(model.clone(), cfg.clone()).unwrap();
    switched.eval(head).unwrap();
    switched.set_adapters(&[(&alora, 1.0)]).unwrap();
    let got = last(&mut switched);
    assert!(
        got == want,
        "switched on late: the last positions' logits differ"
    );
    // The aLoRA matters at those positions.
    let mut base = Session::new(model.clone(), cfg).unwrap();
    base.eval(head).unwrap();
    assert!(last(&mut base) != want, "the aLoRA changes nothing");
}
