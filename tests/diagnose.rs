//! `edge-run diagnose`: KL against the base over the probe text, weight-delta norms, subspace overlap.
//!
//! - KL is exactly 0 at scale 0 and grows monotonically with the scale (0.25, 0.5, 1, 2) of a real
//!   adapter on the real model;
//! - principal angles of an adapter's `B` with itself are 0 (cosines 1), with a random matrix projected
//!   onto the orthogonal complement of its column space ~90° (cosines 0), and mixed cases in between;
//! - `‖s·B·A‖_F / ‖W0‖_F` (computed from r×r Gram matrices) equals a direct f64 product on the fixture,
//!   also for a stack (cross terms);
//! - `--json` on two stacked shared adapters parses and has the fields; `--plot` writes an SVG;
//! - a DoRA adapter's row-gain summary equals the gains evaluated from their definition in f64.
mod common;
// The binary's tools (not part of the runtime library), compiled into this test.
#[allow(dead_code)]
#[path = "../src/bin/edge-run/tools/mod.rs"]
mod tools;
use common::*;

use std::process::Command;
use std::sync::Arc;

use edge_run::adapter::{Adapter, LoraKind};
use edge_run::kernels::scalar::dequantize;
use edge_run::Model;
use tools::diagnose::{
    delta_norms, diagnose, principal_cosines, subspace_overlaps, DiagnoseOptions, RunKind,
};

#[test]
fn kl_is_zero_at_scale_zero_and_grows_with_scale() {
    let model = open_smollm2();
    let [pirate] = shared_adapters(&model, ["pirate-peft"]);
    let scales = [0.0f32, 0.25, 0.5, 1.0, 2.0];
    let set: Vec<(&Arc<Adapter>, f32, &str)> =
        scales.iter().map(|&s| (&pirate, s, "pirate")).collect();
    let opts = DiagnoseOptions {
        n_threads: 2,
        max_tokens: Some(96),
        progress: false,
    };
    let r = diagnose(&model, &set, None, &opts).unwrap();
    assert_eq!(r.n_tokens, 96);
    let kl: Vec<f64> = (0..scales.len())
        .map(|i| r.run(RunKind::Single(i)).unwrap().kl_base)
        .collect();
    eprintln!("mean KL(base || pirate at {scales:?}) = {kl:?}");
    let zero = r.run(RunKind::Single(0)).unwrap();
    assert_eq!(zero.kl_base, 0.0, "scale 0 is the base model, bit for bit");
    assert_eq!(zero.kl_base_max, 0.0);
    assert_eq!(zero.top1_base, 1.0);
    assert_eq!(zero.ppl, r.run(RunKind::Base).unwrap().ppl);
    for w in kl.windows(2) {
        assert!(w[1] > w[0], "KL must grow with the scale: {kl:?}");
    }
    assert!(
        kl[3] > 0.05,
        "pirate at scale 1 changes the model: {}",
        kl[3]
    );
    // Prefixes stack the same adapter: cumulative scales 0.25, 0.75, 1.75, 3.75 — also monotone.
    let stacked: Vec<f64> = r.stack_curve().iter().map(|p| p.1).collect();
    for w in stacked.windows(2).skip(1) {
        assert!(w[1] > w[0], "stack curve {stacked:?}");
    }
    // Runs agree with their own single: KL(P_i || P_i) = 0.
    for i in 0..scales.len() {
        assert_eq!(r.run(RunKind::Single(i)).unwrap().kl_vs_single[i], 0.0);
    }
}

