//! Replaced modules (PEFT `modules_to_save`) against Hugging Face transformers + PEFT fp32.
//!
//! The two adapters of `tests/data/adapters/saved-modules/` (`scripts/make_saved_module_adapters.py`):
//! `head-peft` (LoRA on q/v + a replaced, tied `lm_head`) and `embed-peft` (LoRA on down_proj + a
//! replaced `embed_tokens`, the head left on the original embedding as PEFT leaves it). Their
//! 49152×576 replacements are not stored: every value is the base embedding (dequantized from the
//! GGUF) plus a fixed integer-hash pattern, so each test rebuilds PEFT's `adapter_model.safetensors`
//! from the header PEFT wrote and checks the file's CRC-32 and length against PEFT's.
mod common;

use common::*;
use edge_run::adapter::Adapter;
use edge_run::kernels::QuantType;
use edge_run::Model;
use std::path::Path;
use std::sync::Arc;

/// The generator's pattern: `n` values in [-1, 1), multiples of 2^-15, from a hash of (seed, index).
fn pattern(seed: u64, n: usize) -> impl Iterator<Item = f32> {
    (0..n as u64).map(move |i| {
        let mut h = i
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        h ^= h >> 31;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 29;
        ((h >> 48) as i64 - 32768) as f32 * (1.0 / 32768.0)
    })
}

/// The generator's values for tensor `name` of `n` elements; `base` is the dequantized embedding
/// (the replacements are `base + amplitude · pattern`).
fn values(name: &str, n: usize, base: &[f32]) -> Vec<f32> {
    const SPEC: [(&str, u64, f32); 4] = [
        ("lora_A", 1, 1.0 / 16.0),
        ("lora_B", 2, 1.0 / 32.0),
        ("lm_head", 3, 1.0 / 32.0),
        ("embed_tokens", 4, 1.0 / 32.0),
    ];
    let (key, seed, amp) = *SPEC.iter().find(|(k, _, _)| name.contains(k)).unwrap();
    let layer: u64 = name
        .split_once(".layers.")
        .map_or(0, |(_, r)| r.split('.').next().unwrap().parse().unwrap());
    // The projection's name (`q_proj` in `...self_attn.q_proj.lora_A.weight`), as a sum of bytes.
    let parts: Vec<&str> = name.split('.').collect();
    let proj: u64 = if key.starts_with("lora_") {
        parts[parts.len() - 3].bytes().map(u64::from).sum()
    } else {
        0
    };
    let v = pattern(seed * 1_000_003 + layer * 101 + proj, n).map(|x| x * amp);
    if key.starts_with("lora_") {
        v.collect()
    } else {
        assert_eq!(n, base.len(), "{name}");
        v.zip(base).map(|(d, b)| b + d).collect()
    }
}

/// `token_embd.weight` of the model file (Q8_0) dequantized to f32, as gguf-py does for transformers.
fn base_embedding(model: &Path) -> Vec<f32> {
    let bytes = std::fs::read(model).unwrap();
    let g = edge_run::gguf::Gguf::parse_named(&bytes, "model").unwrap();
    let t = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        t.ty,
        QuantType::Q8_0,
        "the generator's base is a Q8_0 embedding"
    );
    let mut out = Vec::with_capacity(t.n_elements());
    for b in g.tensor_data(t).chunks_exact(34) {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        out.extend(b[2..].iter().map(|&q| d * q as i8 as f32));
    }
    out
}

