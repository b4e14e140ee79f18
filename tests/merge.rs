//! `edge-run merge`: folding LoRA adapters into the weights.
//!
//! - scale 0 with `--type same` reproduces every base tensor and metadata entry byte for byte;
//! - on the tiny fixtures (`models/fixtures`, adapter `tiny-lora.gguf`), the merged model's logits match
//!   the runtime's logits with the adapter applied on the side: tightly at F32/F16, looser at Q8_0;
//! - on the real SmolLM2 Q4_1 with the shared pirate adapter, the merged files (F16, Q8_0, and for
//!   information the base's own Q4_1) against the HF+PEFT reference logits;
//! - refusals: overwriting an input, a mismatched adapter (nothing is left behind), bad CLI arguments.
//!
//! `cargo test --release --test merge -- --nocapture` prints the measured errors.
mod common;
// The binary's tools (not part of the runtime library), compiled into this test.
#[allow(dead_code)]
#[path = "../src/bin/edge-run/tools/mod.rs"]
mod tools;
use common::*;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use edge_run::adapter::Adapter;
use edge_run::gguf::{Gguf, MetaValue};
use edge_run::kernels::QuantType;
use edge_run::session::KvType;
use edge_run::{Model, Session, SessionConfig};
use tools::merge::{merge, MergeOptions, TargetType, MERGED_KEY};

fn tmpdir(tag: &str) -> TempDir {
    TempDir::new("merge", tag)
}

fn opts(t: TargetType) -> MergeOptions {
    MergeOptions {
        target: t,
        n_threads: 2,
        progress: false,
    }
}

fn fixture_tokens() -> Vec<u32> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("manifest.json")).unwrap()).unwrap();
    let f = m["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "tiny-q4_1")
        .expect("tiny-q4_1 in the manifest");
    f["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Logits of every position: the model at `path`, with `adapters` applied at run time.
fn logits(path: &Path, adapters: &[(&Path, f32)], ids: &[u32]) -> Vec<Vec<f32>> {
    let model = Arc::new(Model::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let loaded: Vec<Arc<Adapter>> = adapters
        .iter()
        .map(|(p, _)| Arc::new(Adapter::load(p, &model.base_info).unwrap()))
        .collect();
    let set: Vec<(&Arc<Adapter>, f32)> = loaded
        .iter()
        .zip(adapters)
        .map(|(a, (_, s))| (a, *s))
        .collect();
    let mut s = Session::new(
        model.clone(),
        // f32 keys and values: the comparisons are of the weights' arithmetic.
        SessionConfig {
            n_ctx: ids.len().max(16),
            n_threads: 2,
            logits_all: true,
            type_k: KvType::F32,
            type_v: KvType::F32,
            ..Default::default()
        },
    )
    .unwrap();
    s.set_adapters(&set).unwrap();
    let mut rows = Vec::new();
    s.eval_each(ids, |_, l| rows.push(l.to_vec())).unwrap();
    rows
}

/// max |a − b| / std(b) over all positions.
fn rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let all: Vec<f64> = b.iter().flatten().map(|&v| v as f64).collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let std = (all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / all.len() as f64).sqrt();
    let max = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max);
    max / std
}

#[test]
fn scale_zero_same_type_is_byte_identical() {
    let d = tmpdir("zero");
    for base in ["tiny-q4_1.gguf", "tiny-q8_0.gguf", "tiny-f16.gguf"] {
        let out = d.join(format!("merged-{base}"));
        let r = merge(
            &fixture(base),
            &[(fixture("tiny-lora.gguf"), 0.0)],
            &out,
            &opts(TargetType::Same),
        )
        .unwrap();
        assert!(
            !r.tensors.is_empty() && r.tensors.iter().all(|t| t.copied),
            "{base}: every adapted tensor copied unchanged"
        );
        let (a, b) = (
            std::fs::read(fixture(base)).unwrap(),
            std::fs::read(&out).unwrap(),
        );
        let (ga, gb) = (Gguf::parse(&a).unwrap(), Gguf::parse(&b).unwrap());
        assert_eq!(
            ga.tensors().len(),
            gb.tensors().len(),
            "{base}: tensor count"
        );
        for t in ga.tensors() {
            let u = gb
                .tensor(t.name)
                .unwrap_or_else(|| panic!("{base}: {} missing", t.name));
            assert_eq!((t.ty, t.shape()), (u.ty, u.shape()), "{base}: {}", t.name);
            assert!(
                ga.tensor_data(t) == gb.tensor_data(u),
                "{base}: {} bytes differ",
                t.name
            );
        }
        for e in ga.metadata() {
            let v = gb
                .get(e.key)
                .unwrap_or_else(|| panic!("{base}: metadata {} missing", e.key));
            assert_eq!(
                MetaValue::from_value(&e.value),
                MetaValue::from_value(v),
                "{base}: metadata {}",
                e.key
            );
        }
        assert_eq!(
            gb.metadata().len(),
            ga.metadata().len() + 1,
            "{base}: exactly one key added"
        );
        assert_eq!(
            gb.get_str_array(MERGED_KEY).unwrap(),
            vec!["tiny-lora.gguf:0"]
        );
    }

    // A non-zero scale changes exactly the adapted tensors.
    let out = d.join("merged-s1.gguf");
    let r = merge(
        &fixture("tiny-q8_0.gguf"),
        &[(fixture("tiny-lora.gguf"), 1.0)],
        &out,
        &opts(TargetType::Same),
    )
    .unwrap();
    let (a, b) = (
        std::fs::read(fixture("tiny-q8_0.gguf")).unwrap(),
        std::fs::read(&out).unwrap(),
    );
    let (ga, gb) = (Gguf::parse(&a).unwrap(), Gguf::parse(&b).unwrap());
    let adapted: Vec<&str> = r.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        adapted.len(),
        8,
        "attn_q/k/v and ffn_down of 2 layers: {adapted:?}"
    );
    for t in ga.tensors() {
        let u = gb.tensor(t.name).unwrap();
        assert_eq!(u.ty, t.ty, "same type");
        let same = ga.tensor_data(t) == gb.tensor_data(u);
        assert_eq!(
            same,
            !adapted.contains(&t.name),
            "{}: changed iff adapted",
            t.name
        );
    }
}