/// Projection of `c` (n × k) onto the orthogonal complement of span(b) (n × r), via the normal
/// equations solved by Gaussian elimination (independent of the code under test).
fn project_out(b: &[f64], r: usize, c: &[f64], k: usize, n: usize) -> Vec<f64> {
    // G = BᵀB (r × r), H = BᵀC (r × k); X = G⁻¹H; C − B X.
    let mut g = vec![0f64; r * r];
    let mut h = vec![0f64; r * k];
    for row in 0..n {
        for i in 0..r {
            for j in 0..r {
                g[i * r + j] += b[row * r + i] * b[row * r + j];
            }
            for j in 0..k {
                h[i * k + j] += b[row * r + i] * c[row * k + j];
            }
        }
    }
    for col in 0..r {
        let piv = (col..r)
            .max_by(|&x, &y| g[x * r + col].abs().total_cmp(&g[y * r + col].abs()))
            .unwrap();
        for j in 0..r {
            g.swap(col * r + j, piv * r + j);
        }
        for j in 0..k {
            h.swap(col * k + j, piv * k + j);
        }
        for row in 0..r {
            if row != col {
                let f = g[row * r + col] / g[col * r + col];
                for j in 0..r {
                    g[row * r + j] -= f * g[col * r + j];
                }
                for j in 0..k {
                    h[row * k + j] -= f * h[col * k + j];
                }
            }
        }
    }
    let x: Vec<f64> = (0..r * k).map(|i| h[i] / g[(i / k) * r + i / k]).collect();
    let mut out = c.to_vec();
    for row in 0..n {
        for j in 0..k {
            out[row * k + j] -= (0..r).map(|i| b[row * r + i] * x[i * k + j]).sum::<f64>();
        }
    }
    out
}

#[test]
fn principal_angles_self_and_orthogonal_complement() {
    let model = Model::open(smollm2_path()).unwrap();
    let [pirate] = shared_adapters(&model, ["pirate-peft"]);
    // With itself, through the public report: every cosine 1.
    let ov = subspace_overlaps(&[(&pirate, 1.0), (&pirate, 0.5)]);
    assert_eq!(ov.len(), pirate.tensors().len());
    for o in &ov {
        assert_eq!(o.cosines.len(), 8, "{}: rank 8", o.tensor);
        assert!(
            o.cosines.iter().all(|&c| (c - 1.0).abs() < 1e-9),
            "{}: {:?}",
            o.tensor,
            o.cosines
        );
    }
    // Against random directions orthogonal to B's column space: cosines 0 (angles 90°).
    let t = pirate.get("blk.3.attn_q.weight").unwrap();
    let (n, r) = (t.n_out, t.rank);
    let b: Vec<f64> = t
        .b()
        .iter()
        .map(|&h| half::f16::from_bits(h).to_f64())
        .collect();
    let k = 6;
    let c: Vec<f64> = uniform_values(n * k, 1.0, 7)
        .into_iter()
        .map(f64::from)
        .collect();
    let cperp = project_out(&b, r, &c, k, n);
    let cos = principal_cosines(&b, r, &cperp, k, n);
    assert_eq!(cos.len(), k);
    let deg: Vec<f64> = cos.iter().map(|c| c.acos().to_degrees()).collect();
    eprintln!("angles to the orthogonal complement: {deg:?}");
    assert!(cos.iter().all(|&c| c < 1e-6), "{cos:?}");
    // Random directions without the projection: small but non-zero overlap (~√(r/n) in a 576-dim space).
    let cos_rand = principal_cosines(&b, r, &c, k, n);
    assert!(cos_rand[0] > 1e-3 && cos_rand[0] < 0.5, "{cos_rand:?}");
    // Two of B's own columns plus the complement: two cosines 1, the rest 0.
    let mixed: Vec<f64> = (0..n)
        .flat_map(|row| {
            [b[row * r], b[row * r + 1]]
                .into_iter()
                .chain(cperp[row * k..row * k + 4].iter().copied())
        })
        .collect();
    let cos = principal_cosines(&b, r, &mixed, 6, n);
    assert!(
        (cos[0] - 1.0).abs() < 1e-9 && (cos[1] - 1.0).abs() < 1e-9,
        "{cos:?}"
    );
    assert!(cos[2..].iter().all(|&c| c < 1e-6), "{cos:?}");
}

