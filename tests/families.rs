//! The model families (`qwen2`, `qwen3`, Llama 3.x as `llama` with its RoPE frequency scaling and
//! `llama-bpe` tokenizer, and `phi3` with its fused tensors, partial rotary, LongRoPE, sliding window
//! and SentencePiece tokenizer) on the small test models of `tests/data/families/<family>/` (built by
//! `scripts/make_family_models.py`: SmolLM2's real weights cut to two layers and width 256 in each
//! family's layout, plus the family's own tensors; converted by llama.cpp's converter, quantized by
//! llama.cpp's quantizer; see the PROVENANCE note there).
//!
//! References are Hugging Face's: transformers fp32 on each GGUF (dequantized), without and with the
//! family's PEFT adapter; the tokenizer's ids from the Hugging Face `tokenizers` package.
mod common;

use common::TempDir;
use common::{adapted_logits_of_sequences, all_logits, convert_cli, sequences_in, Metrics};
use common::{compare, edge_run, path_arg, read_npz, reference, refused, root, summarize};
use edge_run::adapter::Adapter;
use edge_run::chat::{apply_chat_template, ChatMessage};
use edge_run::gguf::{Gguf, GgufWriter, MetaValue};
use edge_run::Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FAMILIES: [&str; 4] = ["qwen2", "qwen3", "llama3", "phi3"];
const TYPES: [&str; 3] = ["Q8_0", "Q4_0", "Q4_K_M"];

fn data(family: &str, name: &str) -> PathBuf {
    root().join("tests/data/families").join(family).join(name)
}

/// The GGUF architecture of a family (Llama 3.x is llama's).
fn arch_of(family: &str) -> &str {
    match family {
        "llama3" => "llama",
        f => f,
    }
}

fn model_path(family: &str, ty: &str) -> PathBuf {
    data(family, &format!("{family}-{ty}.gguf"))
}

/// The `family` model in Q8_0 and its path, after checking its architecture `arch` and its
/// `(n_embd, n_head, n_head_kv, head_dim, rope_dim)`.
fn open_q8_0(
    family: &str,
    arch: &str,
    heads: (usize, usize, usize, usize, usize),
) -> (PathBuf, Arc<Model>) {
    let path = model_path(family, "Q8_0");
    let m = Arc::new(Model::open(&path).unwrap());
    let hp = &m.hp;
    assert_eq!(m.arch, arch, "{family}");
    assert_eq!(
        (hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim, hp.rope_dim),
        heads,
        "{family}: n_embd, n_head, n_head_kv, head_dim, rope_dim"
    );
    (path, m)
}

/// Every position's logits of each reference sequence, with `set` applied.
fn runs(
    model: &Arc<Model>,
    family: &str,
    set: &[(&Arc<Adapter>, f32)],
) -> Vec<(String, Vec<Vec<f32>>)> {
    runs_of(model, family, "sequences.json", 128, set)
}

/// Every position's logits of the sequences of `file`, in sessions of context `n_ctx`.
fn runs_of(
    model: &Arc<Model>,
    family: &str,
    file: &str,
    n_ctx: usize,
    set: &[(&Arc<Adapter>, f32)],
) -> Vec<(String, Vec<Vec<f32>>)> {
    let cfg = all_logits(n_ctx, 16, 2);
    adapted_logits_of_sequences(model, sequences_in(&data(family, file)), cfg, set)
}

fn metrics(family: &str, npz: &str, runs: &[(String, Vec<Vec<f32>>)]) -> Metrics {
    let z = read_npz(&data(family, npz));
    let per: Vec<Metrics> = runs
        .iter()
        .map(|(name, rows)| compare(&reference(&z, name), rows))
        .collect();
    let m = summarize(&per);
    eprintln!("{family} {npz}: {m:?}");
    m
}

#[track_caller]
fn assert_bar(what: &str, m: &Metrics) {
    assert!(
        m.kl_mean <= 1e-3 && m.top1 >= 0.99,
        "{what}: mean KL {:.2e} (bar 1e-3), top-1 {:.4} (bar 0.99)",
        m.kl_mean,
        m.top1
    );
}

