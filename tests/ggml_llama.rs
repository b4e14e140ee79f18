//! edge-run against llama.cpp running in the same process (feature `ggml`), on the real SmolLM2 model:
//! - the model re-quantized by llama.cpp itself (`llama_model_quantize`, allow_requantize) to Q4_0, Q8_0,
//!   Q4_K_M, Q5_K_M and Q6_K (the K mixes also hold Q5_0/Q5_1/Q8_0 fallbacks for the 576-wide rows):
//!   edge-run's logits against llama.cpp's on the same file, over the shared reference sequences;
//! - llama.cpp as a second runtime for edge-run's adapter converter: the rsLoRA adapter `json-peft`
//!   converted by `edge-run adapter convert` and run by llama.cpp, against the HF+PEFT reference —
//!   with pirate + shout×0.5 (llama.cpp's own GGUF adapters) as a check of the runner itself;
//! - control vectors (two files, scales, a layer range, with and without a LoRA adapter) against
//!   llama.cpp's `llama_set_adapter_cvec`.
//!
//! Metrics as in `tests/common` (compact.py): mean KL(reference ‖ run) over the reference's top-128 and
//! top-1 agreement. Run: `cargo test --release --features ggml --test ggml_llama -- --nocapture`.
#![cfg(feature = "ggml")]
mod common;
// The binary's tools (not part of the runtime library), compiled into this test.
#[allow(dead_code)]
#[path = "../src/bin/edge-run/tools/mod.rs"]
mod tools;
use common::*;
use edge_run::adapter::{Adapter, ControlVector};
use edge_run::kernels::QuantType;
use edge_run::session::ActQuant;
use edge_run::{Model, Session, SessionConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tools::ggml::quantize::{quantize_model, Ftype};
use tools::ggml::runner::{LlamaConfig, LlamaCpp};

fn tmp(name: &str) -> PathBuf {
    empty_temp_dir("ggml", name)
}

/// llama.cpp as the shared reference logits were made (`llamacpp_*.npz`: llama-cpp-python's defaults,
/// f16 KV cache, flash attention off); this runner reproduces them to KL ~1e-7.
fn llama(path: &Path) -> LlamaCpp {
    let mut cfg = LlamaConfig::new(2, 256, 256);
    cfg.flash_attn = Some(false);
    cfg.repack = false;
    LlamaCpp::load(path, &cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// llama.cpp's current CLI default (flash attention on the CPU, which rounds queries to f16): the same
/// model computed with different rounding, to measure how far llama.cpp moves under rounding alone.
fn llama_fa(path: &Path) -> LlamaCpp {
    let mut cfg = LlamaConfig::new(2, 256, 256);
    cfg.repack = false;
    LlamaCpp::load(path, &cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// llama.cpp's logits for every reference sequence.
fn llama_runs(lc: &mut LlamaCpp) -> Vec<(String, Vec<Vec<f32>>)> {
    sequences()
        .into_iter()
        .map(|(name, ids)| (name, lc.logits_all(&ids).unwrap()))
        .collect()
}

fn edge_runs(model: &Arc<Model>, act_quant: ActQuant) -> Vec<(String, Vec<Vec<f32>>)> {
    edge_runs_steered(model, act_quant, &[], None)
}

/// As `edge_runs`, with LoRA adapters and a control vector applied.
fn edge_runs_steered(
    model: &Arc<Model>,
    act_quant: ActQuant,
    adapters: &[(&Arc<Adapter>, f32)],
    cv: Option<&Arc<ControlVector>>,
) -> Vec<(String, Vec<Vec<f32>>)> {
    sequences()
        .into_iter()
        .map(|(name, ids)| {
            let cfg = SessionConfig {
                logits_all: true,
                n_ctx: 256,
                n_threads: 2,
                act_quant,
                ..Default::default()
            };
            let mut s = Session::new(model.clone(), cfg).unwrap();
            s.set_adapters(adapters).unwrap();
            s.set_control_vector(cv.cloned()).unwrap();
            let mut rows = Vec::new();
            s.eval_each(&ids, |_, l| rows.push(l.to_vec())).unwrap();
            (name, rows)
        })
        .collect()
}

/// Full logit rows turned into a compact reference (top-128 ids and logits, logsumexp), as compact.py.
fn compact(rows: &[Vec<f32>]) -> RefSeq {
    const K: usize = 128;
    let t = rows.len();
    let (mut ids, mut logits, mut lse) = (
        Vec::with_capacity(t * K),
        Vec::with_capacity(t * K),
        Vec::with_capacity(t),
    );
    for row in rows {
        let mx = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        lse.push((mx + row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln()) as f32);
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in &order[..K] {
            ids.push(i as i32);
            logits.push(row[i]);
        }
    }
    RefSeq {
        ids: Array {
            shape: vec![t, K],
            data: ids,
        },
        logits: Array {
            shape: vec![t, K],
            data: logits,
        },
        lse: Array {
            shape: vec![t],
            data: lse,
        },
    }
}

/// Metrics of `runs` against reference runs given as full logits.
fn versus(reference: &[(String, Vec<Vec<f32>>)], runs: &[(String, Vec<Vec<f32>>)]) -> Metrics {
    let per: Vec<Metrics> = reference
        .iter()
        .zip(runs)
        .map(|((n1, r), (n2, l))| {
            assert_eq!(n1, n2);
            compare(&compact(r), l)
        })
        .collect();
    summarize(&per)
}

/// The main weight type each file type must contain (so a silently skipped re-quantization fails).
fn main_type(f: Ftype) -> QuantType {
    match f {
        Ftype::Q4_0 => QuantType::Q4_0,
        Ftype::Q8_0 => QuantType::Q8_0,
        Ftype::Q4KM => QuantType::Q4K,
        Ftype::Q5KM => QuantType::Q5K,
        Ftype::Q6K => QuantType::Q6K,
        other => panic!("no main type listed for {}", other.name()),
    }
}

#[test]
fn requantized_models_match_llama_cpp() {
    let src = smollm2_path();
    let dir = tmp("requant");
    let mut failures = Vec::new();
    for ft in [
        Ftype::Q4_0,
        Ftype::Q8_0,
        Ftype::Q4KM,
        Ftype::Q5KM,
        Ftype::Q6K,
    ] {
        let path = dir.join(format!("smollm2-{}.gguf", ft.name()));
        quantize_model(&src, &path, ft, 2).unwrap_or_else(|e| panic!("{e}"));
        let model = match Model::open(&path) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                eprintln!("{:7}: edge-run refuses the file: {e}", ft.name());
                failures.push(format!("{}: edge-run refuses the file: {e}", ft.name()));
                continue;
            }
        };
        let types: Vec<String> = model
            .type_counts
            .iter()
            .map(|(t, c)| format!("{c}×{}", t.name()))
            .collect();
        assert!(
            model.type_counts.iter().any(|(t, _)| *t == main_type(ft)),
            "{}: llama.cpp wrote no {} tensor ({})",
            ft.name(),
            main_type(ft).name(),
            types.join(", ")
        );
        // llama.cpp falls back to Q5_0 / Q5_1 for the 576-wide rows of the K mixes: those files are what
        // exercises edge-run's Q5_0 / Q5_1 kernels on a real model.
        let fallback = match ft {
            Ftype::Q4KM => Some(QuantType::Q5_0),
            Ftype::Q5KM => Some(QuantType::Q5_1),
            _ => None,
        };
        if let Some(fb) = fallback {
            assert!(
                model.type_counts.iter().any(|(t, _)| *t == fb),
                "{}: expected {} fallback tensors ({})",
                ft.name(),
                fb.name(),
                types.join(", ")
            );
        }
        let lc_runs = llama_runs(&mut llama(&path));
        let self_noise = versus(&lc_runs, &llama_runs(&mut llama_fa(&path)));
        let q8 = versus(&lc_runs, &edge_runs(&model, ActQuant::Q8));
        let q8x2 = versus(&lc_runs, &edge_runs(&model, ActQuant::Q8x2));
        eprintln!(
            "{:7} [{}]\n    vs llama.cpp: edge-run default (q8x2) KL {:.5} top-1 {:.3} | edge-run q8 KL {:.5} top-1 {:.3} | llama.cpp flash-attn KL {:.5} top-1 {:.3}",
            ft.name(),
            types.join(", "),
            q8x2.kl_mean,
            q8x2.top1,
            q8.kl_mean,
            q8.top1,
            self_noise.kl_mean,
            self_noise.top1
        );
        // The bound: llama.cpp's 8-bit activations make its logits move by ~0.002–0.008 mean KL under
        // rounding changes alone (flash attention on/off, batch size, f16/f32 KV cache: measured on these
        // sequences; also with f32 attention in llama.cpp against edge-run's ggml-style q8: 0.003–0.008,
        // the activation rounding differences alone being amplified through 30 layers), so edge-run — whose default is within KL 1e-5 of fp32 on the Q4_1 file — cannot be
        // closer to llama.cpp than that. It must be within 0.005 or within twice llama.cpp's own
        // flash-attention shift, whichever is larger, and never above 0.02; a wrong kernel or layout gives
        // KL ≫ 0.1. Top-1 agreement moves too (flash attention alone: 95.5% for Q4_0 and Q6_K).
        // max, then min (not clamp): a NaN noise measure gives the 0.005 floor, not a NaN bound.
        #[allow(clippy::manual_clamp)]
        let bound = (2.0 * self_noise.kl_mean).max(0.005).min(0.02);
        if matches!(ft, Ftype::Q4_0) {
            repacked_llama_cpp_agrees(&path, &lc_runs, bound, &mut failures);
        }
        for (mode, m) in [("q8", q8), ("q8x2", q8x2)] {
            if m.kl_mean > bound || m.top1 < 0.92 {
                failures.push(format!(
                    "{} ({mode}): vs llama.cpp mean KL {:.5} (bound {bound:.5}), top-1 {:.3}",
                    ft.name(),
                    m.kl_mean,
                    m.top1
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// llama.cpp with its default extra buffer types (what `edge-run bench --vs-llama-cpp` runs): on a CPU
/// with AVX2 it repacks the Q4_0 rows, says so while loading (the runner reports it), and computes the
/// same logits as from the mapped rows up to its rounding noise.
fn repacked_llama_cpp_agrees(
    path: &Path,
    plain: &[(String, Vec<Vec<f32>>)],
    bound: f64,
    failures: &mut Vec<String>,
) {
    let mut cfg = LlamaConfig::new(2, 256, 256);
    cfg.flash_attn = Some(false);
    let mut lc = LlamaCpp::load(path, &cfg).unwrap_or_else(|e| panic!("{e}"));
    let info = tools::ggml::system_info();
    let expect_repack = info.contains("AVX2 = 1");
    let m = versus(plain, &llama_runs(&mut lc));
    eprintln!(
        "Q4_0 repacked by llama.cpp: {} (build: AVX2 {}); vs its mapped rows KL {:.5} top-1 {:.3}",
        lc.repacked(),
        if expect_repack { "on" } else { "off" },
        m.kl_mean,
        m.top1
    );
    if expect_repack && !lc.repacked() {
        failures.push("Q4_0: llama.cpp built with AVX2 did not report a repacked buffer".into());
    }
    if m.kl_mean > bound || m.top1 < 0.92 {
        failures.push(format!(
            "Q4_0: llama.cpp repacked vs mapped mean KL {:.5} (bound {bound:.5}), top-1 {:.3}",
            m.kl_mean, m.top1
        ));
    }
}

#[test]
fn converted_rslora_adapter_runs_correctly_in_llama_cpp() {
    let base = smollm2_path();
    let model = Model::open(&base).unwrap();
    let dir = tmp("convert");
    let json = dir.join("json.gguf");
    let report = tools::convert::convert(
        &root().join("tests/data/adapters/json-peft"),
        &model.base_info,
        &json,
    )
    .unwrap();
    assert_eq!(
        report.scales,
        vec![4.0],
        "rsLoRA r=16, alpha=16: scale alpha/sqrt(r) = 4 folded into B"
    );

    let mut lc = llama(&base);
    // The runner itself, without adapters and with llama.cpp's own GGUF adapters, against the logits the
    // Python build of llama.cpp produced (same numerics up to version and SIMD differences) and HF.
    let plain = llama_runs(&mut lc);
    // llama.cpp's own rounding noise, measured in this run: the same model with flash attention on.
    // The recorded logits come from one machine; another instruction set (AVX2 vs AVX-512) sums in
    // another order, which moves llama.cpp's 8-bit activations by as much as this.
    let self_noise = versus(&plain, &llama_runs(&mut llama_fa(&base)));
    let base_lc = metrics_vs_smollm2_npz("llamacpp_base.npz", &plain);
    let base_hf = metrics_vs_smollm2_npz("hf_base.npz", &plain);
    let ad = root().join("tests/data/adapters");
    lc.set_adapters(&[
        (&ad.join("pirate.gguf"), 1.0),
        (&ad.join("shout.gguf"), 0.5),
    ])
    .unwrap();
    let ps = llama_runs(&mut lc);
    let ps_lc = metrics_vs_smollm2_npz("llamacpp_pirate1_shout05.npz", &ps);
    let ps_hf = metrics_vs_smollm2_npz("hf_pirate1_shout05.npz", &ps);
    // The converted rsLoRA adapter, at its scale and 25% off it either way: the HF+PEFT reference must
    // prefer the scale the converter folded in (llama.cpp's own converter is off by 4×: KL 0.36).
    let mut js_at = Vec::new();
    for user_scale in [1.0f32, 0.75, 1.25] {
        lc.set_adapters(&[(&json, user_scale)]).unwrap();
        js_at.push((
            user_scale,
            metrics_vs_smollm2_npz("hf_json.npz", &llama_runs(&mut lc)),
        ));
    }
    let js_hf = js_at[0].1;
    // Unloading gives the base back.
    lc.set_adapters(&[]).unwrap();
    let again = llama_runs(&mut lc);
    let _ = std::fs::remove_dir_all(&dir);

    eprintln!("llama.cpp runner, base            vs llama.cpp (python build): {base_lc:?}");
    eprintln!("llama.cpp runner, base            vs HF:                       {base_hf:?}");
    eprintln!("llama.cpp runner, pirate+shout×0.5 vs llama.cpp (python build): {ps_lc:?}");
    eprintln!("llama.cpp runner, pirate+shout×0.5 vs HF+PEFT:                  {ps_hf:?}");
    for (sc, m) in &js_at {
        eprintln!("llama.cpp runner, json (edge-run converted) ×{sc:<4} vs HF+PEFT: {m:?}");
    }
    assert_eq!(
        plain, again,
        "removing the adapters must give the base logits back"
    );
    eprintln!("llama.cpp runner, base, flash attention on vs off (its own noise): {self_noise:?}");
    // Same llama.cpp settings as the Python build: the same logits up to SIMD/version rounding — to
    // KL ~1e-7 on the instruction set the recording was made on, to llama.cpp's own rounding noise on
    // another (measured: 0.0025 on an AVX2-only machine; flash attention alone moves it 0.002–0.009).
    let noise_bar = (2.0 * self_noise.kl_mean).clamp(1e-4, 0.01);
    assert!(
        base_lc.kl_mean <= noise_bar && base_lc.top1 >= 0.95,
        "runner vs llama.cpp python build, base: {base_lc:?} (bar {noise_bar})"
    );
    // With adapters the two llama.cpp versions round differently (measured 0.0014), inside llama.cpp's
    // own rounding noise on these sequences (0.002–0.004, see requantized_models_match_llama_cpp).
    let adapter_bar = noise_bar.max(0.003);
    assert!(
        ps_lc.kl_mean <= adapter_bar && ps_lc.top1 >= 0.95,
        "runner vs llama.cpp python build, pirate+shout: {ps_lc:?} (bar {adapter_bar})"
    );
    // llama.cpp is itself 0.0037 (base) from HF on these sequences — above the 0.0025 bar edge-run meets —
    // so the converted adapter is held to llama.cpp's own distance: at most twice its base KL (and 0.01).
    let bar = (2.0 * base_hf.kl_mean).min(0.01);
    assert!(
        ps_hf.kl_mean <= bar,
        "pirate+shout×0.5 in llama.cpp: mean KL vs HF+PEFT {} > {bar}",
        ps_hf.kl_mean
    );
    assert!(
        js_hf.kl_mean <= bar,
        "json-peft converted by edge-run, in llama.cpp: mean KL vs HF+PEFT {} > {bar}",
        js_hf.kl_mean
    );
    for (sc, m) in &js_at[1..] {
        assert!(m.kl_mean > js_hf.kl_mean, "json at user scale {sc} is closer to HF+PEFT ({}) than at 1.0 ({}): the folded scale is off", m.kl_mean, js_hf.kl_mean);
    }
}

#[test]
fn runner_refuses_bad_input() {
    let dir = tmp("bad");
    let e = LlamaCpp::load(&dir.join("missing.gguf"), &LlamaConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing.gguf"), "{e}");
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file").unwrap();
    let e = LlamaCpp::load(&junk, &LlamaConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("junk.gguf"), "{e}");
    let mut lc = llama(&smollm2_path());
    let e = lc.logits_all(&[1, 2, 49152]).unwrap_err().to_string();
    assert!(e.contains("49152") && e.contains("out of range"), "{e}");
    let e = lc.set_adapters(&[(&junk, 1.0)]).unwrap_err().to_string();
    assert!(e.contains("junk.gguf"), "{e}");
    // Still usable.
    assert_eq!(lc.logits_all(&[1, 2, 3]).unwrap().len(), 3);
    let e = quantize_model(
        &dir.join("missing.gguf"),
        &dir.join("out.gguf"),
        Ftype::Q8_0,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing.gguf"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `edge-run quantize`: writes the file llama.cpp's quantizer makes (the same bytes as the library call),
/// and refuses an unknown type, a non-GGUF input and an output that is the input, leaving every file as
/// it was.
#[test]
fn quantize_cli_writes_llama_cpp_output_and_refuses_bad_input() {
    let src = smollm2_path();
    let dir = tmp("quantize-cli");
    let bin = env!("CARGO_BIN_EXE_edge-run");
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(bin)
            .arg("quantize")
            .args(args)
            .output()
            .unwrap()
    };
    let (via_cli, via_lib) = (dir.join("cli.gguf"), dir.join("lib.gguf"));
    let o = run(&[
        "-m".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        via_cli.as_os_str(),
        "--type".as_ref(),
        "q4_0".as_ref(),
        "-t".as_ref(),
        "2".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    quantize_model(&src, &via_lib, Ftype::Q4_0, 2).unwrap();
    let cli_bytes = std::fs::read(&via_cli).unwrap();
    assert!(
        cli_bytes == std::fs::read(&via_lib).unwrap(),
        "the CLI's file differs from llama_model_quantize's"
    );
    let model = Model::open(&via_cli).unwrap();
    assert!(model.type_counts.iter().any(|(t, _)| *t == QuantType::Q4_0));

    let src_before = std::fs::read(&src).unwrap();
    let not_gguf = dir.join("notes.txt");
    std::fs::write(&not_gguf, b"not a model").unwrap();
    let refused = [
        (vec![&src, &via_cli], "q9_9", "unknown file type \"q9_9\""),
        (vec![&not_gguf, &via_cli], "q4_0", "not a GGUF file"),
        (vec![&src, &src], "q4_0", "must not be the input"),
    ];
    for (paths, ty, says) in refused {
        let o = run(&[
            "-m".as_ref(),
            paths[0].as_os_str(),
            "-o".as_ref(),
            paths[1].as_os_str(),
            "--type".as_ref(),
            ty.as_ref(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{ty}: {err}");
    }
    assert!(
        std::fs::read(&via_cli).unwrap() == cli_bytes,
        "a refused run changed the output"
    );
    assert!(
        std::fs::read(&src).unwrap() == src_before,
        "a refused run changed the input"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Control vectors against llama.cpp's (`llama_set_adapter_cvec`) on SmolLM2: two files with scales
/// (one stored as f16) and a layer range, alone and together with a LoRA adapter. edge-run reads the
/// files; llama.cpp receives the scaled sum of the same directions, built here, as its own loader
/// builds it (one row per block from block 1). The bar is llama.cpp's own rounding noise (KL ≤ 0.005,
/// measured 0.003–0.004 here), and the steering must move the outputs far more than that.
#[test]
fn control_vectors_match_llama_cpp() {
    let base = smollm2_path();
    let model = Arc::new(Model::open(&base).unwrap());
    let (nl, ne) = (model.hp.n_layer, model.hp.n_embd);
    let dir = tmp("cvec");
    let dirs = |blocks: std::ops::RangeInclusive<usize>, seed: u64| -> Vec<(usize, Vec<f32>)> {
        blocks
            .map(|n| (n, uniform_values(ne, 1.2, seed + n as u64)))
            .collect()
    };
    let (a, b) = (dirs(1..=nl - 1, 100), dirs(5..=20, 200));
    let fa = write_cv(&dir, "a.gguf", &a, QuantType::F32);
    let fb = write_cv(&dir, "b.gguf", &b, QuantType::F16);
    let (sa, sb, range) = (0.8f32, -0.6f32, (3usize, 25usize));
    let mut rows = vec![0f32; (nl - 1) * ne];
    for (dirs, scale, f16) in [(&a, sa, false), (&b, sb, true)] {
        for (n, v) in dirs {
            for (r, &x) in rows[(n - 1) * ne..n * ne].iter_mut().zip(v) {
                let x = if f16 {
                    half::f16::from_f32(x).to_f32()
                } else {
                    x
                };
                *r += scale * x;
            }
        }
    }
    let cv = Arc::new(ControlVector::load(&model, &[(&fa, sa), (&fb, sb)], Some(range)).unwrap());
    let pirate_path = root().join("tests/data/adapters/pirate.gguf");
    let pirate = Arc::new(Adapter::load(&pirate_path, &model.base_info).unwrap());

    let mut lc = llama(&base);
    let plain = llama_runs(&mut lc);
    let noise = versus(&plain, &llama_runs(&mut llama_fa(&base)));
    let mut lc_fa = llama_fa(&base);
    lc_fa
        .set_control_vector(Some(&rows), ne, range.0, range.1)
        .unwrap();
    let steered_fa = llama_runs(&mut lc_fa);
    lc.set_control_vector(Some(&rows), ne, range.0, range.1)
        .unwrap();
    let steered = llama_runs(&mut lc);
    lc.set_adapters(&[(&pirate_path, 1.0)]).unwrap();
    let steered_lora = llama_runs(&mut lc);

    let moved = versus(&plain, &steered);
    let steered_noise = versus(&steered, &steered_fa);
    eprintln!(
        "control vectors, SmolLM2: the steering moves llama.cpp by KL {:.3}; llama.cpp's \
         flash-attention rounding moves it by KL {:.5} unsteered, {:.5} steered",
        moved.kl_mean, noise.kl_mean, steered_noise.kl_mean
    );
    assert!(
        moved.kl_mean > 0.1,
        "the directions barely steer the model (KL {:.4}): the comparison would prove nothing",
        moved.kl_mean
    );
    // Within llama.cpp's own noise: 0.005, or its flash-attention rounding on the steered model where
    // another instruction set makes that larger.
    let bar = 0.005f64.max(1.25 * steered_noise.kl_mean);
    for act_quant in [ActQuant::Q8, ActQuant::Q8x2] {
        let alone = versus(
            &steered,
            &edge_runs_steered(&model, act_quant, &[], Some(&cv)),
        );
        let with_lora = versus(
            &steered_lora,
            &edge_runs_steered(&model, act_quant, &[(&pirate, 1.0)], Some(&cv)),
        );
        for (what, m) in [("alone", &alone), ("with pirate", &with_lora)] {
            eprintln!(
                "  {act_quant:?} {what:12}: KL {:.5} top-1 {:.3} vs llama.cpp ({} positions)",
                m.kl_mean, m.top1, m.positions
            );
            assert!(
                m.kl_mean <= bar,
                "control vectors {what} ({act_quant:?}): mean KL {:.5} vs llama.cpp > {bar:.5}",
                m.kl_mean
            );
        }
    }
}
