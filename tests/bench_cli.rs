//! `edge-run bench`: the terminal table and the `--json` object, with the bytes read per token computed
//! here independently from the GGUF files' tensor tables (not through `Model`), the roofline fields
//! checked for consistency (`roofline_pct = 100 × tg_tps × bytes_per_token ÷ roofline_gbs`), and the
//! adapter and `--compare-model` runs.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

/// Runs `bench … --json`, checks the exit status and that the last stdout line is the JSON object.
/// `bench --json` on `model` with a small workload (`-p 8 -n 4 -r 1`) at `threads`, plus `extra`.
fn small_bench(model: &std::path::Path, threads: &str, extra: &[&str]) -> (Value, String, String) {
    let mut args = vec![
        "-m",
        path_arg(model),
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "-t",
        threads,
    ];
    args.extend_from_slice(extra);
    bench_json(&args)
}

fn bench_json(args: &[&str]) -> (Value, String, String) {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let o = edge_run(&all);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "bench {args:?} failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = out.lines().last().expect("stdout is not empty");
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {last}"));
    (v, out, err)
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("`{key}` missing or not a number in {v}"))
}

/// `v[a] / v[b]`.
fn ratio(v: &Value, a: &str, b: &str) -> f64 {
    num(v, a) / num(v, b)
}

/// The tokens-per-second overhead in percent of a run whose speed is `v[tps]` against `v["tg_tps"]`.
fn overhead_pct(v: &Value, tps: &str) -> f64 {
    100.0 * (ratio(v, "tg_tps", tps) - 1.0)
}

/// The number at `key` of `v` equals `want` up to rounding (`what` names it).
#[track_caller]
fn close(v: &Value, key: &str, want: f64, what: &str) {
    let (a, b) = (num(v, key), want);
    assert!(
        (a - b).abs() <= 1e-6 * a.abs().max(b.abs()),
        "{what} (`{key}`): {a} vs {b}"
    );
}

/// Bytes of the linear weights a token reads (7 per layer + the output head, or the tied embedding),
/// and `(n_layer, kv_dim)`, from the GGUF tensor table.
fn model_bytes(path: &Path) -> (f64, usize, usize) {
    let bytes = std::fs::read(path).unwrap();
    let g = edge_run::gguf::Gguf::parse(&bytes).unwrap();
    let (mut w, mut n_linear) = (0usize, 0);
    let mut n_layer = 0;
    for t in g.tensors() {
        if let Some(rest) = t.name.strip_prefix("blk.") {
            let (l, _) = rest.split_once('.').unwrap();
            n_layer = n_layer.max(l.parse::<usize>().unwrap() + 1);
            // The linear weights are a block's 2-D tensors (its norms are 1-D).
            if t.n_dims == 2 {
                w += t.size;
                n_linear += 1;
            }
        }
    }
    let head = g
        .tensor("output.weight")
        .or_else(|| g.tensor("token_embd.weight"))
        .unwrap();
    assert_eq!(n_linear, 7 * n_layer, "7 linear weights per layer");
    let kv_dim = g.tensor("blk.0.attn_k.weight").unwrap().dims[1] as usize;
    ((w + head.size) as f64, n_layer, kv_dim)
}

/// Bytes of every LoRA A/B tensor of a GGUF adapter.
fn adapter_bytes(path: &Path) -> f64 {
    let bytes = std::fs::read(path).unwrap();
    let g = edge_run::gguf::Gguf::parse(&bytes).unwrap();
    g.tensors()
        .iter()
        .filter(|t| t.name.ends_with(".lora_a") || t.name.ends_with(".lora_b"))
        .map(|t| t.size as f64)
        .sum()
}

