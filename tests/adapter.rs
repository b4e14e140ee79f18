//! LoRA adapter loading: the five real adapters in tests/data/adapters (see PROVENANCE.md), the PEFT ↔
//! llama.cpp-GGUF cross-check (llama.cpp's converter made the GGUF, so equal factors check our q/k
//! permutation independently), expected values computed with numpy outside this project, and the
//! refusal cases, each of which must name the offending field / tensor.
mod common;
use common::llama_base::llama_base_info;
use common::{assert_same_factors, empty_temp_dir, f16_bytes, lora_adapter_writer};
use std::path::{Path, PathBuf};

use edge_run::adapter::{Adapter, AdapterFormat, BaseInfo, LoraKind};
use edge_run::gguf::{Gguf, GgufWriter};
use edge_run::kernels::QuantType;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/adapters")
        .join(p)
}

/// SmolLM2-135M's shapes: 30 layers, 9 heads, 3 KV heads, width 576, FFN 1536, KV width 192,
/// vocabulary 49152, tied output head (no `output.weight`).
fn smollm2() -> BaseInfo {
    llama_base_info(30, (9, 3), 576, 1536, 49152)
}

fn load(p: &Path) -> Adapter {
    Adapter::load(p, &smollm2()).unwrap_or_else(|e| panic!("loading {}: {e}", p.display()))
}

/// A fresh temp dir for one test.
fn tmp(name: &str) -> PathBuf {
    empty_temp_dir("adapter-test", name)
}

