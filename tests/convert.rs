//! `edge-run adapter convert` (src/bin/edge-run/tools/convert.rs): PEFT adapters written as llama.cpp GGUF adapters
//! with the per-tensor scale folded into `lora_b` and `adapter.lora.alpha = 0`. Checks the file's
//! metadata and layout, that edge-run loads it as GGUF with every factor in place from the map, that
//! `B' = f16(scale · B)` for scales computed here from the configs, and that the logits of the real
//! model with the converted file equal those with the PEFT directory up to that fp16 rounding — also for
//! a PEFT directory with `alpha_pattern` / `rank_pattern` built here from json-peft.
mod common;
// The binary's tools (not part of the runtime library), compiled into this test.
#[allow(dead_code)]
#[path = "../src/bin/edge-run/tools/mod.rs"]
mod tools;
use common::*;
use edge_run::adapter::{Adapter, AdapterFormat, LoraKind};
use edge_run::gguf::Gguf;
use edge_run::kernels::QuantType;
use edge_run::{Model, Session, SessionConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tools::convert::convert;

fn tmp(name: &str) -> PathBuf {
    empty_temp_dir("convert", name)
}

fn ids() -> Vec<u32> {
    let (_, ids) = sequences().into_iter().next().unwrap();
    ids.into_iter().take(24).collect()
}

/// Logits of every position of `ids` with `adapter` at scale 1 (none: the base model).
fn logits(model: &Arc<Model>, adapter: Option<&Arc<Adapter>>, ids: &[u32]) -> Vec<f32> {
    let mut s = Session::new(
        model.clone(),
        SessionConfig {
            logits_all: true,
            n_ctx: 64,
            n_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    if let Some(a) = adapter {
        s.set_adapters(&[(a, 1.0)]).unwrap();
    }
    let mut out = Vec::new();
    s.eval_each(ids, |_, l| out.extend_from_slice(l)).unwrap();
    out
}

fn max_abs_diff(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn f16(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// Converts `src`, checks the file and the loaded tensors against the PEFT adapter whose per-tensor
/// scales are `expected_scale(target)`, and compares logits. Returns (max |Δ| converted vs PEFT,
/// max |Δ| base vs PEFT).
fn round_trip(
    model: &Arc<Model>,
    src: &Path,
    name: &str,
    expected_scale: &dyn Fn(&str) -> f32,
) -> (f32, f32) {
    let base = &model.base_info;
    let dir = tmp(name);
    let out = dir.join("converted.gguf");
    let report = convert(src, base, &out).unwrap_or_else(|e| panic!("{name}: convert: {e}"));
    assert!(
        !dir.join("converted.gguf.partial").exists(),
        "temporary file left behind"
    );

    // The file itself: metadata and layout llama.cpp expects.
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(report.bytes, bytes.len() as u64);
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(
        g.get("general.type").and_then(|v| v.as_str()),
        Some("adapter")
    );
    assert_eq!(g.get("adapter.type").and_then(|v| v.as_str()), Some("lora"));
    assert_eq!(
        g.get("general.architecture").and_then(|v| v.as_str()),
        Some("llama")
    );
    assert_eq!(
        g.get("adapter.lora.alpha").and_then(|v| v.as_f32()),
        Some(0.0)
    );
    assert_eq!(g.metadata().len(), 4, "no other metadata keys");
    for t in g.tensors() {
        assert_eq!(t.ty, QuantType::F16, "{}", t.name);
        assert_eq!(
            (g.data_offset() + t.offset) % 32,
            0,
            "{} not 32-byte aligned",
            t.name
        );
    }

    let peft = Arc::new(Adapter::load(src, base).unwrap());
    let conv = Arc::new(Adapter::load(&out, base).unwrap());
    assert_eq!(peft.format(), AdapterFormat::Peft);
    assert_eq!(conv.format(), AdapterFormat::Gguf);
    assert_eq!(conv.tensors().len(), peft.tensors().len());
    assert_eq!(g.tensors().len(), 2 * peft.tensors().len());
    assert_eq!(report.tensors, peft.tensors().len());
    for (p, c) in peft.tensors().iter().zip(conv.tensors()) {
        assert_eq!(p.target, c.target);
        assert_eq!(
            (p.kind, p.rank, p.n_in, p.n_out),
            (c.kind, c.rank, c.n_in, c.n_out),
            "{}",
            p.target
        );
        assert_eq!(p.kind, LoraKind::Linear);
        // Shapes in ggml order: lora_a [n_in, r], lora_b [r, n_out].
        let ta = g.tensor(&format!("{}.lora_a", p.target)).unwrap();
        let tb = g.tensor(&format!("{}.lora_b", p.target)).unwrap();
        assert_eq!(
            &ta.dims[..2],
            &[p.n_in as u64, p.rank as u64],
            "{}",
            ta.name
        );
        assert_eq!(
            &tb.dims[..2],
            &[p.rank as u64, p.n_out as u64],
            "{}",
            tb.name
        );
        assert_eq!(c.is_mapped(), (true, true), "{}: not zero-copy", c.target);
        let s = expected_scale(&p.target);
        assert_eq!(p.scale, s, "{}: PEFT scale", p.target);
        assert_eq!(c.scale, 1.0, "{}: alpha 0 means scale 1", c.target);
        assert_eq!(p.a(), c.a(), "{}: A changed", p.target);
        for (i, (&pb, &cb)) in p.b().iter().zip(c.b()).enumerate() {
            let want = s * f16(pb);
            let got = f16(cb);
            // Round to nearest fp16: error ≤ half an ulp (2^-11 relative; 2^-25 absolute for subnormals).
            let tol = want.abs() * 2f32.powi(-11) + 2f32.powi(-25);
            assert!(
                (got - want).abs() <= tol,
                "{} B[{i}]: {got} vs {s}·{} = {want}",
                p.target,
                f16(pb)
            );
        }
    }

    let ids = ids();
    let l_base = logits(model, None, &ids);
    let l_peft = logits(model, Some(&peft), &ids);
    let l_conv = logits(model, Some(&conv), &ids);
    let d = max_abs_diff(&l_conv, &l_peft);
    let d_base = max_abs_diff(&l_base, &l_peft);
    eprintln!(
        "{name}: scales {:?}; max |Δ logits| converted vs PEFT {d}, base vs PEFT {d_base}",
        report.scales
    );
    let _ = std::fs::remove_dir_all(dir);
    (d, d_base)
}

fn assert_tiny(name: &str, (d, d_base): (f32, f32)) {
    assert!(
        d_base > 1.0,
        "{name}: the adapter barely changes the logits ({d_base}); test is vacuous"
    );
    assert!(
        d < 0.05 && d < d_base / 100.0,
        "{name}: converted vs PEFT logits differ by {d} (adapter effect {d_base})"
    );
}

#[test]
fn rslora_and_plain_peft_round_trip() {
    let model = open_smollm2();
    let adapters = root().join("tests/data/adapters");
    // json-peft: r 16, lora_alpha 16, use_rslora → 16/√16 = 4 (llama.cpp's own converter gives 1).
    let r = round_trip(&model, &adapters.join("json-peft"), "json", &|_| 4.0);
    assert_tiny("json-peft", r);
    // pirate-peft: r 8, lora_alpha 16 → 2.
    let r = round_trip(&model, &adapters.join("pirate-peft"), "pirate", &|_| 2.0);
    assert_tiny("pirate-peft", r);
}

/// Writes a safetensors file (BF16 tensors) from (name, shape, bytes).
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&h);
    f.extend_from_slice(&data);
    std::fs::write(path, f).unwrap();
}

#[test]
fn alpha_pattern_and_rank_pattern_round_trip() {
    let model = open_smollm2();
    let src = root().join("tests/data/adapters/json-peft");
    let dir = tmp("patterns-src");
    // Config: json-peft (rsLoRA, r 16, alpha 16) plus per-module overrides.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["rank_pattern"] = serde_json::json!({"layers.0.self_attn.q_proj": 8});
    cfg["alpha_pattern"] = serde_json::json!({"v_proj": 40});
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    // Tensors: as json-peft, but layer 0's q_proj truncated to rank 8 (first 8 rows of A, first 8
    // columns of B), matching the rank_pattern.
    let st = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let parsed = edge_run::adapter::safetensors::parse(&st, "json-peft").unwrap();
    let mut out = Vec::new();
    for t in &parsed {
        let bytes = &st[t.start..t.start + t.len];
        if t.name.contains("layers.0.self_attn.q_proj.lora_A") {
            let cols = t.shape[1];
            out.push((
                t.name.clone(),
                vec![8, cols],
                bytes[..8 * cols * 2].to_vec(),
            ));
        } else if t.name.contains("layers.0.self_attn.q_proj.lora_B") {
            let (rows, r) = (t.shape[0], t.shape[1]);
            let mut b = Vec::new();
            for row in 0..rows {
                b.extend_from_slice(&bytes[row * r * 2..(row * r + 8) * 2]);
            }
            out.push((t.name.clone(), vec![rows, 8], b));
        } else {
            out.push((t.name.clone(), t.shape.clone(), bytes.to_vec()));
        }
    }
    write_safetensors(&dir.join("adapter_model.safetensors"), &out);
    // rsLoRA scales: alpha / √rank with the overrides.
    let expected = |target: &str| -> f32 {
        if target == "blk.0.attn_q.weight" {
            16.0 / 8f32.sqrt()
        } else if target.ends_with("attn_v.weight") {
            40.0 / 4.0
        } else {
            4.0
        }
    };
    let r = round_trip(&model, &dir, "patterns", &expected);
    assert_tiny("json-peft + patterns", r);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn convert_refuses_and_leaves_nothing() {
    let model = Model::open(smollm2_path()).unwrap();
    let dir = tmp("refuse");
    let out = dir.join("x.gguf");
    // Not an adapter.
    let e = convert(&dir.join("missing"), &model.base_info, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
    assert!(!out.exists());
    // A base of another architecture: the adapter load is refused before anything is written.
    let mut other = model.base_info.clone();
    other.n_layer = 2;
    let e = convert(
        &root().join("tests/data/adapters/pirate-peft"),
        &other,
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("layer"), "{e}");
    assert!(!out.exists() && !dir.join("x.gguf.partial").exists());
    // A scale too large for fp16 once folded: refused, naming the tensor.
    let src = root().join("tests/data/adapters/json-peft");
    let big = dir.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["alpha_pattern"] = serde_json::json!({"layers.3.self_attn.v_proj": 1.0e9});
    std::fs::write(
        big.join("adapter_config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        big.join("adapter_model.safetensors"),
    )
    .unwrap();
    let e = convert(&big, &model.base_info, &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.3.attn_v.weight.lora_b") && e.contains("overflows fp16"),
        "{e}"
    );
    assert!(!out.exists() && !dir.join("x.gguf.partial").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// A DoRA adapter has no GGUF adapter form (no key for the magnitude): converting it is refused,
/// naming DoRA, and writes nothing; from the CLI with exit status 1.
#[test]
fn dora_adapter_is_refused_with_the_reason() {
    let model = Model::open(smollm2_path()).unwrap();
    let src = root().join("tests/data/adapters/dora-all");
    let dir = std::env::temp_dir().join(format!("edge-run-convert-dora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("dora.gguf");
    let e = convert(&src, &model.base_info, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("DoRA") && e.contains("magnitude"), "{e}");
    assert!(!out.exists() && !dir.join("dora.gguf.partial").exists());
    let o = convert_cli(&src, &smollm2_path(), &out);
    refused(&o, 1, "DoRA");
    let _ = std::fs::remove_dir_all(&dir);
}