/// Each family and quantization against transformers fp32 on the same GGUF, without and with the PEFT
/// adapter (scale 1); scale 0 gives the base logits bit for bit.
#[test]
fn logits_match_hugging_face_with_and_without_adapter() {
    for family in FAMILIES {
        for ty in TYPES {
            let model = Arc::new(Model::open(model_path(family, ty)).unwrap());
            let adapter =
                Arc::new(Adapter::load(&data(family, "adapter-peft"), &model.base_info).unwrap());
            let base = runs(&model, family, &[]);
            assert_bar(
                &format!("{family} {ty} base"),
                &metrics(family, &format!("hf-{ty}-base.npz"), &base),
            );
            let lora = runs(&model, family, &[(&adapter, 1.0)]);
            assert_bar(
                &format!("{family} {ty} adapter"),
                &metrics(family, &format!("hf-{ty}-adapter.npz"), &lora),
            );
            // the adapter is not a no-op: the base run is far from the adapter's reference
            let off = metrics(family, &format!("hf-{ty}-adapter.npz"), &base);
            assert!(off.kl_mean > 0.05, "{family} {ty}: adapter changes little");
            let zero = runs(&model, family, &[(&adapter, 0.0)]);
            assert!(zero == base, "{family} {ty}: scale 0 differs from the base");
        }
    }
}

/// The family's hyper-parameters as the files state them (head size of its own for qwen3, q/k/v
/// biases for qwen2, tied head for qwen3, separate head for qwen2).
#[test]
fn hyperparameters_and_family_tensors() {
    let (_, m) = open_q8_0("qwen2", "qwen2", (256, 4, 2, 64, 64));
    let hp = &m.hp;
    assert_eq!(hp.rope_freq_base, 1e6);
    assert!(!m.tied_output);
    let l = &m.layers[0];
    assert_eq!(l.attn_q_bias.as_ref().map(|w| w.n_in), Some(256));
    assert_eq!(l.attn_k_bias.as_ref().map(|w| w.n_in), Some(128));
    assert!(l.attn_v_bias.is_some() && l.attn_q_norm.is_none());

    let (_, m) = open_q8_0("qwen3", "qwen3", (256, 4, 2, 128, 128));
    let hp = &m.hp;
    assert_eq!((hp.q_dim(), hp.kv_dim()), (512, 256));
    assert!(m.tied_output);
    let l = &m.layers[1];
    assert_eq!(l.attn_q_norm.as_ref().map(|w| w.n_in), Some(128));
    assert!(l.attn_k_norm.is_some() && l.attn_q_bias.is_none());
}