#[test]
fn merged_logits_match_the_runtime_adapter_on_fixtures() {
    let d = tmpdir("fixture");
    let ids = fixture_tokens();
    let lora = fixture("tiny-lora.gguf");
    // F16 base: the runtime computes W0·x in f32 and adds s·B(A·x); the merged F32 weights give the same
    // up to f32 summation order (measured 5e-6), F16 weights add one f16 rounding of W0 + ΔW (5e-3; the
    // adapter itself moves the logits by ~5 std on these random weights).
    let base = fixture("tiny-f16.gguf");
    let side = logits(&base, &[(&lora, 1.0)], &ids);
    let plain = logits(&base, &[], &ids);
    let adapter_effect = rel_err(&plain, &side);
    for (ty, tol) in [(QuantType::F32, 2e-5), (QuantType::F16, 1.5e-2)] {
        let out = d.join(format!("m-{}.gguf", ty.name()));
        let r = merge(
            &base,
            &[(lora.clone(), 1.0)],
            &out,
            &opts(TargetType::To(ty)),
        )
        .unwrap();
        assert!(r.tensors.iter().all(|t| t.to == ty && !t.copied));
        let e = rel_err(&logits(&out, &[], &ids), &side);
        eprintln!("tiny-f16 + tiny-lora merged at {}: max|Δlogit|/std {e:.3e} (adapter effect {adapter_effect:.3e}); requant |Q(W)-W|/|W| {:.3e}", ty.name(), r.quant_rel());
        assert!(e <= tol, "{}: {e} > {tol}", ty.name());
        // Merged at user scale 0.5 = the adapter at 0.5 on the side.
        if ty == QuantType::F32 {
            let out = d.join("m-half.gguf");
            merge(
                &base,
                &[(lora.clone(), 0.5)],
                &out,
                &opts(TargetType::To(ty)),
            )
            .unwrap();
            let e = rel_err(
                &logits(&out, &[], &ids),
                &logits(&base, &[(&lora, 0.5)], &ids),
            );
            assert!(e <= tol, "scale 0.5: {e}");
        }
    }
    assert!(
        adapter_effect > 0.05,
        "the adapter changes the logits ({adapter_effect}), so the check above is meaningful"
    );

    // Q8_0 base merged back to Q8_0: the requantization error shows, but stays small.
    let base = fixture("tiny-q8_0.gguf");
    let side = logits(&base, &[(&lora, 1.0)], &ids);
    let out = d.join("m-q8.gguf");
    let r = merge(&base, &[(lora.clone(), 1.0)], &out, &opts(TargetType::Same)).unwrap();
    let e = rel_err(&logits(&out, &[], &ids), &side);
    let eff = rel_err(&logits(&base, &[], &ids), &side);
    eprintln!("tiny-q8_0 + tiny-lora merged at Q8_0: max|Δlogit|/std {e:.3e} (adapter effect {eff:.3e}); |Q(W)-W|/|W| {:.3e}, kept {:.1}%", r.quant_rel(), 100.0 * r.kept());
    // Measured 0.21 of the logits' std at the worst position (random weights amplify the requantization
    // noise; the adapter moves the logits by ~4.6 std).
    assert!(
        e <= 0.4 && e < eff / 10.0,
        "Q8_0 merge: {e} (adapter effect {eff})"
    );
}