/// Copies `shout-peft` (fp16, r=4, gate/up/down) into a temp dir, with `edit` applied to its config.
fn shout_with(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let d = tmp(name);
    let text = std::fs::read_to_string(data("shout-peft/adapter_config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(
        d.join("adapter_config.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        data("shout-peft/adapter_model.safetensors"),
        d.join("adapter_model.safetensors"),
    )
    .unwrap();
    d
}

/// Like [`shout_with`], but replaces `"alpha_pattern": {}` in the config text with `raw` (keeping the
/// key order of `raw`, which serde_json's sorted maps would lose).
fn shout_raw(name: &str, raw: &str) -> PathBuf {
    let d = shout_with(name, |_| {});
    let text = std::fs::read_to_string(data("shout-peft/adapter_config.json")).unwrap();
    assert!(text.contains(r#""alpha_pattern": {}"#));
    std::fs::write(
        d.join("adapter_config.json"),
        text.replace(r#""alpha_pattern": {}"#, raw),
    )
    .unwrap();
    d
}

fn expect_err(p: &Path, base: &BaseInfo, needles: &[&str]) -> String {
    let e = match Adapter::load(p, base) {
        Ok(_) => panic!("{} loaded but should have been refused", p.display()),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(
            e.contains(n),
            "error for {} does not mention {n:?}: {e}",
            p.display()
        );
    }
    println!("refused as expected: {e}");
    e
}

#[test]
fn loads_all_five_reference_adapters() {
    let base = smollm2();
    // (path, format, tensors, rank, scale, mapped A/B)
    let cases: [(&str, AdapterFormat, usize, usize, f32); 5] = [
        ("pirate-peft", AdapterFormat::Peft, 30 * 7, 8, 16.0 / 8.0),
        ("json-peft", AdapterFormat::Peft, 30 * 4, 16, 16.0 / 4.0), // rsLoRA: alpha / sqrt(16)
        ("shout-peft", AdapterFormat::Peft, 30 * 3, 4, 8.0 / 4.0),
        ("pirate.gguf", AdapterFormat::Gguf, 30 * 7, 8, 16.0 / 8.0),
        ("shout.gguf", AdapterFormat::Gguf, 30 * 3, 4, 8.0 / 4.0),
    ];
    for (p, fmt, n, rank, scale) in cases {
        let a = load(&data(p));
        println!("{}", a.summary());
        assert_eq!(a.format(), fmt, "{p}");
        assert_eq!(a.tensors().len(), n, "{p}");
        for t in a.tensors() {
            assert_eq!(t.rank, rank, "{p} {}", t.target);
            assert_eq!(t.scale, scale, "{p} {}", t.target);
            assert_eq!(t.kind, LoraKind::Linear);
            let (ne0, ne1) = base.tensors[&t.target];
            assert_eq!((t.n_in, t.n_out), (ne0, ne1), "{p} {}", t.target);
            assert_eq!(t.a().len(), rank * ne0, "{p} {} A", t.target);
            assert_eq!(t.b().len(), ne1 * rank, "{p} {} B", t.target);
            let r = t.kernel_ref(0.5);
            assert_eq!(r.scale, 0.5 * scale);
            if fmt == AdapterFormat::Gguf {
                assert_eq!(
                    t.is_mapped(),
                    (true, true),
                    "{p} {}: GGUF F16 must be used in place",
                    t.target
                );
            }
        }
        assert!(
            a.get("blk.0.ffn_up.weight").is_some() != (p == "json-peft"),
            "{p}"
        );
        assert!(a.get("blk.30.ffn_up.weight").is_none());
        let s = a.summary();
        assert!(
            s.contains(&format!("ranks: [{rank}]")) && s.contains("targets:"),
            "{s}"
        );
    }
    // The fp16 PEFT adapter's ffn factors need no reordering: used in place from the map.
    let shout = load(&data("shout-peft"));
    assert!(shout
        .tensors()
        .iter()
        .all(|t| t.is_mapped() == (true, true)));
}

#[test]
fn peft_and_llamacpp_gguf_agree_after_permutation() {
    for (peft, gguf) in [("pirate-peft", "pirate.gguf"), ("shout-peft", "shout.gguf")] {
        let p = load(&data(peft));
        let g = load(&data(gguf));
        assert_eq!(p.tensors().len(), g.tensors().len());
        assert_same_factors((peft, &p), (gguf, &g));
        let n_qk = p
            .tensors()
            .iter()
            .filter(|t| t.target.contains("attn_q") || t.target.contains("attn_k"))
            .count();
        println!(
            "{peft} == {gguf}: {} tensors, {n_qk} of them permuted q/k",
            p.tensors().len()
        );
    }
}

#[test]
fn bf16_rslora_values_match_numpy() {
    // Expected bits from numpy (outside this project): json-peft layers.5.self_attn.k_proj, bf16 → f32,
    // lora_B permuted like convert_hf_to_gguf.py's permute(w, n_head=9, n_head_kv=3) → f16.
    let a = load(&data("json-peft"));
    let t = a.get("blk.5.attn_k.weight").unwrap();
    assert_eq!(t.scale, 4.0);
    assert_eq!(&t.a()[..4], &[0x2840, 0x2660, 0xa6c0, 0xa4c0]);
    assert_eq!(&t.b()[16..20], &[0x1c80, 0x1e40, 0xa308, 0x2128], "B row 1");
    assert_eq!(
        &t.b()[33 * 16..33 * 16 + 4],
        &[0x2190, 0x1808, 0x9c70, 0x2270],
        "B row 33"
    );
    let sum_b: f64 = t
        .b()
        .iter()
        .map(|&h| half::f16::from_bits(h).to_f64())
        .sum();
    assert!(
        (sum_b - 0.07088172435760498).abs() < 1e-9,
        "sum of B {sum_b}"
    );
}

#[test]
fn format_is_detected_from_content() {
    let d = tmp("detect");
    std::fs::copy(data("pirate.gguf"), d.join("x.bin")).unwrap();
    assert_eq!(load(&d.join("x.bin")).format(), AdapterFormat::Gguf);
    std::fs::copy(
        data("shout-peft/adapter_model.safetensors"),
        d.join("y.bin"),
    )
    .unwrap();
    std::fs::copy(
        data("shout-peft/adapter_config.json"),
        d.join("adapter_config.json"),
    )
    .unwrap();
    let a = load(&d.join("y.bin"));
    assert_eq!(a.format(), AdapterFormat::Peft);
    assert_eq!(a.tensors().len(), 90);
    std::fs::write(d.join("junk.bin"), b"hello world, not an adapter").unwrap();
    expect_err(&d.join("junk.bin"), &smollm2(), &["junk.bin", "magic"]);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn config_refusals_name_the_field() {
    let base = smollm2();
    use serde_json::json;
    // Each case sets one field of the parsed `adapter_config.json`: (case, field, value, needles).
    let cases: [(&str, &str, serde_json::Value, &[&str]); 14] = [
        ("dora", "use_dora", json!(true), &["use_dora"]),
        ("bias", "bias", json!("all"), &["bias"]),
        (
            "mts",
            "modules_to_save",
            json!(["lm_head", "model.norm"]),
            &["modules_to_save", "model.norm"],
        ),
        (
            "unknown-module",
            "target_modules",
            json!(["gate_proj", "up_proj", "down_proj", "foo_proj"]),
            &["target_modules", "foo_proj"],
        ),
        ("peft-type", "peft_type", json!("LOHA"), &["peft_type"]),
        (
            "unknown-field",
            "shiny_new_option",
            json!(3),
            &["shiny_new_option"],
        ),
        ("r", "r", json!(8), &["`r`", "rank 4"]),
        (
            "rank-pattern",
            "rank_pattern",
            json!({"down_proj": 2}),
            &["rank_pattern", "down_proj"],
        ),
        (
            "layers",
            "layers_to_transform",
            json!([0]),
            &["layers_to_transform", "layers.1."],
        ),
        (
            "not-targeted",
            "target_modules",
            json!(["gate_proj", "up_proj"]),
            &["target_modules", "down_proj"],
        ),
        (
            "excluded",
            "exclude_modules",
            json!(["down_proj"]),
            &["exclude_modules", "down_proj"],
        ),
        (
            "pissa",
            "init_lora_weights",
            json!("pissa"),
            &["init_lora_weights"],
        ),
        (
            "layer-replication",
            "layer_replication",
            json!([[0, 4]]),
            &["layer_replication"],
        ),
        ("lora-bias", "lora_bias", json!(true), &["lora_bias"]),
    ];
    for (name, field, value, needles) in cases {
        let d = shout_with(name, |c| {
            c.insert(field.into(), value);
        });
        expect_err(&d, &base, needles);
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn accepted_config_variants_apply_patterns() {
    use serde_json::json;
    let base = smollm2();
    // alpha_pattern: first key in file order wins (PEFT's get_pattern_key); "layers.1.mlp.down_proj"
    // must not match layer 11 or 21.
    let d = shout_raw(
        "alpha-pattern",
        r#""alpha_pattern": {"layers.1.mlp.down_proj": 32, "down_proj": 16}"#,
    );
    let a = Adapter::load(&d, &base).unwrap();
    assert_eq!(a.get("blk.1.ffn_down.weight").unwrap().scale, 32.0 / 4.0);
    assert_eq!(a.get("blk.11.ffn_down.weight").unwrap().scale, 16.0 / 4.0);
    assert_eq!(a.get("blk.2.ffn_down.weight").unwrap().scale, 16.0 / 4.0);
    assert_eq!(a.get("blk.1.ffn_up.weight").unwrap().scale, 8.0 / 4.0);
    let _ = std::fs::remove_dir_all(d);
    // Order matters: with the general key first, it wins everywhere.
    let d = shout_raw(
        "alpha-pattern-order",
        r#""alpha_pattern": {"down_proj": 16, "layers.1.mlp.down_proj": 32}"#,
    );
    let a = Adapter::load(&d, &base).unwrap();
    assert_eq!(a.get("blk.1.ffn_down.weight").unwrap().scale, 16.0 / 4.0);
    let _ = std::fs::remove_dir_all(d);
    // rsLoRA switched on, regex target_modules, "all-linear", inert fields.
    let d = shout_with("variants", |c| {
        c.insert("use_rslora".into(), json!(true));
        c.insert(
            "target_modules".into(),
            json!(r".*\.mlp\.(gate|up|down)_proj"),
        );
        c.insert("lora_dropout".into(), json!(0.1));
        c.insert("rank_pattern".into(), json!({"gate_proj": 4}));
    });
    let a = Adapter::load(&d, &base).unwrap();
    assert!(
        a.tensors().iter().all(|t| t.scale == 8.0 / 2.0),
        "rsLoRA alpha/sqrt(4)"
    );
    let _ = std::fs::remove_dir_all(d);
    let d = shout_with("all-linear", |c| {
        c.insert("target_modules".into(), json!("all-linear"));
        c.insert(
            "layers_to_transform".into(),
            json!((0..30).collect::<Vec<_>>()),
        );
        c.insert("layers_pattern".into(), json!("layers"));
    });
    assert_eq!(Adapter::load(&d, &base).unwrap().tensors().len(), 90);
    let _ = std::fs::remove_dir_all(d);
    // A regex target that does not select down_proj is refused (tensors for it exist).
    let d = shout_with("regex-miss", |c| {
        c.insert("target_modules".into(), json!(r".*\.(gate|up)_proj"));
    });
    expect_err(&d, &base, &["target_modules", "down_proj"]);
    let _ = std::fs::remove_dir_all(d);
}

/// A safetensors entry (name, dtype, shape, bytes) of type F16 holding `values` rounded to f16.
fn f16_entry<'a>(
    name: &'a str,
    shape: Vec<usize>,
    values: &[f32],
) -> (&'a str, &'static str, Vec<usize>, Vec<u8>) {
    (name, "F16", shape, f16_bytes(values))
}

/// A safetensors entry of type F16 with every value `v`.
fn filled(name: &str, shape: Vec<usize>, v: f32) -> (&str, &'static str, Vec<usize>, Vec<u8>) {
    let n = shape.iter().product();
    f16_entry(name, shape, &vec![v; n])
}

/// Writes a safetensors file from (name, dtype, shape, bytes).
fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, dt, shape, bytes) in tensors {
        header.insert(name.to_string(), serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [off, off + bytes.len()]}));
        off += bytes.len();
    }
    let h = serde_json::to_string(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    for (_, _, _, b) in tensors {
        out.extend_from_slice(b);
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn tensor_refusals_name_the_tensor() {
    let base = smollm2();
    let cfg = std::fs::read(data("shout-peft/adapter_config.json")).unwrap();
    let d = tmp("tensors");
    std::fs::write(d.join("adapter_config.json"), &cfg).unwrap();
    let st = d.join("adapter_model.safetensors");
    let a_name = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight";
    let b_name = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight";

    // Rank mismatch: A rank 4, B rank 3.
    write_safetensors(
        &st,
        &[
            filled(a_name, vec![4, 1536], 0.01),
            filled(b_name, vec![576, 3], 0.01),
        ],
    );
    expect_err(&d, &base, &["rank mismatch", "lora_B"]);

    // Shape mismatch against the base: down_proj A with 1000 inputs.
    write_safetensors(
        &st,
        &[
            filled(a_name, vec![4, 1000], 0.01),
            filled(b_name, vec![576, 4], 0.01),
        ],
    );
    expect_err(&d, &base, &["shape mismatch", "blk.0.ffn_down.weight"]);

    // NaN at index 7 of B (F32 source), Inf in an F16 A.
    let mut bv = vec![0.01f32; 576 * 4];
    bv[7] = f32::NAN;
    let bbytes: Vec<u8> = bv.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_safetensors(
        &st,
        &[
            filled(a_name, vec![4, 1536], 0.01),
            (b_name, "F32", vec![576, 4], bbytes),
        ],
    );
    expect_err(&d, &base, &[b_name, "index 7", "NaN"]);
    let mut av = vec![0.01f32; 4 * 1536];
    av[4 * 1536 - 1] = f32::INFINITY;
    write_safetensors(
        &st,
        &[
            f16_entry(a_name, vec![4, 1536], &av),
            filled(b_name, vec![576, 4], 0.01),
        ],
    );
    expect_err(&d, &base, &[a_name, "index 6143", "inf"]);
    // An F32 value too large for fp16.
    let big: Vec<u8> = [1e6f32]
        .iter()
        .chain(std::iter::repeat_n(&0.0f32, 576 * 4 - 1))
        .flat_map(|x| x.to_le_bytes())
        .collect();
    write_safetensors(
        &st,
        &[
            filled(a_name, vec![4, 1536], 0.01),
            (b_name, "F32", vec![576, 4], big),
        ],
    );
    expect_err(&d, &base, &[b_name, "overflows fp16"]);
    // Only A, no B.
    write_safetensors(&st, &[filled(a_name, vec![4, 1536], 0.01)]);
    expect_err(&d, &base, &["down_proj", "only one"]);
    // A DoRA magnitude vector.
    let m_name = "base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector";
    write_safetensors(
        &st,
        &[
            filled(a_name, vec![4, 1536], 0.01),
            filled(b_name, vec![576, 4], 0.01),
            filled(m_name, vec![576], 1.0),
        ],
    );
    expect_err(&d, &base, &["lora_magnitude_vector"]);
    // A well-formed small adapter loads (sanity of the writer), and BF16 converts.
    write_safetensors(
        &st,
        &[
            (a_name, "BF16", vec![4, 1536], [0x80, 0x3f].repeat(4 * 1536)),
            filled(b_name, vec![576, 4], 0.5),
        ],
    );
    let ok = Adapter::load(&d, &base).unwrap();
    let t = ok.get("blk.0.ffn_down.weight").unwrap();
    assert!(t.a().iter().all(|&h| h == 0x3c00), "bf16 1.0 → f16 1.0");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn safetensors_framing_refusals() {
    let base = smollm2();
    let d = tmp("framing");
    std::fs::copy(
        data("shout-peft/adapter_config.json"),
        d.join("adapter_config.json"),
    )
    .unwrap();
    let orig = std::fs::read(data("shout-peft/adapter_model.safetensors")).unwrap();
    let st = d.join("adapter_model.safetensors");
    // Truncated by 100 bytes.
    std::fs::write(&st, &orig[..orig.len() - 100]).unwrap();
    expect_err(&d, &base, &["data_offsets"]);
    // Huge header length.
    let mut huge = orig.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&st, &huge).unwrap();
    expect_err(&d, &base, &["header_len", "exceeds"]);
    // Header length past the end of the file.
    let mut past = orig[..64].to_vec();
    past[..8].copy_from_slice(&1000u64.to_le_bytes());
    std::fs::write(&st, &past).unwrap();
    expect_err(&d, &base, &["header_len"]);
    // Trailing garbage after the last tensor.
    let mut tail = orig.clone();
    tail.extend_from_slice(&[0; 16]);
    std::fs::write(&st, &tail).unwrap();
    expect_err(&d, &base, &["data_offsets"]);
    // Shorter than 8 bytes.
    std::fs::write(&st, b"\x05\0\0").unwrap();
    expect_err(&d, &base, &["header_len"]);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn gguf_refusals_and_conversions() {
    let base = smollm2();
    // Architecture mismatch.
    let mut other = base.clone();
    other.arch = "gemma3".into();
    expect_err(
        &data("pirate.gguf"),
        &other,
        &["general.architecture", "gemma3"],
    );
    // Shape mismatch (a base with a different FFN width).
    let mut narrow = base.clone();
    narrow
        .tensors
        .insert("blk.3.ffn_up.weight".into(), (576, 1024));
    expect_err(
        &data("shout.gguf"),
        &narrow,
        &["shape mismatch", "blk.3.ffn_up.weight"],
    );
    // Layer count: a 20-layer base has no blk.25.
    let mut short = base.clone();
    short.n_layer = 20;
    for l in 20..30 {
        short
            .tensors
            .retain(|k, _| !k.starts_with(&format!("blk.{l}.")));
    }
    expect_err(&data("shout.gguf"), &short, &["blk.2", "does not have"]);

    // NaN injected into a copy of shout.gguf, in blk.0.ffn_down.weight.lora_b at element 5.
    let d = tmp("gguf");
    let bytes = std::fs::read(data("shout.gguf")).unwrap();
    let (off, name) = {
        let g = Gguf::parse(&bytes).unwrap();
        let t = g.tensor("blk.0.ffn_down.weight.lora_b").unwrap();
        (t.offset as usize, t.name.to_string())
    };
    let mut bad = bytes.clone();
    bad[off + 10..off + 12].copy_from_slice(&0x7e00u16.to_le_bytes());
    std::fs::write(d.join("nan.gguf"), &bad).unwrap();
    expect_err(&d.join("nan.gguf"), &base, &[&name, "index 5", "NaN"]);

    // A GGUF adapter written here with F32, BF16 and Q8_0 factors and alpha 0 (scale 1).
    let n_in = 576;
    let n_out = 1536;
    let r = 2;
    let a_vals: Vec<f32> = (0..r * n_in)
        .map(|i| ((i % 17) as f32 - 8.0) / 64.0)
        .collect();
    let b_vals: Vec<f32> = (0..n_out * r)
        .map(|i| ((i % 13) as f32 - 6.0) / 32.0)
        .collect();
    let a_f32: Vec<u8> = a_vals.iter().flat_map(|x| x.to_le_bytes()).collect();
    let b_bf16: Vec<u8> = b_vals
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
        .collect();
    // Q8_0 of a for a second target: blocks of 32 with d = 1/64 and q = round(x / d).
    let mut a_q8 = vec![];
    for blk in a_vals.chunks(32) {
        a_q8.extend_from_slice(&half::f16::from_f32(1.0 / 64.0).to_bits().to_le_bytes());
        a_q8.extend(blk.iter().map(|&x| (x * 64.0).round() as i8 as u8));
    }
    let mut w = lora_adapter_writer(Some(0.0));
    w.add_tensor(
        "blk.0.ffn_up.weight.lora_a",
        &[n_in as u64, r as u64],
        QuantType::F32,
        a_f32,
    )
    .unwrap();
    w.add_tensor(
        "blk.0.ffn_up.weight.lora_b",
        &[r as u64, n_out as u64],
        QuantType::BF16,
        b_bf16.clone(),
    )
    .unwrap();
    w.add_tensor(
        "blk.1.ffn_up.weight.lora_a",
        &[n_in as u64, r as u64],
        QuantType::Q8_0,
        a_q8,
    )
    .unwrap();
    w.add_tensor(
        "blk.1.ffn_up.weight.lora_b",
        &[r as u64, n_out as u64],
        QuantType::BF16,
        b_bf16,
    )
    .unwrap();
    w.write_file(&d.join("mixed.gguf")).unwrap();
    let a = load(&d.join("mixed.gguf"));
    for target in ["blk.0.ffn_up.weight", "blk.1.ffn_up.weight"] {
        let t = a.get(target).unwrap();
        assert_eq!(
            (t.rank, t.n_in, t.n_out, t.scale),
            (r, n_in, n_out, 1.0),
            "{target}"
        );
        assert_eq!(t.is_mapped(), (false, false));
        for (i, (&h, &x)) in t.a().iter().zip(&a_vals).enumerate() {
            assert_eq!(
                half::f16::from_bits(h).to_f32(),
                x,
                "{target} A[{i}] (exact in f16 and Q8_0)"
            );
        }
        for (i, (&h, &x)) in t.b().iter().zip(&b_vals).enumerate() {
            assert_eq!(half::f16::from_bits(h).to_f32(), x, "{target} B[{i}]");
        }
    }
    // An aLoRA whose invocation names a token outside the vocabulary is refused.
    let mut w2 = lora_adapter_writer(None);
    w2.add("adapter.alora.invocation_tokens", vec![1u32, 2, 4_000_000])
        .unwrap();
    w2.add_tensor(
        "blk.0.ffn_up.weight.lora_a",
        &[n_in as u64, 1],
        QuantType::F16,
        f16_bytes(&vec![0.0; n_in]),
    )
    .unwrap();
    w2.add_tensor(
        "blk.0.ffn_up.weight.lora_b",
        &[1, n_out as u64],
        QuantType::F16,
        f16_bytes(&vec![0.0; n_out]),
    )
    .unwrap();
    w2.write_file(&d.join("alora.gguf")).unwrap();
    expect_err(
        &d.join("alora.gguf"),
        &base,
        &["adapter.alora.invocation_tokens"],
    );
    // Not an adapter at all (a base-model-like GGUF).
    let mut w3 = GgufWriter::new();
    w3.add("general.architecture", "llama").unwrap();
    w3.add("general.type", "model").unwrap();
    w3.write_file(&d.join("model.gguf")).unwrap();
    expect_err(&d.join("model.gguf"), &base, &["general.type"]);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn base_info_from_the_real_model() {
    // The hand-written shapes above against the real model, when it is available.
    let candidates = [
        std::env::var("EDGE_RUN_MODEL").unwrap_or_default(),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        .to_string(),
    ];
    let Some(p) = candidates
        .iter()
        .find(|p| !p.is_empty() && Path::new(p).exists())
    else {
        println!(
            "SKIPPED base_info_from_the_real_model: SmolLM2 GGUF not found (set EDGE_RUN_MODEL)"
        );
        return;
    };
    let bytes = std::fs::read(p).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let real = BaseInfo::from_gguf(&g).unwrap();
    let hand = smollm2();
    assert_eq!(
        (
            real.arch.as_str(),
            real.n_layer,
            real.n_head,
            real.n_head_kv
        ),
        ("llama", 30, 9, 3)
    );
    for (k, v) in &hand.tensors {
        assert_eq!(real.tensors.get(k), Some(v), "{k}");
    }
    for name in [
        "pirate-peft",
        "json-peft",
        "shout-peft",
        "pirate.gguf",
        "shout.gguf",
    ] {
        Adapter::load(&data(name), &real)
            .unwrap_or_else(|e| panic!("{name} against the real model: {e}"));
    }
    println!("BaseInfo::from_gguf({p}) agrees; all five adapters load against it");
}

#[test]
fn peft_embedding_and_tied_head() {
    // lora_embedding_A [r, vocab] / lora_embedding_B [dim, r] → token-major A (vocab × r); lm_head on a
    // tied-embedding base → `output.weight`, checked against token_embd's shape.
    let base = smollm2();
    let d = tmp("embedding");
    let cfg = std::fs::read_to_string(data("shout-peft/adapter_config.json")).unwrap();
    let cfg = cfg.replace(
        r#""up_proj",
    "down_proj",
    "gate_proj""#,
        r#""embed_tokens", "lm_head""#,
    );
    assert!(cfg.contains("embed_tokens"));
    std::fs::write(d.join("adapter_config.json"), cfg).unwrap();
    let (r, vocab, dim) = (4usize, 49152usize, 576usize);
    let ea: Vec<f32> = (0..r * vocab)
        .map(|i| ((i % 101) as f32 - 50.0) / 256.0)
        .collect();
    let eb: Vec<f32> = (0..dim * r).map(|i| ((i % 7) as f32 - 3.0) / 8.0).collect();
    let ha: Vec<f32> = (0..r * dim).map(|i| ((i % 5) as f32 - 2.0) / 4.0).collect();
    let hb: Vec<f32> = (0..vocab * r)
        .map(|i| ((i % 3) as f32 - 1.0) / 2.0)
        .collect();
    // (name after `base_model.model.`, shape, values)
    let factors = [
        ("lm_head.lora_A.weight", vec![r, dim], &ha),
        ("lm_head.lora_B.weight", vec![vocab, r], &hb),
        ("model.embed_tokens.lora_embedding_A", vec![r, vocab], &ea),
        ("model.embed_tokens.lora_embedding_B", vec![dim, r], &eb),
    ];
    let names = factors
        .each_ref()
        .map(|f| format!("base_model.model.{}", f.0));
    let entries: Vec<_> = factors
        .iter()
        .zip(&names)
        .map(|((_, shape, values), name)| f16_entry(name, shape.clone(), values))
        .collect();
    write_safetensors(&d.join("adapter_model.safetensors"), &entries);
    let a = Adapter::load(&d, &base).unwrap();
    let e = a.get("token_embd.weight").unwrap();
    assert_eq!(
        (e.kind, e.rank, e.n_in, e.n_out),
        (LoraKind::Embedding, r, vocab, dim)
    );
    for tok in [0usize, 1, 777, vocab - 1] {
        for k in 0..r {
            assert_eq!(
                half::f16::from_bits(e.a()[tok * r + k]).to_f32(),
                ea[k * vocab + tok],
                "token {tok} k {k}"
            );
        }
    }
    assert_eq!(half::f16::from_bits(e.b()[5]).to_f32(), eb[5]);
    let h = a.get("output.weight").unwrap();
    assert_eq!(
        (h.kind, h.rank, h.n_in, h.n_out),
        (LoraKind::Linear, r, dim, vocab)
    );
    assert_eq!(h.scale, 2.0);
    let _ = std::fs::remove_dir_all(d);
}