/// What a family's tokenizer and chat template look like: BOS text (if it adds one), the end-of-turn
/// token and its id, how the rendered prompt starts.
struct Chat {
    bos: Option<&'static str>,
    eot: (&'static str, u32),
    starts: &'static str,
}

fn chat_of(family: &str) -> Chat {
    match family {
        "llama3" => Chat {
            bos: Some("<|begin_of_text|>"),
            eot: ("<|eot_id|>", 4095),
            starts: "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user",
        },
        "phi3" => Chat {
            bos: None,
            eot: ("<|end|>", 4094),
            starts: "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n",
        },
        _ => Chat {
            bos: None,
            eot: ("<|im_end|>", 2),
            starts: "<|im_start|>system\nYou are a helpful assistant.",
        },
    }
}

/// Llama 3.2's RoPE frequency scaling as the test model's `rope_scaling` states it (factor 32, low and
/// high frequency factors 1 and 4, original context 32): the divisor of pair i's frequency
/// θᵢ = base^(−2i/d), from its wavelength λ = 2π/θᵢ.
fn llama3_divisor(i: usize) -> f64 {
    let (base, d, factor, low, high, ctx) = (5e5f64, 64.0, 32.0, 1.0, 4.0, 32.0);
    let wavelength = 2.0 * std::f64::consts::PI * base.powf(2.0 * i as f64 / d);
    if wavelength < ctx / high {
        1.0
    } else if wavelength > ctx / low {
        factor
    } else {
        let smooth = (ctx / wavelength - low) / (high - low);
        1.0 / ((1.0 - smooth) / factor + smooth)
    }
}

/// Llama 3.x is `llama` with per-frequency RoPE divisors (`rope_freqs.weight`, which llama.cpp's
/// converter computes from the checkpoint's `rope_scaling`), a tied head, base 5e5 and BOS. The
/// divisors are Llama 3's formula; the same file without them misses the Hugging Face reference
/// (whose RoPE applies the scaling) by more than the bar, so the logits test sees the scaling.
#[test]
fn llama3_rope_frequency_scaling() {
    let (path, m) = open_q8_0("llama3", "llama", (256, 4, 2, 64, 64));
    let hp = &m.hp;
    assert_eq!(hp.rope_freq_base, 5e5);
    assert!(m.tied_output && m.tokenizer.add_bos());
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let t = g.tensor("rope_freqs.weight").expect("rope_freqs.weight");
    let divisors: Vec<f32> = g
        .tensor_data(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(divisors.len(), 32);
    for (i, &d) in divisors.iter().enumerate() {
        let want = llama3_divisor(i);
        assert!(
            (f64::from(d) - want).abs() <= 1e-5 * want,
            "divisor {i}: {d} vs {want}"
        );
    }
    assert!(divisors[0] == 1.0 && divisors[31] == 32.0 && divisors[2] > 1.0 && divisors[2] < 32.0);

    let dir = TempDir::new("families", "no-rope-freqs");
    let plain = dir.join("plain.gguf");
    rewrite(&path, &plain, |_, v| Some(v), |t| t != "rope_freqs.weight");
    let pm = Arc::new(Model::open(&plain).unwrap());
    assert!(pm.rope_freqs.is_none());
    let off = metrics("llama3", "hf-Q8_0-base.npz", &runs(&pm, "llama3", &[]));
    assert!(off.kl_mean > 5e-3, "without the scaling: {off:?}");
}

/// The `qwen2` and `llama-bpe` pre-tokenizers: ids equal to the Hugging Face tokenizer's on texts with
/// digits (Llama 3 keeps runs of up to three together, and takes a whole-word token even where its
/// merges would not reach it), contractions in both cases, whitespace runs, CR/LF, unicode and special
/// tokens; the chat template from the file (ChatML, Llama 3's header format) renders through the Jinja
/// engine to the reference chat sequence's prompt.
#[test]
fn tokenizer_and_chat_template_match_hugging_face() {
    for family in FAMILIES {
        let model = Model::open(model_path(family, "Q4_0")).unwrap();
        let tok = &model.tokenizer;
        let chat = chat_of(family);
        assert_eq!(tok.add_bos(), chat.bos.is_some(), "{family}: BOS");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(data(family, "tokenize.json")).unwrap())
                .unwrap();
        let mut failures = Vec::new();
        for c in v.as_array().unwrap() {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = common::token_ids(&c["ids"]);
            let got = tok.encode(text, true);
            if got != want {
                failures.push(format!("{text:?}\n   got  {got:?}\n   want {want:?}"));
            }
            assert_eq!(tok.decode(&got), text, "{family}: round trip");
        }
        assert!(failures.is_empty(), "{family}:\n{}", failures.join("\n"));
        assert!(
            tok.is_eog(chat.eot.1),
            "{family}: {} ends generation",
            chat.eot.0
        );

        let tpl = model.chat_template.as_deref().expect("chat template");
        let prompt = apply_chat_template(
            tpl,
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
            chat.bos.unwrap_or(""),
            chat.eot.0,
        )
        .unwrap();
        let ids = tok.encode(&prompt, true);
        let (_, want) = sequences_in(&data(family, "sequences.json"))
            .into_iter()
            .find(|(n, _)| n == "chat")
            .unwrap();
        assert_eq!(ids[..], want[..ids.len()], "{family}: prompt {prompt:?}");
        assert!(prompt.starts_with(chat.starts), "{family}: {prompt:?}");
    }
}

/// The CLI generates from each family's chat template, with and without the adapter; its `logits`
/// command gives the Hugging Face logits of the chat sequence, base and with `--adapter` (so the
/// adapter reaches the CLI's sessions).
#[test]
fn cli_generates_and_evaluates_with_and_without_adapter() {
    let dir = TempDir::new("families", "cli");
    for family in FAMILIES {
        let m = model_path(family, "Q4_K_M");
        let a = data(family, "adapter-peft");
        let args = [
            "-m",
            path_arg(&m),
            "--chat",
            "-p",
            "What is the capital of France?",
            "-n",
            "12",
            "--temp",
            "0",
        ];
        let base = edge_run(&args);
        assert_eq!(base.status.code(), Some(0), "{family}: {base:?}");
        let mut with = args.to_vec();
        with.extend(["--adapter", path_arg(&a)]);
        let lora = edge_run(&with);
        assert_eq!(lora.status.code(), Some(0), "{family}: {lora:?}");
        assert!(!base.stdout.is_empty() && !lora.stdout.is_empty());

        let (_, chat) = sequences_in(&data(family, "sequences.json"))
            .into_iter()
            .find(|(n, _)| n == "chat")
            .unwrap();
        let tokens: Vec<String> = chat.iter().map(u32::to_string).collect();
        let tokens = tokens.join(",");
        for (npz, adapter) in [("base", None), ("adapter", Some(&a))] {
            let out = dir.join(format!("{family}-{npz}.npy"));
            let mut args = vec!["logits", "-m", path_arg(&m), "--tokens", &tokens];
            args.extend(["-o", path_arg(&out)]);
            if let Some(a) = adapter {
                args.extend(["--adapter", path_arg(a)]);
            }
            let o = edge_run(&args);
            assert_eq!(o.status.code(), Some(0), "{family}: {o:?}");
            let got = common::npy_f32(&std::fs::read(&out).unwrap());
            let rows: Vec<Vec<f32>> = (0..chat.len()).map(|i| got.row(i).to_vec()).collect();
            let z = read_npz(&data(family, &format!("hf-Q4_K_M-{npz}.npz")));
            let m = compare(&reference(&z, "chat"), &rows);
            assert_bar(&format!("{family} CLI logits, {npz}"), &m);
        }
    }
}

/// A copy of `src` with its metadata passed through `edit` (key, value → kept value or none) and its
/// tensors filtered by `keep`.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, MetaValue) -> Option<MetaValue>,
    keep: impl Fn(&str) -> bool,
) {
    let bytes = std::fs::read(src).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut w = GgufWriter::new();
    for e in g.metadata() {
        if let Some(v) = edit(e.key, MetaValue::from_value(&e.value)) {
            w.add(e.key, v).unwrap();
        }
    }
    for t in g.tensors().iter().filter(|t| keep(t.name)) {
        w.add_tensor(t.name, t.shape(), t.ty, g.tensor_data(t))
            .unwrap();
    }
    w.write_file(dst).unwrap();
}