#[test]
fn json_reports_bytes_per_token_and_roofline() {
    let model = fixture("tiny-q4_1.gguf");
    let (v, out, err) = small_bench(&model, "1", &[]);
    // Progress on stderr, the table on stdout.
    assert!(
        err.contains("edge-run bench:") && err.contains("roofline"),
        "stderr: {err}"
    );
    assert!(
        out.contains("% roofline") && out.contains("memory roofline") && out.contains("DRAM"),
        "stdout: {out}"
    );
    // The names that existed before the roofline keep their meaning.
    for k in ["pp_tps", "tg_tps", "rss_mib", "threads"] {
        assert!(num(&v, k) > 0.0, "{k} in {v}");
    }
    // Both activation modes are measured; the run's own mode is the one `pp_tps` / `tg_tps` report.
    for k in ["pp_tps_q8", "tg_tps_q8", "pp_tps_q8x2", "tg_tps_q8x2"] {
        assert!(num(&v, k) > 0.0, "{k} in {v}");
    }
    assert_eq!(v["act_quant"], "q8x2");
    assert_eq!(num(&v, "pp_tps"), num(&v, "pp_tps_q8x2"));
    assert!(
        out.contains("act-quant q8x2") && out.contains("act-quant q8 "),
        "stdout: {out}"
    );
    assert_eq!(v["threads"], 1);
    assert_eq!(v["n_prompt"], 8);
    assert_eq!(v["n_gen"], 4);
    assert!(
        v.get("lora_tg_tps").is_none() && v.get("compare_tg_tps").is_none(),
        "{v}"
    );

    // Bytes per token from the file: weights, plus K and V (f16 by default) of every layer over the
    // mean context of the 4 decoded tokens (they attend to 9, 10, 11, 12 positions).
    let (weights, n_layer, kv_dim) = model_bytes(&model);
    let kv = 2.0 * (n_layer * kv_dim * 2) as f64 * 10.5;
    assert_eq!(
        (&v["cache_type_k"], &v["cache_type_v"]),
        (&"f16".into(), &"f16".into())
    );
    close(&v, "weight_bytes_per_token", weights, "weight bytes");
    close(&v, "kv_bytes_per_token", kv, "KV bytes");
    close(&v, "bytes_per_token", weights + kv, "bytes per token");
    close(&v, "mean_context", 10.5, "mean context");
    // The session's buffers are reported, the KV cache among them (at least the 12 positions run).
    assert!(
        num(&v, "kv_mib") * 1048576.0 >= 2.0 * (n_layer * kv_dim * 2 * 12) as f64,
        "{v}"
    );
    assert!(num(&v, "activations_mib") > 0.0, "{v}");
    // llama.cpp's short flags choose each cache's type: f32 keys, f16 values.
    let (v, _, _) = small_bench(&model, "1", &["-ctk", "f32", "-ctv", "f16"]);
    assert_eq!(
        (&v["cache_type_k"], &v["cache_type_v"]),
        (&"f32".into(), &"f16".into())
    );
    let kv = (n_layer * kv_dim * (4 + 2)) as f64 * 10.5;
    close(
        &v,
        "kv_bytes_per_token",
        kv,
        "KV bytes, f32 keys and f16 values",
    );

    // Roofline: positive bandwidths, and the percent is tg × bytes ÷ bandwidth.
    for k in [
        "roofline_gbs",
        "dram_gbs_1t",
        "dram_gbs",
        "cache_gbs_1t",
        "cache_gbs",
    ] {
        let g = num(&v, k);
        assert!(g.is_finite() && g > 0.05, "{k} = {g}");
    }
    close(
        &v,
        "dram_gbs",
        num(&v, "dram_gbs_1t"),
        "one thread: the N-thread probe is the 1-thread one",
    );
    let pct = num(&v, "roofline_pct");
    close(
        &v,
        "roofline_pct",
        100.0 * num(&v, "tg_tps") * num(&v, "bytes_per_token") / (num(&v, "roofline_gbs") * 1e9),
        "roofline %",
    );
    // The tiny model's ~50 KB per token: decode is bound by per-token overhead, far below the roofline of a
    // cache-resident buffer of that size (a percent above 100 would mean wrong bytes or bandwidth).
    assert!(pct > 0.0 && pct < 100.0, "roofline_pct = {pct}");
    // The probe was sized to the bytes per token (at least 64 KiB).
    close(
        &v,
        "roofline_bytes",
        (num(&v, "bytes_per_token") as usize).max(64 << 10) as f64,
        "probe size",
    );
}