#[test]
fn report_errors_match_a_direct_computation() {
    // tiny-f16 merged to F32: Q(W) = W exactly, and ‖ΔW‖/‖W0‖ can be recomputed from the two files.
    let d = tmpdir("report");
    let base = fixture("tiny-f16.gguf");
    let out = d.join("m.gguf");
    let r = merge(
        &base,
        &[(fixture("tiny-lora.gguf"), 1.0)],
        &out,
        &opts(TargetType::To(QuantType::F32)),
    )
    .unwrap();
    let (a, b) = (std::fs::read(&base).unwrap(), std::fs::read(&out).unwrap());
    let (ga, gb) = (Gguf::parse(&a).unwrap(), Gguf::parse(&b).unwrap());
    for t in &r.tensors {
        assert_eq!(t.norm_qerr, 0.0, "{}: F32 holds W exactly", t.name);
        let w0: Vec<f64> = ga
            .tensor_data(ga.tensor(&t.name).unwrap())
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect();
        let w: Vec<f64> = gb
            .tensor_data(gb.tensor(&t.name).unwrap())
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect();
        let dn = w
            .iter()
            .zip(&w0)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let n0 = w0.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            (t.delta_rel() - dn / n0).abs() <= 1e-4 * dn / n0,
            "{}: {} vs {}",
            t.name,
            t.delta_rel(),
            dn / n0
        );
        assert!(
            (t.kept() - 1.0).abs() < 1e-4,
            "{}: kept {}",
            t.name,
            t.kept()
        );
    }
    assert_eq!(
        gb.get_u32("general.file_type").ok(),
        ga.get_u32("general.file_type").ok().map(|_| 0),
        "file_type updated to ALL_F32"
    );
}