/// A copy of `src` whose tensor `name` holds `values` (f32) instead.
fn with_f32_tensor(src: &Path, dst: &Path, name: &str, values: &[f32]) {
    let bytes = std::fs::read(src).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut w = GgufWriter::new();
    for e in g.metadata() {
        w.add(e.key, MetaValue::from_value(&e.value)).unwrap();
    }
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    for t in g.tensors() {
        let d = if t.name == name {
            &data[..]
        } else {
            g.tensor_data(t)
        };
        w.add_tensor(t.name, t.shape(), t.ty, d).unwrap();
    }
    w.write_file(dst).unwrap();
}

/// RoPE frequency divisors that are zero, negative or not finite are refused naming the tensor and
/// the entry (exit status 1), never run with infinite or reversed frequencies.
#[test]
fn bad_rope_divisors_are_refused() {
    let dir = TempDir::new("families", "bad-rope-freqs");
    for (i, bad) in [0.0f32, -1.0, f32::NAN, f32::INFINITY]
        .into_iter()
        .enumerate()
    {
        let mut v: Vec<f32> = (0..32).map(|i| llama3_divisor(i) as f32).collect();
        v[7] = bad;
        let out = dir.join(format!("bad-{i}.gguf"));
        with_f32_tensor(&model_path("llama3", "Q4_0"), &out, "rope_freqs.weight", &v);
        let err = Model::open(&out).unwrap_err().to_string();
        assert!(err.contains("rope_freqs.weight[7]"), "{bad}: {err}");
        let o = edge_run(&["-m", path_arg(&out), "-p", "Hi", "-n", "1"]);
        refused(&o, 1, "rope_freqs.weight[7]");
    }
}

