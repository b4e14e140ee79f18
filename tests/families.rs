//! The Qwen families (`qwen2`, `qwen3`) on the small test models of `tests/data/families/<family>/`
//! (built by `scripts/make_family_models.py`: SmolLM2's real weights cut to two layers and width 256
//! in each family's layout, plus the family's own tensors; converted by llama.cpp's converter, quantized
//! by llama.cpp's quantizer; see the PROVENANCE note there).
//!
//! References are Hugging Face's: transformers fp32 on each GGUF (dequantized), without and with the
//! family's PEFT adapter; the tokenizer's ids from the Hugging Face `tokenizers` package.
mod common;

use common::{compare, edge_run, path_arg, read_npz, reference, refused, root, summarize};
use common::{sequences_in, Metrics, TempDir};
use edge_run::adapter::Adapter;
use edge_run::chat::{apply_chat_template, ChatMessage};
use edge_run::gguf::{Gguf, GgufWriter, MetaValue};
use edge_run::{Model, SessionConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FAMILIES: [&str; 2] = ["qwen2", "qwen3"];
const TYPES: [&str; 3] = ["Q8_0", "Q4_0", "Q4_K_M"];

fn data(family: &str, name: &str) -> PathBuf {
    root().join("tests/data/families").join(family).join(name)
}

fn model_path(family: &str, ty: &str) -> PathBuf {
    data(family, &format!("{family}-{ty}.gguf"))
}

/// Every position's logits of each reference sequence, with `set` applied.
fn runs(
    model: &Arc<Model>,
    family: &str,
    set: &[(&Arc<Adapter>, f32)],
) -> Vec<(String, Vec<Vec<f32>>)> {
    let cfg = SessionConfig {
        n_ctx: 128,
        n_batch: 16,
        n_threads: 2,
        logits_all: true,
        ..Default::default()
    };
    sequences_in(&data(family, "sequences.json"))
        .into_iter()
        .map(|(name, ids)| {
            let mut s = edge_run::Session::new(model.clone(), cfg.clone()).unwrap();
            s.set_adapters(set).unwrap();
            let mut rows = Vec::new();
            s.eval_each(&ids, |_, l| rows.push(l.to_vec())).unwrap();
            (name, rows)
        })
        .collect()
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
    let m = Model::open(model_path("qwen2", "Q8_0")).unwrap();
    let hp = &m.hp;
    assert_eq!(m.arch, "qwen2");
    assert_eq!(
        (hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim),
        (256, 4, 2, 64)
    );
    assert_eq!(hp.rope_freq_base, 1e6);
    assert!(!m.tied_output);
    let l = &m.layers[0];
    assert_eq!(l.attn_q_bias.as_ref().map(|w| w.n_in), Some(256));
    assert_eq!(l.attn_k_bias.as_ref().map(|w| w.n_in), Some(128));
    assert!(l.attn_v_bias.is_some() && l.attn_q_norm.is_none());

    let m = Model::open(model_path("qwen3", "Q8_0")).unwrap();
    let hp = &m.hp;
    assert_eq!(m.arch, "qwen3");
    assert_eq!(
        (hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim),
        (256, 4, 2, 128)
    );
    assert_eq!((hp.q_dim(), hp.kv_dim()), (512, 256));
    assert!(m.tied_output);
    let l = &m.layers[1];
    assert_eq!(l.attn_q_norm.as_ref().map(|w| w.n_in), Some(128));
    assert!(l.attn_k_norm.is_some() && l.attn_q_bias.is_none());
}

/// The `qwen2` pre-tokenizer: ids equal to the Hugging Face tokenizer's on texts with digits,
/// contractions in both cases, whitespace runs, CR/LF, unicode and special tokens; the ChatML template
/// from the file renders through the Jinja engine to the reference chat sequence's prompt.
#[test]
fn tokenizer_and_chat_template_match_hugging_face() {
    for family in FAMILIES {
        let model = Model::open(model_path(family, "Q4_0")).unwrap();
        let tok = &model.tokenizer;
        assert!(!tok.add_bos(), "{family}: Qwen adds no BOS");
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
        assert!(tok.is_eog(2), "{family}: <|im_end|> ends generation");

        let tpl = model.chat_template.as_deref().expect("chat template");
        let prompt = apply_chat_template(
            tpl,
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
            "",
            "<|im_end|>",
        )
        .unwrap();
        let ids = tok.encode(&prompt, true);
        let (_, chat) = sequences_in(&data(family, "sequences.json"))
            .into_iter()
            .find(|(n, _)| n == "chat")
            .unwrap();
        assert_eq!(ids[..], chat[..ids.len()], "{family}: prompt {prompt:?}");
        assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful assistant."));
    }
}

/// The CLI generates from each family, with and without the adapter, and the adapter changes the
/// greedy continuation.
#[test]
fn cli_generates_with_and_without_adapter() {
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
        assert_ne!(
            base.stdout, lora.stdout,
            "{family}: the adapter changes nothing"
        );
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
        let o = edge_run(&[
            "adapter",
            "convert",
            path_arg(&a),
            "-m",
            path_arg(&m),
            "-o",
            path_arg(&conv),
        ]);
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
        assert_eq!(mm.arch, family);
        assert!(mm.layers[0].attn_q_bias.is_some() == (family == "qwen2"));
        let got = metrics(family, "hf-Q8_0-adapter.npz", &runs(&mm, family, &[]));
        assert_bar(&format!("{family} merged (f32)"), &got);

        let o = edge_run(&["diagnose", "-m", path_arg(&m), "--adapter", path_arg(&a)]);
        assert_eq!(o.status.code(), Some(0), "{family}: {o:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("KL(base)") && out.contains("blk.1.attn_q.weight"),
            "{family}: {out}"
        );
    }
}