#[test]
fn refusals_leave_nothing_behind() {
    let d = tmpdir("refuse");
    let base = fixture("tiny-q4_1.gguf");
    let before = std::fs::read(&base).unwrap();
    // The output may not be the input.
    let e = merge(
        &base,
        &[(fixture("tiny-lora.gguf"), 1.0)],
        &base,
        &opts(TargetType::Same),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("refusing to overwrite"), "{e}");
    assert_eq!(before, std::fs::read(&base).unwrap());
    // An adapter for another model: the error names the adapter; no output, no partial file.
    let out = d.join("bad.gguf");
    let wrong = root().join("tests/data/adapters/shout.gguf");
    let e = merge(&base, &[(wrong, 1.0)], &out, &opts(TargetType::Same))
        .unwrap_err()
        .to_string();
    assert!(e.contains("shout.gguf"), "{e}");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "nothing written");
    // CLI: usage errors exit 2, bad input 1.
    let merge_cli = |adapter: &Path, more: &[&str]| {
        let mut args = vec![
            "merge",
            "-m",
            path_arg(&base),
            "--adapter",
            path_arg(adapter),
        ];
        args.extend(["-o", path_arg(&out)]);
        args.extend(more);
        let o = edge_run(&args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, stderr) = merge_cli(&fixture("tiny-lora.gguf"), &["--type", "q3_k"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = merge_cli(&base, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn cli_json_report() {
    let d = tmpdir("cli");
    let out = d.join("m.gguf");
    let bin = env!("CARGO_BIN_EXE_edge-run");
    let o = Command::new(bin)
        .args(["merge", "-m"])
        .arg(fixture("tiny-q4_1.gguf"))
        .arg("--adapter")
        .arg(format!("{}:0.5", fixture("tiny-lora.gguf").display()))
        .arg("-o")
        .arg(&out)
        .args(["--type", "q8_0", "--json", "-t", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["merged"], 8);
    assert_eq!(v["adapters"][0], "tiny-lora.gguf:0.5");
    for k in [
        "delta_rel",
        "quant_rel",
        "kept",
        "quant_over_delta",
        "tensors",
        "bytes",
    ] {
        assert!(!v[k].is_null(), "field {k}: {v}");
    }
    assert_eq!(v["tensors"][0]["to"], "Q8_0");
    assert!(v["quant_rel"].as_f64().unwrap() > 0.0 && v["quant_rel"].as_f64().unwrap() < 0.02);
    let m = Model::open(&out).unwrap();
    assert_eq!(m.layers[0].attn_q.ty, QuantType::Q8_0);
}

/// The real model: merged pirate vs the HF+PEFT reference (edge-run's numerics on the merged files).
#[test]
fn smollm2_pirate_merged_vs_hf_peft() {
    let d = tmpdir("smollm2");
    let model = smollm2_path();
    let pirate = root().join("tests/data/adapters/pirate-peft");
    let z = read_npz(&root().join("tests/data/reference/smollm2/hf_pirate.npz"));
    let run = |path: &Path| -> Metrics {
        let m = Arc::new(Model::open(path).unwrap());
        let per: Vec<Metrics> = compare_sequences(&m, &[], &z)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        summarize(&per)
    };
    let mut results = Vec::new();
    for (t, name) in [
        (TargetType::To(QuantType::F16), "f16"),
        (TargetType::To(QuantType::Q8_0), "q8_0"),
        (TargetType::Same, "same (Q4_1)"),
    ] {
        let out = d.join(format!("pirate-{}.gguf", name.split(' ').next().unwrap()));
        let r = merge(&model, &[(pirate.clone(), 1.0)], &out, &opts(t)).unwrap();
        let m = run(&out);
        eprintln!(
            "pirate merged {name}: mean KL {:.5}, top-1 {:.1}%, max KL {:.3}; |sBA|/|W0| {:.3e}, |Q(W)-W|/|W| {:.3e}, kept {:.1}%",
            m.kl_mean,
            100.0 * m.top1,
            m.kl_max,
            r.delta_rel(),
            r.quant_rel(),
            100.0 * r.kept()
        );
        results.push((name, m, r));
        std::fs::remove_file(&out).unwrap();
    }
    assert!(
        results[0].1.kl_mean <= 0.0025,
        "f16 merge: mean KL {}",
        results[0].1.kl_mean
    );
    assert!(
        results[1].1.kl_mean <= 0.02,
        "q8_0 merge: mean KL {}",
        results[1].1.kl_mean
    );
    // Requantizing onto the base's own 4-bit grid rounds much of the small delta away; the report says so.
    let same = &results[2].2;
    assert!(
        same.kept() < results[1].2.kept(),
        "Q4_1 keeps less of the delta than Q8_0"
    );
    assert!(
        same.notes.iter().any(|n| n.contains("keeps")),
        "a warning about the lost delta: {:?}",
        same.notes
    );
}

/// DoRA folds exactly: pirate 1.0 then DoRA 0.5 merged into F16 weights matches the HF+PEFT
/// reference of that stack (the runtime's own unmerged result is checked in `tests/dora.rs`).
#[test]
fn smollm2_dora_stack_merged_vs_hf_peft() {
    let d = tmpdir("dora");
    let model = smollm2_path();
    let dir = root().join("tests/data/adapters");
    let z = read_npz(&root().join("tests/data/reference/smollm2/hf_pirate_dora_all05.npz"));
    let out = d.join("pirate-dora-f16.gguf");
    let set = [(dir.join("pirate-peft"), 1.0), (dir.join("dora-all"), 0.5)];
    let r = merge(&model, &set, &out, &opts(TargetType::To(QuantType::F16))).unwrap();
    let m = Arc::new(Model::open(&out).unwrap());
    let per: Vec<Metrics> = compare_sequences(&m, &[], &z)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let m = summarize(&per);
    eprintln!(
        "pirate 1.0 + dora-all 0.5 merged f16: mean KL {:.6}, top-1 {:.1}%, |dW|/|W0| {:.3e}",
        m.kl_mean,
        100.0 * m.top1,
        r.delta_rel()
    );
    assert!(m.kl_mean <= 0.0025, "DoRA merge: mean KL {}", m.kl_mean);
    assert!(m.top1 >= 0.985, "DoRA merge: top-1 {}", m.top1);
}

/// A GGUF adapter for the tiny fixtures with an embedding LoRA and (optionally) a LoRA on the tied
/// output head, random f16 values (llama.cpp layout: `token_embd` `lora_a` dims `[r, vocab]`).
fn embedding_adapter(path: &Path, with_head: bool) {
    let (vocab, width, r) = (299u64, 64u64, 2u64);
    let mut seed = 0;
    let mut rnd = |n: u64, amp: f32| -> Vec<u8> {
        seed += 1;
        f16_bytes(&uniform_values(n as usize, amp, seed))
    };
    let mut w = lora_adapter_writer(Some(4.0));
    w.add_tensor(
        "token_embd.weight.lora_a",
        &[r, vocab],
        QuantType::F16,
        rnd(r * vocab, 1.0),
    )
    .unwrap();
    w.add_tensor(
        "token_embd.weight.lora_b",
        &[r, width],
        QuantType::F16,
        rnd(r * width, 1.0),
    )
    .unwrap();
    if with_head {
        w.add_tensor(
            "output.weight.lora_a",
            &[width, r],
            QuantType::F16,
            rnd(r * width, 1.0),
        )
        .unwrap();
        w.add_tensor(
            "output.weight.lora_b",
            &[r, vocab],
            QuantType::F16,
            rnd(r * vocab, 0.5),
        )
        .unwrap();
    }
    w.write_file(path).unwrap();
}

#[test]
fn embedding_and_tied_head_loras() {
    let d = tmpdir("embd");
    let ids = fixture_tokens();
    let base = fixture("tiny-f16.gguf");
    let bytes = std::fs::read(&base).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert!(
        g.tensor("output.weight").is_none(),
        "tiny-f16 has a tied head"
    );
    let embd = g
        .tensor_data(g.tensor("token_embd.weight").unwrap())
        .to_vec();
    for with_head in [false, true] {
        let ad = d.join(format!("embd-{with_head}.gguf"));
        embedding_adapter(&ad, with_head);
        let side = logits(&base, &[(&ad, 1.0)], &ids);
        let eff = rel_err(&logits(&base, &[], &ids), &side);
        let out = d.join(format!("m-{with_head}.gguf"));
        let r = merge(
            &base,
            &[(ad.clone(), 1.0)],
            &out,
            &opts(TargetType::To(QuantType::F32)),
        )
        .unwrap();
        let e = rel_err(&logits(&out, &[], &ids), &side);
        eprintln!("embedding LoRA (head LoRA: {with_head}) merged at F32: {e:.3e} (adapter effect {eff:.3e}); notes {:?}", r.notes);
        assert!(
            eff > 0.05 && e <= 2e-5,
            "with_head {with_head}: {e} (effect {eff})"
        );
        let ob = std::fs::read(&out).unwrap();
        let go = Gguf::parse(&ob).unwrap();
        let head = go.tensor("output.weight").expect("an explicit output head");
        if with_head {
            assert_eq!(head.ty, QuantType::F32);
            assert!(r.tensors.iter().any(|t| t.name == "output.weight"));
        } else {
            // The head keeps the original embedding, byte for byte.
            assert_eq!(head.ty, QuantType::F16);
            assert!(go.tensor_data(head) == &embd[..]);
        }
        assert!(!Model::open(&out).unwrap().tied_output);
    }
}

#[test]
fn k_quant_targets_fall_back_like_llama_cpp() {
    // SmolLM2's rows are 576 long (not a multiple of 256) except ffn_down's 1536.
    let d = tmpdir("kquant");
    let out = d.join("q4k.gguf");
    let pirate = root().join("tests/data/adapters/pirate-peft");
    let r = merge(
        &smollm2_path(),
        &[(pirate, 1.0)],
        &out,
        &opts(TargetType::To(QuantType::Q4K)),
    )
    .unwrap();
    let b = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&b).unwrap();
    for t in &r.tensors {
        let want = if t.name.ends_with("ffn_down.weight") {
            QuantType::Q4K
        } else {
            QuantType::Q5_0
        };
        assert_eq!(g.tensor(&t.name).unwrap().ty, want, "{}", t.name);
        assert_eq!(
            t.note.is_some(),
            want == QuantType::Q5_0,
            "{}: {:?}",
            t.name,
            t.note
        );
    }
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("Q4_K→Q5_0") && n.contains("576")),
        "{:?}",
        r.notes
    );
    assert_eq!(r.file_type, Some((3, 14)), "MOSTLY_Q4_1 → MOSTLY_Q4_K_S");
    assert_eq!(g.get_u32("general.file_type").unwrap(), 14);
    // Untouched tensors keep their type (the tied Q8_0 embedding, F32 norms).
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, QuantType::Q8_0);
}