/// Files of these families with a required key missing or of the wrong type, or a family tensor
/// missing, are refused with an error naming the key or tensor (exit status 1), never run.
#[test]
fn bad_family_metadata_is_refused_naming_the_key() {
    let dir = TempDir::new("families", "bad-meta");
    let cases: [(&str, &str, Option<MetaValue>, &str, &str); 6] = [
        (
            "qwen2",
            "qwen2.rope.freq_base",
            None,
            "",
            "qwen2.rope.freq_base",
        ),
        (
            "qwen2",
            "qwen2.attention.layer_norm_rms_epsilon",
            Some(MetaValue::from("1e-6")),
            "",
            "qwen2.attention.layer_norm_rms_epsilon",
        ),
        ("qwen2", "", None, "blk.1.attn_k.bias", "blk.1.attn_k.bias"),
        (
            "qwen3",
            "qwen3.attention.key_length",
            None,
            "",
            "qwen3.attention.key_length",
        ),
        (
            "qwen3",
            "qwen3.rope.freq_base",
            Some(MetaValue::from(vec!["1e6"])),
            "",
            "qwen3.rope.freq_base",
        ),
        (
            "qwen3",
            "",
            None,
            "blk.0.attn_q_norm.weight",
            "blk.0.attn_q_norm.weight",
        ),
    ];
    for (i, (family, key, value, tensor, needle)) in cases.into_iter().enumerate() {
        let out = dir.join(format!("bad-{i}.gguf"));
        rewrite(
            &model_path(family, "Q4_0"),
            &out,
            |k, v| {
                if k == key {
                    value.clone()
                } else {
                    Some(v)
                }
            },
            |t| t != tensor,
        );
        let err = Model::open(&out).unwrap_err().to_string();
        assert!(err.contains(needle), "case {i}: {err}");
        let o = edge_run(&["-m", path_arg(&out), "-p", "Hi", "-n", "1"]);
        refused(&o, 1, needle);
    }
}

/// `adapter convert`, `merge` and `diagnose` on each family: the converted GGUF adapter and the merged
/// model (f32, so that no requantization comes between) match the Hugging Face + PEFT reference;
/// diagnose reports the adapter's layers.
#[test]
fn adapter_convert_merge_and_diagnose() {
    let dir = TempDir::new("families", "tools");
    for family in FAMILIES {
        let (m, a) = (model_path(family, "Q8_0"), data(family, "adapter-peft"));
        let conv = dir.join(format!("{family}-lora.gguf"));
        let o = convert_cli(&a, &m, &conv);
        assert_eq!(o.status.code(), Some(0), "{family}: {o:?}");
        let model = Arc::new(Model::open(&m).unwrap());
        let converted = Arc::new(Adapter::load(&conv, &model.base_info).unwrap());
        let got = metrics(
            family,
            "hf-Q8_0-adapter.npz",
            &runs(&model, family, &[(&converted, 1.0)]),
        );
        assert_bar(&format!("{family} converted adapter"), &got);

        let merged = dir.join(format!("{family}-merged.gguf"));
        let o = edge_run(&[
            "merge",
            "-m",
            path_arg(&m),
            "--adapter",
            path_arg(&a),
            "-o",
            path_arg(&merged),
            "--type",
            "f32",
        ]);
        assert_eq!(o.status.code(), Some(0), "{family}: {o:?}");
        let mm = Arc::new(Model::open(&merged).unwrap());
        assert_eq!(mm.arch, arch_of(family));
        assert_eq!(mm.rope_freqs.is_some(), family == "llama3");
        assert!(mm.layers[0].attn_q_bias.is_some() == (family == "qwen2"));
        assert_eq!(mm.rope_factors.is_some(), family == "phi3");
        let got = metrics(family, "hf-Q8_0-adapter.npz", &runs(&mm, family, &[]));
        assert_bar(&format!("{family} merged (f32)"), &got);

        let o = edge_run(&["diagnose", "-m", path_arg(&m), "--adapter", path_arg(&a)]);
        assert_eq!(o.status.code(), Some(0), "{family}: {o:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        let q = if family == "phi3" {
            "attn_qkv"
        } else {
            "attn_q"
        };
        assert!(
            out.contains("KL(base)") && out.contains(&format!("blk.1.{q}.weight")),
            "{family}: {out}"
        );
    }
}