#[test]
fn delta_norms_match_a_direct_f64_product() {
    let fx = root().join("models/fixtures");
    let model = Model::open(fx.join("tiny-q4_1.gguf")).unwrap();
    let a = Adapter::load(&fx.join("tiny-lora.gguf"), &model.base_info).unwrap();
    let b = Adapter::load(&fx.join("tiny-lora-peft"), &model.base_info).unwrap();
    let set = [(&a, 0.7f32), (&b, -0.3f32)];
    let norms = delta_norms(&model, &set).unwrap();
    assert_eq!(norms.len(), a.tensors().len());
    for nr in &norms {
        let w = model.lora_target(&nr.tensor).unwrap();
        let mut w0 = vec![0f32; w.n_in * w.n_out];
        assert!(dequantize(w.ty, model.bytes(w), &mut w0));
        let n0 = w0.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        // Σ s_i B_i A_i, explicitly.
        let mut stack = vec![0f64; w.n_in * w.n_out];
        for (i, (ad, s)) in set.iter().enumerate() {
            let t = ad.get(&nr.tensor).unwrap();
            assert_eq!(t.kind, LoraKind::Linear);
            let f = |h: u16| half::f16::from_bits(h).to_f64();
            let s = (*s * t.scale) as f64;
            let mut own = 0f64;
            for row in 0..t.n_out {
                for col in 0..t.n_in {
                    let v: f64 = (0..t.rank)
                        .map(|k| f(t.b()[row * t.rank + k]) * f(t.a()[k * t.n_in + col]))
                        .sum::<f64>()
                        * s;
                    own += v * v;
                    stack[row * t.n_in + col] += v;
                }
            }
            let want = own.sqrt() / n0;
            let got = nr.rel[i].unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want,
                "{} adapter {i}: {got} vs {want}",
                nr.tensor
            );
        }
        let want = stack.iter().map(|v| v * v).sum::<f64>().sqrt() / n0;
        assert!(
            (nr.stack_rel - want).abs() <= 1e-9 * want.max(1e-12),
            "{} stack: {} vs {want}",
            nr.tensor,
            nr.stack_rel
        );
        assert!((nr.norm_w0 - n0).abs() <= 1e-9 * n0);
    }
}