#[test]
fn json_with_adapter_and_compare_model() {
    let model = fixture("tiny-q4_1.gguf");
    let other = fixture("tiny-q8_0.gguf");
    let lora = fixture("tiny-lora.gguf");
    let (v, out, _) = small_bench(
        &model,
        "2",
        &[
            "--adapter",
            &format!("{}:0.5", path_arg(&lora)),
            "--compare-model",
            path_arg(&other),
        ],
    );
    assert!(
        out.contains("+1 adapter(s)") && out.contains("tiny-q8_0.gguf") && out.contains("compare:"),
        "{out}"
    );
    assert_eq!(v["threads"], 2);
    for k in [
        "lora_pp_tps",
        "lora_tg_tps",
        "adapter_load_ms",
        "swap_us",
        "swap_token_ms",
        "steady_token_ms",
        "compare_pp_tps",
        "compare_tg_tps",
    ] {
        assert!(num(&v, k) > 0.0, "{k} in {v}");
    }
    assert!(
        v["lora_overhead_pct"].is_number() && v["lora_floor_pct"].is_number(),
        "{v}"
    );
    // LoRA bytes: every A and B of the adapter file (all target linear weights here).
    let ab = adapter_bytes(&lora);
    assert!(ab > 0.0);
    close(&v, "lora_ab_bytes", ab, "adapter A/B bytes");
    close(
        &v,
        "lora_bytes_per_token",
        num(&v, "bytes_per_token") + ab,
        "bytes per token with the adapter",
    );
    close(
        &v,
        "lora_floor_pct",
        100.0 * ab / num(&v, "bytes_per_token"),
        "overhead floor",
    );
    close(
        &v,
        "lora_overhead_pct",
        overhead_pct(&v, "lora_tg_tps"),
        "overhead",
    );
    // The comparison model: its own bytes, and ratios against the run with the adapter.
    let (w2, n_layer, kv_dim) = model_bytes(&other);
    close(
        &v,
        "compare_bytes_per_token",
        w2 + 2.0 * (n_layer * kv_dim * 2) as f64 * 10.5,
        "compare bytes",
    );
    assert!(w2 > model_bytes(&model).0, "Q8_0 reads more than Q4_1");
    close(
        &v,
        "compare_tg_ratio",
        ratio(&v, "compare_tg_tps", "lora_tg_tps"),
        "tg ratio",
    );
    close(
        &v,
        "compare_pp_ratio",
        ratio(&v, "compare_pp_tps", "lora_pp_tps"),
        "pp ratio",
    );
    assert_eq!(v["compare_model"].as_str(), Some(path_arg(&other)));
    assert!(
        v.get("dora_publish_ms").is_none(),
        "no DoRA fields for a plain LoRA: {v}"
    );
    for k in ["roofline_pct", "lora_roofline_pct", "compare_roofline_pct"] {
        let p = num(&v, k);
        assert!(p > 0.0 && p < 100.0, "{k} = {p}");
    }
    let dram2 = num(&v, "dram_gbs");
    assert!(
        dram2.is_finite() && dram2 > 0.05,
        "2-thread DRAM probe: {dram2}"
    );
}

#[test]
fn bad_bench_arguments_are_refused() {
    let model = fixture("tiny-q4_1.gguf");
    for (args, code, needle) in [
        (vec!["-n", "0"], 2, "at least 1"),
        (vec!["-r", "0"], 2, "at least 1"),
        (
            vec![
                "-n",
                "2",
                "-r",
                "1",
                "--compare-model",
                "/nonexistent/merged.gguf",
            ],
            1,
            "/nonexistent/merged.gguf",
        ),
        (
            vec!["-n", "2", "-r", "1", "--adapter", "/nonexistent/a.gguf"],
            1,
            "/nonexistent/a.gguf",
        ),
    ] {
        let mut all = vec!["bench", "-m", path_arg(&model), "-p", "4", "-t", "1"];
        all.extend(args.iter().copied());
        refused(&edge_run(&all), code, needle);
    }
}