/// CRC-32 (IEEE 802.3, as zlib computes it).
fn crc32(bytes: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|i| {
            (0..8).fold(i, |c, _| {
                if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// Rebuilds PEFT's folder `name` in `dir` and checks it is the file PEFT wrote.
fn rebuild(name: &str, dir: &Path) {
    let src = root().join("tests/data/adapters/saved-modules");
    let header = std::fs::read(src.join(name).join("safetensors_header.json")).unwrap();
    let h: serde_json::Value = serde_json::from_slice(&header).unwrap();
    let base = base_embedding(&smollm2_path());
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    let data_start = file.len();
    for (tname, info) in h.as_object().unwrap() {
        if tname == "__metadata__" {
            continue;
        }
        assert_eq!(info["dtype"], "F32");
        let off: Vec<usize> = serde_json::from_value(info["data_offsets"].clone()).unwrap();
        let vals = values(tname, (off[1] - off[0]) / 4, &base);
        file.resize(file.len().max(data_start + off[1]), 0);
        file[data_start + off[0]..data_start + off[1]].copy_from_slice(&f32_bytes(&vals));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("files.json")).unwrap()).unwrap();
    assert_eq!(
        file.len() as u64,
        meta[name]["len"].as_u64().unwrap(),
        "{name}: length"
    );
    assert_eq!(
        crc32(&file) as u64,
        meta[name]["crc32"].as_u64().unwrap(),
        "{name}: the rebuilt file differs from PEFT's"
    );
    std::fs::write(dir.join("adapter_model.safetensors"), &file).unwrap();
    std::fs::copy(
        src.join(name).join("adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
}

/// PEFT's folder `name` rebuilt in a new temporary folder ([`rebuild`]), loaded for `model`.
fn load_rebuilt(model: &Model, name: &str) -> (TempDir, Arc<Adapter>) {
    let dir = TempDir::new("saved", name);
    rebuild(name, &dir);
    let adapter = Arc::new(Adapter::load(&dir, &model.base_info).unwrap());
    (dir, adapter)
}

/// The base tensors `adapter` replaces, in its order.
fn saved_targets(adapter: &Adapter) -> Vec<&str> {
    adapter.saved().iter().map(|m| m.target.as_str()).collect()
}

/// The summarized metrics of the reference sequences with the adapter set `set` against `npz`.
fn metrics_vs(model: &Arc<Model>, set: &[(&Arc<Adapter>, f32)], npz: &str) -> Metrics {
    let z = read_npz(&root().join("tests/data/reference/smollm2").join(npz));
    let per: Vec<Metrics> = compare_sequences(model, set, &z)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    summarize(&per)
}

/// Mean KL ≤ 0.0025 and top-1 ≥ 98.5% against `npz` with the adapter set `set`.
fn assert_matches(model: &Arc<Model>, set: &[(&Arc<Adapter>, f32)], npz: &str) {
    let m = metrics_vs(model, set, npz);
    eprintln!("{npz}: {m:?}");
    assert!(
        m.kl_mean <= 0.0025 && m.top1 >= 0.985,
        "{npz}: KL {} top-1 {}",
        m.kl_mean,
        m.top1
    );
}

/// The base model must be far from the adapted reference (the replacement matters).
fn assert_base_differs(model: &Arc<Model>, npz: &str) {
    let kl = metrics_vs(model, &[], npz).kl_mean;
    assert!(kl > 0.02, "base vs {npz}: KL {kl}: is the adapter applied?");
}

/// The rebuilt adapter `name` (replacing `target` alone) and the shared pirate adapter, after
/// checking that `name` alone and stacked before pirate matches the references `hf_{name}.npz` and
/// `hf_{name}_pirate.npz`, and that the base model does not match the first.
fn rebuilt_matches_alone_and_stacked(
    model: &Arc<Model>,
    name: &str,
    target: &str,
) -> (TempDir, Arc<Adapter>, Arc<Adapter>) {
    let (dir, replacing) = load_rebuilt(model, name);
    assert_eq!(saved_targets(&replacing), [target], "{name}");
    let [pirate] = shared_adapters(model, ["pirate-peft"]);
    let alone = format!("hf_{name}.npz");
    assert_matches(model, &[(&replacing, 1.0)], &alone);
    let stacked = format!("hf_{name}_pirate.npz");
    assert_matches(model, &[(&replacing, 1.0), (&pirate, 1.0)], &stacked);
    assert_base_differs(model, &alone);
    (dir, replacing, pirate)
}

#[test]
fn replaced_head_matches_hf_peft_alone_stacked_and_converted() {
    let model = open_smollm2();
    let (dir, head, pirate) =
        rebuilt_matches_alone_and_stacked(&model, "head-peft", "output.weight");
    assert_matches(
        &model,
        &[(&pirate, 1.0), (&head, 1.0)],
        "hf_head-peft_pirate.npz",
    );

    // `adapter convert` writes the replacement; the GGUF maps it in place and runs the same.
    let gguf = dir.join("head.gguf");
    let m = smollm2_path();
    let o = convert_cli(&dir, &m, &gguf);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = Arc::new(Adapter::load(&gguf, &model.base_info).unwrap());
    assert!(
        g.saved()[0].is_mapped(),
        "an fp16 GGUF replacement is used in place"
    );
    assert_eq!(g.saved()[0].data(), head.saved()[0].data());
    assert_matches(
        &model,
        &[(&g, 1.0), (&pirate, 1.0)],
        "hf_head-peft_pirate.npz",
    );
    let info = info_with_adapter(&gguf);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("replaces output.weight (modules_to_save): 49152 x 576 fp16"),
        "{text}"
    );
    let diag = smollm2_with_adapter("diagnose", &gguf, &["--max-tokens", "16", "--json"]);
    let text = String::from_utf8_lossy(&diag.stdout);
    let j: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        j["adapters"][0]["replaces"],
        serde_json::json!(["output.weight"]),
        "{text}"
    );

    // Unloading and scale 0 give the base back bit for bit.
    let ids = &sequences()[0].1[..24];
    let set = [(&head, 1.0), (&pirate, 1.0)];
    let mut s = assert_scale_zero_and_removal(&model, &head, &set, ids, "after unloading");

    // Two adapters replacing the same tensor cannot be stacked.
    let err = s.set_adapters(&[(&head, 1.0), (&g, 1.0)]).unwrap_err();
    assert!(err.to_string().contains("output.weight"), "{err}");
}

#[test]
fn replaced_embedding_matches_hf_peft_alone_and_stacked() {
    let model = open_smollm2();
    // The head stays tied to the original embedding (`ensure_weight_tying` is false).
    let (_dir, embed, _) =
        rebuilt_matches_alone_and_stacked(&model, "embed-peft", "token_embd.weight");
    let ids = &sequences()[1].1[..24];
    let base = logits_of(&model, &[], ids);
    let mut s = session(&model, 64, 2);
    s.set_adapters(&[(&embed, 1.0)]).unwrap();
    assert_ne!(base, s.eval(ids).unwrap());
    s.set_adapters(&[]).unwrap();
    s.reset();
    assert_eq!(base, s.eval(ids).unwrap(), "after unloading");
}

/// A small safetensors file of F32 tensors, in order.
fn safetensors(entries: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0;
    for (name, shape, v) in entries {
        let end = off + 4 * v.len();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, end]}),
        );
        off = end;
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for (_, _, v) in entries {
        out.extend_from_slice(&f32_bytes(v));
    }
    out
}