/// The factors of `phi3`'s LongRoPE as the checkpoint's `config.json` states them (`rope_scaling`).
fn phi3_config_factors(which: &str) -> Vec<f32> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("phi3", "config.json")).unwrap())
            .unwrap();
    (v["rope_scaling"][which].as_array().unwrap().iter())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// An F32 tensor's values.
fn f32_tensor(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let t = g.tensor(name).unwrap_or_else(|| panic!("{name}"));
    let v = g.tensor_data(t).chunks_exact(4);
    v.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Phi-3 as the file states it: q, k and v are rows of `attn_qkv` and gate and up rows of `ffn_up`;
/// half of each head rotates (`rope.dimension_count` 32 of 64); LongRoPE's factors are the
/// checkpoint's and its attention factor √(1 + ln(4096/32) / ln 32) (Phi-3's rule, from the maximum and
/// the original context); every layer has the 24-position window; separate head, no BOS. The same file
/// without the window, the LongRoPE factors or the attention factor misses the Hugging Face reference
/// (whose model has all three) by more than the bar, so the logits test sees each.
#[test]
fn phi3_fused_tensors_partial_rotary_longrope_and_window() {
    let (path, m) = open_q8_0("phi3", "phi3", (256, 4, 2, 64, 32));
    let hp = &m.hp;
    assert_eq!(hp.n_ff, 512);
    assert_eq!((hp.n_swa, hp.n_ctx_orig, hp.n_ctx_train), (24, 32, 4096));
    assert!(hp.swa.iter().all(|&s| s) && hp.rope_freq_base == 1e4);
    let want = (1.0 + (4096f64 / 32.0).ln() / 32f64.ln()).sqrt();
    assert!(
        (f64::from(hp.rope_attn_factor) - want).abs() < 1e-6,
        "{hp:?}"
    );
    assert!(!m.tied_output && !m.tokenizer.add_bos());
    for (i, l) in m.layers.iter().enumerate() {
        let (qkv, up) = (
            format!("blk.{i}.attn_qkv.weight"),
            format!("blk.{i}.ffn_up.weight"),
        );
        // (part, fused tensor and its rows, first row, rows)
        let parts = [
            (&l.attn_q, (&qkv, 512), 0, 256),
            (&l.attn_k, (&qkv, 512), 256, 128),
            (&l.attn_v, (&qkv, 512), 384, 128),
            (&l.ffn_gate, (&up, 1024), 0, 512),
            (&l.ffn_up, (&up, 1024), 512, 512),
        ];
        for (w, (name, rows), row0, n) in parts {
            assert_eq!((&w.name, w.row0, w.n_out, w.n_in), (name, row0, n, 256));
            let whole = m.lora_target(name).unwrap();
            assert_eq!((whole.row0, whole.n_out, whole.lora_slot), (0, rows, None));
            assert_eq!(w.offset, whole.offset + row0 * whole.row_bytes());
        }
        assert_eq!(m.lora_parts(&qkv).count(), 3);
        assert_eq!(m.lora_parts(&up).count(), 2);
    }
    for which in ["long", "short"] {
        let got = f32_tensor(&path, &format!("rope_factors_{which}.weight"));
        assert_eq!(
            got,
            phi3_config_factors(&format!("{which}_factor")),
            "{which}"
        );
    }
    assert!(m.rope_factors.is_some());

    let dir = TempDir::new("families", "phi3-variants");
    let no_window = dir.join("no-window.gguf");
    let window = "phi3.attention.sliding_window";
    rewrite(
        &path,
        &no_window,
        |k, v| {
            Some(if k == window {
                MetaValue::from(0u32)
            } else {
                v
            })
        },
        |_| true,
    );
    let no_factors = dir.join("no-factors.gguf");
    rewrite(
        &path,
        &no_factors,
        |_, v| Some(v),
        |t| !t.starts_with("rope_factors_"),
    );
    let no_attn_factor = dir.join("no-attn-factor.gguf");
    let attn = "phi3.rope.scaling.attn_factor";
    rewrite(
        &path,
        &no_attn_factor,
        |k, v| (k != attn).then_some(v),
        |_| true,
    );
    let variants = [
        ("window", no_window),
        ("factors", no_factors),
        ("attention factor", no_attn_factor),
    ];
    for (what, file) in variants {
        let pm = Arc::new(Model::open(&file).unwrap());
        let hp = &pm.hp;
        assert!(hp.n_swa == 0 || pm.rope_factors.is_none() || hp.rope_attn_factor == 1.0);
        let off = metrics("phi3", "hf-Q8_0-base.npz", &runs(&pm, "phi3", &[]));
        assert!(off.kl_mean > 5e-3, "without the {what}: {off:?}");
    }
}

/// Within the original context: a session of 32 positions takes LongRoPE's short factors, as
/// transformers does for a sequence of at most 32 positions (the `short` reference), for each type,
/// with and without the adapter; the long factors (a session past the original context) miss it.
#[test]
fn phi3_longrope_short_factors_within_the_original_context() {
    for ty in TYPES {
        let model = Arc::new(Model::open(model_path("phi3", ty)).unwrap());
        let adapter =
            Arc::new(Adapter::load(&data("phi3", "adapter-peft"), &model.base_info).unwrap());
        let n_orig = model.hp.n_ctx_orig;
        for (npz, scale) in [("base", 0.0), ("adapter", 1.0)] {
            let r = runs_of(
                &model,
                "phi3",
                "sequences-short.json",
                n_orig,
                &[(&adapter, scale)],
            );
            let m = metrics("phi3", &format!("hf-{ty}-{npz}.npz"), &r);
            assert_bar(&format!("phi3 {ty} {npz} short"), &m);
        }
        let long = runs_of(&model, "phi3", "sequences-short.json", 2 * n_orig, &[]);
        let off = metrics("phi3", &format!("hf-{ty}-base.npz"), &long);
        assert!(off.kl_mean > 5e-3, "{ty}: the long factors: {off:?}");
    }
}

/// Phi-3 files missing a fused tensor, one of LongRoPE's two factor tensors, or the original context
/// that picks between them, or with a bad attention factor, are refused naming the tensor or key.
#[test]
fn bad_phi3_files_are_refused_naming_the_tensor_or_key() {
    let dir = TempDir::new("families", "bad-phi3");
    let orig = "phi3.rope.scaling.original_context_length";
    let attn = "phi3.rope.scaling.attn_factor";
    let cases: [(&str, Option<MetaValue>, &str, &str); 5] = [
        ("", None, "blk.1.attn_qkv.weight", "blk.1.attn_qkv.weight"),
        ("", None, "blk.0.ffn_up.weight", "blk.0.ffn_up.weight"),
        (
            "",
            None,
            "rope_factors_short.weight",
            "rope_factors_short.weight",
        ),
        (orig, None, "", orig),
        (attn, Some(MetaValue::from(-1.0f32)), "", attn),
    ];
    for (i, (key, value, tensor, needle)) in cases.into_iter().enumerate() {
        let out = dir.join(format!("bad-{i}.gguf"));
        rewrite(
            &model_path("phi3", "Q4_0"),
            &out,
            |k, v| if k == key { value.clone() } else { Some(v) },
            |t| t != tensor,
        );
        let err = Model::open(&out).unwrap_err().to_string();
        assert!(err.contains(needle), "case {i}: {err}");
        let o = edge_run(&["-m", path_arg(&out), "-p", "Hi", "-n", "1"]);
        refused(&o, 1, needle);
    }
}