#[test]
fn sliding_window_layers_read_at_most_the_window() {
    // tiny-gemma3: 3 layers, window 5, `sliding_window_pattern` 2 (period 2: layers 0 and 2 are local,
    // layer 1 global, as llama.cpp defines the period). The 4 decoded tokens attend to 9..=12 positions.
    let model = fixture("tiny-gemma3.gguf");
    let bytes = std::fs::read(&model).unwrap();
    let g = edge_run::gguf::Gguf::parse(&bytes).unwrap();
    let window = g
        .get("gemma3.attention.sliding_window")
        .and_then(|v| v.as_u32())
        .unwrap() as usize;
    let period = g
        .get("gemma3.attention.sliding_window_pattern")
        .and_then(|v| v.as_u32())
        .unwrap() as usize;
    let (weights, n_layer, kv_dim) = model_bytes(&model);
    assert_eq!((window, period, n_layer), (5, 2, 3), "the fixture changed");
    let positions: usize = (9..=12)
        .map(|ctx: usize| {
            (0..n_layer)
                .map(|l| {
                    if l % period < period - 1 {
                        ctx.min(window)
                    } else {
                        ctx
                    }
                })
                .sum::<usize>()
        })
        .sum();
    let kv = 2.0 * (kv_dim * 2) as f64 * positions as f64 / 4.0;
    let (v, _, _) = small_bench(&model, "1", &[]);
    close(
        &v,
        "kv_bytes_per_token",
        kv,
        "KV bytes with sliding-window layers",
    );
    close(&v, "weight_bytes_per_token", weights, "weight bytes");
    close(&v, "bytes_per_token", weights + kv, "bytes per token");
}

/// fp16 bytes of every `lora_A` / `lora_B` of a PEFT folder, from its safetensors header.
fn peft_ab_bytes(dir: &Path) -> f64 {
    let f = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&f[8..8 + n]).unwrap();
    let h = h.as_object().unwrap();
    let elems: u64 = h
        .iter()
        .filter(|(k, _)| k.contains("lora_A") || k.contains("lora_B"))
        .map(|(_, t)| {
            t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    2.0 * elems as f64
}

/// A DoRA adapter on SmolLM2 at 2 threads: the publish time (sets whose norms are not cached), the
/// speed of the same factors as a plain LoRA, and the overhead against the A/B byte floor, consistent
/// with the other fields and with the adapter file's A/B sizes.
#[test]
fn json_with_a_dora_adapter() {
    let dora = root().join("tests/data/adapters/dora-all");
    let (v, out, err) = small_bench(&smollm2_path(), "2", &["--adapter", path_arg(&dora)]);
    assert!(
        out.contains("DoRA: publish") && err.contains("DoRA: publish"),
        "{out}\n{err}"
    );
    for k in [
        "dora_publish_ms",
        "dora_first_publish_ms",
        "dora_plain_tg_tps",
        "lora_tg_tps",
    ] {
        let x = num(&v, k);
        assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
    }
    close(&v, "lora_ab_bytes", peft_ab_bytes(&dora), "DoRA A/B bytes");
    close(
        &v,
        "lora_floor_pct",
        100.0 * peft_ab_bytes(&dora) / num(&v, "bytes_per_token"),
        "A/B byte floor",
    );
    close(
        &v,
        "dora_floor_ratio",
        ratio(&v, "lora_overhead_pct", "lora_floor_pct"),
        "overhead ÷ floor",
    );
    close(
        &v,
        "dora_plain_overhead_pct",
        overhead_pct(&v, "dora_plain_tg_tps"),
        "plain-LoRA overhead",
    );
}