/// PEFT with `ensure_weight_tying` on a tied model saves the head as well as the embedding but lists
/// only `embed_tokens` (checked with PEFT 0.21.2), and its head computes with the replaced embedding;
/// without the flag the same file is refused (the head is not listed).
#[test]
fn ensure_weight_tying_makes_the_tied_head_use_the_replaced_embedding() {
    let base = common::llama_base::llama_base_info(1, (2, 1), 8, 16, 12);
    let emb = uniform_values(96, 0.5, 7);
    let file = safetensors(&[
        ("base_model.model.lm_head.weight", vec![12, 8], emb.clone()),
        (
            "base_model.model.model.embed_tokens.weight",
            vec![12, 8],
            emb.clone(),
        ),
        (
            "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
            vec![2, 8],
            uniform_values(16, 0.5, 8),
        ),
        (
            "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
            vec![4, 2],
            uniform_values(8, 0.5, 9),
        ),
    ]);
    let dir = TempDir::new("saved", "tying");
    std::fs::write(dir.join("adapter_model.safetensors"), file).unwrap();
    let config = |tie: bool| {
        let c = serde_json::json!({
            "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["v_proj"],
            "modules_to_save": ["embed_tokens", "model.embed_tokens"], "ensure_weight_tying": tie,
        });
        std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
    };
    config(true);
    let a = Adapter::load(&dir, &base).unwrap();
    assert_eq!(saved_targets(&a), ["output.weight", "token_embd.weight"]);
    let want: Vec<u16> = emb
        .iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect();
    assert_eq!(a.saved()[0].data(), &want[..]);
    assert_eq!(a.saved()[1].data(), &want[..]);
    config(false);
    let err = Adapter::load(&dir, &base).unwrap_err().to_string();
    assert!(
        err.contains("lm_head") && err.contains("modules_to_save"),
        "{err}"
    );
}