#[test]
fn cli_json_and_plot_two_stacked_adapters() {
    let dir = std::env::temp_dir().join(format!("edge-run-diagnose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("kl.svg");
    let ad = root().join("tests/data/adapters");
    let o = Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .arg("diagnose")
        .arg("-m")
        .arg(smollm2_path())
        .arg("--adapter")
        .arg(ad.join("pirate-peft"))
        .arg("--adapter")
        .arg(format!("{}:0.5", ad.join("shout-peft").display()))
        .args(["--max-tokens", "48", "-t", "2", "--json", "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("last line is JSON");
    assert_eq!(v["n_tokens"], 48);
    assert_eq!(v["adapters"][1]["name"], "shout-peft");
    assert_eq!(v["adapters"][1]["scale"], 0.5);
    let runs = v["runs"].as_array().unwrap();
    let kinds: Vec<&str> = runs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["base", "single", "single", "prefix"]);
    for r in runs {
        for k in ["kl_base_mean", "kl_base_max", "ppl", "top1_base"] {
            assert!(r[k].as_f64().is_some(), "{k} in {r}");
        }
        assert_eq!(r["kl_vs_single"].as_array().unwrap().len(), 2);
    }
    assert_eq!(runs[0]["kl_base_mean"], 0.0);
    assert!(runs[3]["kl_base_mean"].as_f64().unwrap() > 0.0);
    assert_eq!(v["stack_curve"].as_array().unwrap().len(), 3);
    let norms = v["norms"].as_array().unwrap();
    assert_eq!(
        norms.len(),
        30 * 7,
        "pirate targets 7 weights in 30 layers; shout a subset"
    );
    let up = norms
        .iter()
        .find(|n| n["tensor"] == "blk.0.ffn_up.weight")
        .unwrap();
    assert!(
        up["rel"][0].as_f64().unwrap() > 0.0
            && up["rel"][1].as_f64().unwrap() > 0.0
            && up["stack_rel"].as_f64().unwrap() > 0.0
    );
    let q = norms
        .iter()
        .find(|n| n["tensor"] == "blk.0.attn_q.weight")
        .unwrap();
    assert!(q["rel"][1].is_null(), "shout does not touch attn_q");
    let ov = v["overlaps"].as_array().unwrap();
    assert_eq!(ov.len(), 30 * 3, "gate, up, down are shared");
    assert_eq!(
        ov[0]["cosines"].as_array().unwrap().len(),
        4,
        "min(rank 8, rank 4)"
    );
    let s = &v["overlap_summary"][0];
    assert!(s["mean"].as_f64().unwrap() > 0.0 && s["max"].as_f64().unwrap() <= 1.0);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline") && svg.trim_end().ends_with("</svg>")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_refusals() {
    let (model, lora) = (fixture("tiny-q4_1.gguf"), fixture("tiny-lora.gguf"));
    let diagnose = |extra: &[&str]| {
        let mut args = vec!["diagnose", "-m", path_arg(&model)];
        args.extend_from_slice(extra);
        edge_run(&args)
    };
    // No adapter: usage error.
    let o = diagnose(&[]);
    assert_eq!(o.status.code(), Some(2));
    // A missing probe file: bad input, named.
    let o = diagnose(&[
        "--adapter",
        path_arg(&lora),
        "--text",
        "/nonexistent/probe.txt",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/probe.txt"));
    // The fixture with its adapter and a custom text: works, table on stdout.
    let text = std::env::temp_dir().join(format!("edge-run-probe-{}.txt", std::process::id()));
    std::fs::write(
        &text,
        "hello world, the quick brown fox jumps over the lazy dog.",
    )
    .unwrap();
    let o = diagnose(&["--adapter", path_arg(&lora), "--text", path_arg(&text)]);
    let _ = std::fs::remove_file(&text);
    let out = success_stdout(&o);
    assert!(
        out.contains("KL(base)") && out.contains("blk.1.ffn_down.weight"),
        "{out}"
    );
}

/// A plain LoRA then a DoRA at 0.5: the DoRA adapter's summary (tensors with a magnitude, min / max
/// gain, mean |g − 1|) equals `m / ‖W0 + s·B·A‖` evaluated row by row in f64 from the dequantized
/// base; the plain LoRA has none; tables and JSON carry it.
#[test]
fn dora_gain_summary_matches_the_definition() {
    let model = open_smollm2();
    let [pirate, dora] = shared_adapters(&model, ["pirate-peft", "dora-all"]);
    let us = 0.5f32;
    let set: Vec<(&Arc<Adapter>, f32, &str)> = vec![(&pirate, 1.0, "pirate"), (&dora, us, "dora")];
    let opts = DiagnoseOptions {
        n_threads: 2,
        max_tokens: Some(16),
        progress: false,
    };
    let r = diagnose(&model, &set, None, &opts).unwrap();
    assert!(r.dora[0].is_none(), "pirate is a plain LoRA");
    let d = r.dora[1].expect("dora-all is DoRA");
    let (mut lo, mut hi, mut dev, mut rows, mut tensors) = (f64::MAX, f64::MIN, 0f64, 0usize, 0);
    for t in dora.tensors() {
        let Some(m) = t.magnitude() else { continue };
        tensors += 1;
        let w = model.lora_target(&t.target).unwrap();
        let (rb, bytes) = (w.row_bytes(), model.bytes(w));
        let h = |v: u16| half::f16::from_bits(v).to_f32() as f64;
        let a: Vec<f64> = t.a().iter().map(|&v| h(v)).collect();
        let s = (us * t.scale) as f64;
        let mut row = vec![0f32; t.n_in];
        for (o, &mo) in m.iter().enumerate() {
            assert!(dequantize(w.ty, &bytes[o * rb..(o + 1) * rb], &mut row));
            let b: Vec<f64> = t.b()[o * t.rank..(o + 1) * t.rank]
                .iter()
                .map(|&v| h(v))
                .collect();
            let sq: f64 = (0..t.n_in)
                .map(|i| {
                    let dv: f64 = (0..t.rank).map(|k| b[k] * a[k * t.n_in + i]).sum();
                    (row[i] as f64 + s * dv).powi(2)
                })
                .sum();
            let g = mo as f64 / sq.sqrt();
            (lo, hi) = (lo.min(g), hi.max(g));
            dev += (g - 1.0).abs();
            rows += 1;
        }
    }
    let dev = dev / rows as f64;
    eprintln!("gains in [{lo:.5}, {hi:.5}], mean |g-1| {dev:.5}; reported {d:?}");
    assert_eq!(d.tensors, tensors);
    assert_eq!(tensors, 30 * 7, "dora-all: 7 modules in 30 layers");
    for (got, want, what) in [
        (d.gain_min as f64, lo, "min"),
        (d.gain_max as f64, hi, "max"),
    ] {
        assert!(
            (got - want).abs() <= 1e-5 * want,
            "gain {what}: {got} vs {want}"
        );
    }
    assert!(
        (d.mean_dev - dev).abs() <= 1e-4 * dev,
        "mean |g-1|: {} vs {dev}",
        d.mean_dev
    );
    assert!(r.tables().contains("DoRA on 210 tensors"));
    let j = r.to_json();
    assert!(j["adapters"][0]["dora"].is_null());
    assert_eq!(j["adapters"][1]["dora"]["tensors"], 210);
}
