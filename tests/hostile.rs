//! Hostile inputs: every malformed model, adapter or request must be refused with a clear, one-line
//! error, never a panic, a signal, a hang or a huge allocation.
//!
//! The corpus is generated here, from a small valid llama model (SentencePiece vocabulary, F32
//! weights) and valid GGUF / PEFT adapters built with `GgufWriter` and by hand, then mutated:
//! truncation at many offsets, integer sweeps (0, 1, 2^31, 2^32, 2^63, 2^64-1) over every integer field
//! of the file structure, and ~200 named corruptions (structure, hyper-parameters, tokenizer metadata,
//! safetensors headers, adapter configs, adapter tensors), and saved prompt states (truncated, bit
//! flips, every length swept). Each input is run through the CLI (`edge-run info -m FILE`,
//! `edge-run info -m MODEL --adapter FILE`, or for a state `edge-run -m MODEL -p … --prompt-cache
//! FILE`) with the address space limited to 2 GiB, and checked: exit status 1 or 2, exactly one error
//! line on stderr naming the file (and, for named corruptions, the field), no "panicked", no signal,
//! under 10 s. The same corpus is loaded
//! in process with a counting allocator: refusing a small hostile file must allocate < 1 MiB.
//!
//! Request-level faults (token id ≥ vocabulary, prompt longer than the context, adapter swaps that
//! fail) are checked on a `Session`: the request is refused, the session's state and adapter set stay
//! as they were, and it still computes the same logits afterwards.
//!
//! `HOSTILE_SHOW=1` prints every case's outcome (with `--nocapture`).
//! `HOSTILE_DUMP=DIR cargo test --release --test hostile dump_seed_corpus -- --ignored` writes
//! fuzzing seeds (a smaller model, adapters, and a sample of the corpus) to DIR/<target>/.
mod common;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use common::{f16_bytes, f32_bytes, uniform_values};
use counting_alloc::{peak_heap, Counting};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_run::adapter::Adapter;
use edge_run::gguf::{GgufWriter, MetaArray, MetaValue};
use edge_run::kernels::QuantType;
use edge_run::{Model, Session, SessionConfig};
use serde_json::json;

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------------
// A small valid llama model, as editable parts.

#[derive(Clone)]
struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: QuantType,
    data: Vec<u8>,
}

#[derive(Clone)]
struct Parts {
    meta: Vec<(String, MetaValue)>,
    tensors: Vec<Tensor>,
}

impl Parts {
    fn set(&mut self, k: &str, v: impl Into<MetaValue>) -> &mut Self {
        let v = v.into();
        match self.meta.iter_mut().find(|(key, _)| key == k) {
            Some(e) => e.1 = v,
            None => self.meta.push((k.to_string(), v)),
        }
        self
    }
    /// A copy with `edit` applied.
    fn edited(&self, edit: impl FnOnce(&mut Parts)) -> Parts {
        let mut p = self.clone();
        edit(&mut p);
        p
    }
    /// A copy with metadata key `k` set to `v`, or removed when `v` is `None`.
    fn with_meta(&self, k: &str, v: Option<MetaValue>) -> Parts {
        self.edited(|p| {
            match v {
                Some(v) => p.set(k, v),
                None => p.remove(k),
            };
        })
    }
    fn remove(&mut self, k: &str) -> &mut Self {
        let n = self.meta.len();
        self.meta.retain(|(key, _)| key != k);
        assert_ne!(n, self.meta.len(), "test bug: no key {k}");
        self
    }
    fn tensor(&mut self, name: &str) -> &mut Tensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("test bug: no tensor {name}"))
    }
    fn remove_tensor(&mut self, name: &str) -> &mut Self {
        let n = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        assert_ne!(n, self.tensors.len(), "test bug: no tensor {name}");
        self
    }
    /// Replace a tensor's shape (and type), with fresh data of the right size.
    fn reshape(&mut self, name: &str, dims: &[u64], ty: QuantType) -> &mut Self {
        let t = self.tensor(name);
        t.dims = dims.to_vec();
        t.ty = ty;
        t.data = data_for(ty, dims, 7);
        self
    }
    fn add_tensor(&mut self, name: &str, dims: &[u64], ty: QuantType) -> &mut Self {
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data: data_for(ty, dims, 11),
        });
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.add(k, v.clone())
                .unwrap_or_else(|e| panic!("test bug: {k}: {e}"));
        }
        for t in &self.tensors {
            w.add_tensor(&t.name, &t.dims, t.ty, t.data.clone())
                .unwrap_or_else(|e| panic!("test bug: {}: {e}", t.name));
        }
        w.to_bytes()
    }
}

fn data_for(ty: QuantType, dims: &[u64], seed: u64) -> Vec<u8> {
    let n = dims.iter().product::<u64>() as usize;
    match ty {
        QuantType::F32 => f32_bytes(&uniform_values(n, 0.2, seed)),
        QuantType::F16 => f16_bytes(&uniform_values(n, 0.2, seed)),
        other => vec![
            0x11;
            other
                .row_bytes(dims[0] as usize)
                .expect("test bug: block size")
                * (n / dims[0] as usize)
        ],
    }
}

#[derive(Clone, Copy)]
struct Dims {
    vocab: usize,
    embd: usize,
    layers: usize,
    head: usize,
    head_kv: usize,
    ff: usize,
    ctx: usize,
}

/// The model the CLI corpus mutates: width 32, 2 layers, 4 query / 2 KV heads of size 8, FFN 64,
/// vocabulary 48, F32 weights.
const TINY: Dims = Dims {
    vocab: 48,
    embd: 32,
    layers: 2,
    head: 4,
    head_kv: 2,
    ff: 64,
    ctx: 64,
};

/// SentencePiece-style vocabulary: <unk> <s> </s> ▁ a..z ▁a ▁b …
fn spm_tokens(n: usize) -> Vec<String> {
    let mut t: Vec<String> = vec![
        "<unk>".into(),
        "<s>".into(),
        "</s>".into(),
        "\u{2581}".into(),
    ];
    t.extend(('a'..='z').map(String::from));
    let mut i = 0u8;
    while t.len() < n {
        t.push(
            format!(
                "\u{2581}{}{}",
                (b'a' + i % 26) as char,
                if i >= 26 {
                    (b'a' + i / 26) as char
                } else {
                    ' '
                }
            )
            .trim_end()
            .to_string(),
        );
        i += 1;
    }
    t.truncate(n);
    t
}

/// A byte-level BPE vocabulary: the first `n_chars` printable ASCII characters, then `extra`.
fn gpt2_tokens(n_chars: usize, extra: &[&str]) -> Vec<String> {
    let chars = (b'!'..=b'~').take(n_chars).map(|b| (b as char).to_string());
    chars.chain(extra.iter().map(|s| s.to_string())).collect()
}

/// Makes `p`'s vocabulary a gpt2 (BPE) one with `tokens` and `merges`.
fn set_gpt2_vocab(p: &mut Parts, tokens: Vec<String>, merges: &[&str]) {
    p.set("tokenizer.ggml.model", "gpt2")
        .set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(tokens)),
        )
        .set("tokenizer.ggml.merges", merges.to_vec());
}

fn model_parts(d: Dims, linear: QuantType) -> Parts {
    let hd = d.embd / d.head;
    let (q, kv) = (d.head * hd, d.head_kv * hd);
    let tokens = spm_tokens(d.vocab);
    let types: Vec<i32> = (0..d.vocab)
        .map(|i| match i {
            0 => 2,
            1 | 2 => 3,
            _ => 1,
        })
        .collect();
    let scores: Vec<f32> = (0..d.vocab).map(|i| -(i as f32)).collect();
    let mut p = Parts {
        meta: vec![],
        tensors: vec![],
    };
    p.set("general.architecture", "llama")
        .set("general.name", "hostile-tiny")
        .set("llama.context_length", MetaValue::U32(d.ctx as u32))
        .set("llama.embedding_length", MetaValue::U32(d.embd as u32))
        .set("llama.block_count", MetaValue::U32(d.layers as u32))
        .set("llama.feed_forward_length", MetaValue::U32(d.ff as u32))
        .set("llama.attention.head_count", MetaValue::U32(d.head as u32))
        .set(
            "llama.attention.head_count_kv",
            MetaValue::U32(d.head_kv as u32),
        )
        .set("llama.rope.dimension_count", MetaValue::U32(hd as u32))
        .set(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        )
        .set("llama.rope.freq_base", MetaValue::F32(10000.0))
        .set("tokenizer.ggml.model", "llama")
        .set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(tokens)),
        )
        .set(
            "tokenizer.ggml.scores",
            MetaValue::Array(MetaArray::F32(scores)),
        )
        .set(
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::I32(types)),
        )
        .set("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))
        .set("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .set("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .set(
            "tokenizer.chat_template",
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
        );
    let e = d.embd as u64;
    p.add_tensor("token_embd.weight", &[e, d.vocab as u64], linear);
    p.add_tensor("output_norm.weight", &[e], QuantType::F32);
    for l in 0..d.layers {
        let mut add = |n: &str, dims: &[u64], ty| {
            p.add_tensor(&format!("blk.{l}.{n}.weight"), dims, ty);
        };
        add("attn_norm", &[e], QuantType::F32);
        add("attn_q", &[e, q as u64], linear);
        add("attn_k", &[e, kv as u64], linear);
        add("attn_v", &[e, kv as u64], linear);
        add("attn_output", &[q as u64, e], linear);
        add("ffn_norm", &[e], QuantType::F32);
        add("ffn_gate", &[e, d.ff as u64], linear);
        add("ffn_up", &[e, d.ff as u64], linear);
        add("ffn_down", &[d.ff as u64, e], linear);
    }
    // Norm weights near 1.
    for t in p
        .tensors
        .iter_mut()
        .filter(|t| t.name.ends_with("norm.weight"))
    {
        let v: Vec<f32> = uniform_values(t.dims[0] as usize, 0.2, 3)
            .iter()
            .map(|x| 1.0 + x)
            .collect();
        t.data = f32_bytes(&v);
    }
    p
}

fn tiny() -> Parts {
    model_parts(TINY, QuantType::F32)
}

// ---------------------------------------------------------------------------------------------------
// Adapters.

/// A valid llama.cpp GGUF LoRA adapter for `d`: rank `r` on blk.0.attn_q and blk.1.attn_v.
fn gguf_adapter_parts(d: Dims, r: u64) -> Parts {
    let e = d.embd as u64;
    let kv = (d.head_kv * (d.embd / d.head)) as u64;
    let mut p = Parts {
        meta: vec![],
        tensors: vec![],
    };
    p.set("general.type", "adapter")
        .set("general.architecture", "llama")
        .set("adapter.type", "lora")
        .set("adapter.lora.alpha", MetaValue::F32(2.0 * r as f32));
    p.add_tensor("blk.0.attn_q.weight.lora_a", &[e, r], QuantType::F32)
        .add_tensor("blk.0.attn_q.weight.lora_b", &[r, e], QuantType::F32)
        .add_tensor("blk.1.attn_v.weight.lora_a", &[e, r], QuantType::F32)
        .add_tensor("blk.1.attn_v.weight.lora_b", &[r, kv], QuantType::F32);
    p
}

/// One safetensors entry: name, dtype text, shape, raw data.
#[derive(Clone)]
struct StEntry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn st_entry(name: &str, shape: &[usize], seed: u64) -> StEntry {
    let n = shape.iter().product();
    StEntry {
        name: name.into(),
        dtype: "F32".into(),
        shape: shape.to_vec(),
        data: f32_bytes(&uniform_values(n, 0.2, seed)),
    }
}

/// A well-formed safetensors file: contiguous data in entry order, header padded to 8 bytes.
fn safetensors(entries: &[StEntry]) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    let mut off = 0usize;
    for e in entries {
        obj.insert(
            e.name.clone(),
            json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [off, off + e.data.len()]}),
        );
        off += e.data.len();
    }
    obj.insert("__metadata__".into(), json!({"format": "pt"}));
    let header = serde_json::to_string(&obj).unwrap();
    let data: Vec<u8> = entries.iter().flat_map(|e| e.data.clone()).collect();
    st_raw(&header, &data)
}

/// Header text (padded with spaces to a multiple of 8) and data, as given.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

const PEFT_PREFIX: &str = "base_model.model.model.layers";

/// A valid PEFT adapter for TINY: rank 2 on layer 0 q_proj and v_proj.
fn peft_entries() -> Vec<StEntry> {
    [
        ("q_proj.lora_A", [2, 32], 21),
        ("q_proj.lora_B", [32, 2], 22),
        ("v_proj.lora_A", [2, 32], 23),
        ("v_proj.lora_B", [16, 2], 24),
    ]
    .iter()
    .map(|(t, shape, seed)| {
        st_entry(
            &format!("{PEFT_PREFIX}.0.self_attn.{t}.weight"),
            shape,
            *seed,
        )
    })
    .collect()
}

fn peft_config() -> serde_json::Value {
    json!({
        "peft_type": "LORA",
        "r": 2,
        "lora_alpha": 4,
        "target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.05,
        "bias": "none",
        "task_type": "CAUSAL_LM"
    })
}

// ---------------------------------------------------------------------------------------------------
// Byte surgery.

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Replace the only occurrence of `from` by `to` (same length).
fn patch(b: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let pos: Vec<usize> = b
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        pos.len(),
        1,
        "test bug: {:?} occurs {} times",
        String::from_utf8_lossy(from),
        pos.len()
    );
    let mut out = b.to_vec();
    out[pos[0]..pos[0] + to.len()].copy_from_slice(to);
    out
}

/// An integer field of the GGUF structure.
#[derive(Clone, Debug)]
struct Field {
    at: usize,
    width: usize,
    what: String,
}

impl Field {
    fn new(at: usize, width: usize, what: impl Into<String>) -> Field {
        let what = what.into();
        Field { at, width, what }
    }
    /// The field's value in `b`.
    fn get(&self, b: &[u8]) -> u64 {
        match self.width {
            8 => get_u64(b, self.at),
            _ => get_u32(b, self.at) as u64,
        }
    }
    /// Writes `v` (truncated to the field's width) into `b`.
    fn put(&self, b: &mut [u8], v: u64) {
        match self.width {
            8 => put_u64(b, self.at, v),
            _ => put_u32(b, self.at, v as u32),
        }
    }
}

/// A parsed view of where things are in a (valid) GGUF file built by the writer.
struct Layout2 {
    fields: Vec<Field>,
    /// Offset of each tensor info's fields: (name, n_dims at, dims at, type at, offset at).
    tensors: Vec<(String, usize, usize, usize, usize)>,
    info_end: usize,
}

/// Walks a valid GGUF file and lists every integer field: header counts, key / string lengths, value
/// and element types, array counts, integer scalars, and every tensor info field. Long string arrays
/// contribute their first three and last element lengths.
fn gguf_fields(b: &[u8]) -> Layout2 {
    let mut f = vec![
        Field::new(4, 4, "version"),
        Field::new(8, 8, "tensor_count"),
        Field::new(16, 8, "kv_count"),
    ];
    let nt = get_u64(b, 8) as usize;
    let nkv = get_u64(b, 16) as usize;
    let mut p = 24;
    let string = |p: &mut usize, f: &mut Vec<Field>, what: String, record: bool| -> String {
        let n = get_u64(b, *p) as usize;
        if record {
            f.push(Field::new(*p, 8, format!("{what}.len")));
        }
        let s = String::from_utf8_lossy(&b[*p + 8..*p + 8 + n]).into_owned();
        *p += 8 + n;
        s
    };
    let fixed = |t: u32| -> usize {
        match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => panic!("test bug: type {t}"),
        }
    };
    for _ in 0..nkv {
        let key = string(&mut p, &mut f, "key".into(), true);
        let t = get_u32(b, p);
        f.push(Field::new(p, 4, format!("{key}.type")));
        p += 4;
        match t {
            8 => {
                string(&mut p, &mut f, key.clone(), true);
            }
            9 => {
                let et = get_u32(b, p);
                f.push(Field::new(p, 4, format!("{key}.elem_type")));
                let n = get_u64(b, p + 4) as usize;
                f.push(Field::new(p + 4, 8, format!("{key}.count")));
                p += 12;
                if et == 8 {
                    for i in 0..n {
                        string(&mut p, &mut f, format!("{key}[{i}]"), i < 3 || i + 1 == n);
                    }
                } else {
                    p += n * fixed(et);
                }
            }
            t => {
                let w = fixed(t);
                if matches!(t, 4 | 5 | 10 | 11) {
                    f.push(Field::new(p, w, format!("{key}.value")));
                }
                p += w;
            }
        }
    }
    let mut tensors = vec![];
    for _ in 0..nt {
        let name = string(&mut p, &mut f, "tensor.name".into(), true);
        let nd_at = p;
        f.push(Field::new(p, 4, format!("{name}.n_dims")));
        let nd = get_u32(b, p) as usize;
        p += 4;
        let dims_at = p;
        for d in 0..nd {
            f.push(Field::new(p, 8, format!("{name}.dims[{d}]")));
            p += 8;
        }
        f.push(Field::new(p, 4, format!("{name}.type")));
        f.push(Field::new(p + 4, 8, format!("{name}.offset")));
        tensors.push((name, nd_at, dims_at, p, p + 4));
        p += 12;
    }
    Layout2 {
        fields: f,
        tensors,
        info_end: p,
    }
}

const SWEEP64: [u64; 6] = [0, 1, 1 << 31, 1 << 32, 1 << 63, u64::MAX];
/// 2^32 and above do not fit a u32 field; u32::MAX stands for them.
const SWEEP32: [u32; 4] = [0, 1, 1 << 31, u32::MAX];

/// Every integer field set to every sweep value (skipping the unchanged value).
fn sweeps(b: &[u8], tag: &str, out: &mut Vec<Case>, input: Input) {
    let l = gguf_fields(b);
    for fld in &l.fields {
        let vals: Vec<u64> = if fld.width == 8 {
            SWEEP64.to_vec()
        } else {
            SWEEP32.iter().map(|&v| v as u64).collect()
        };
        for v in vals {
            if fld.get(b) == v {
                continue;
            }
            let mut m = b.to_vec();
            fld.put(&mut m, v);
            let name = format!("{tag} sweep {} = {v}", fld.what);
            either(out, &name, input.with(m));
        }
    }
}

/// Truncations: every length up to 64, every 11th byte of the header, both ends of every field, a few
/// points inside the data, and one byte short of the whole file.
fn truncations(b: &[u8], tag: &str, out: &mut Vec<Case>, input: Input, fields: Option<&Layout2>) {
    let mut cuts: Vec<usize> = (0..=64.min(b.len() - 1)).collect();
    if let Some(l) = fields {
        cuts.extend((64..l.info_end).step_by(11));
        for f in &l.fields {
            cuts.push(f.at);
            cuts.push(f.at + f.width - 1);
        }
        cuts.push(l.info_end);
        let data = b.len() - l.info_end;
        cuts.extend((1..8).map(|i| l.info_end + data * i / 8));
    } else {
        cuts.extend((64..b.len()).step_by((b.len() / 97).max(1)));
    }
    cuts.push(b.len() - 1);
    cuts.sort_unstable();
    cuts.dedup();
    for c in cuts.into_iter().filter(|&c| c < b.len()) {
        let name = format!("{tag} truncated to {c} bytes");
        refuse(out, &name, input.with(b[..c].to_vec()), &[]);
    }
}

// ---------------------------------------------------------------------------------------------------
// Cases.

/// How a case's bytes are presented to edge-run.
#[derive(Clone)]
enum Input {
    /// `info -m model.gguf`.
    Model(Vec<u8>),
    /// `info -m TINY --adapter adapter.gguf`.
    GgufAdapter(Vec<u8>),
    /// `info -m TINY --adapter DIR` with DIR/adapter_config.json (if given) and
    /// DIR/adapter_model.safetensors (if given); `file_arg` passes the .safetensors file instead of DIR.
    Peft {
        config: Option<Vec<u8>>,
        weights: Option<Vec<u8>>,
        file_arg: bool,
    },
    /// A saved prompt state: `-m TINY -p PROMPT --prompt-cache state.bin` (generation, not `info`).
    State(Vec<u8>),
}

impl Input {
    /// The same kind of input with the main file replaced.
    fn with(&self, bytes: Vec<u8>) -> Input {
        match self {
            Input::Model(_) => Input::Model(bytes),
            Input::GgufAdapter(_) => Input::GgufAdapter(bytes),
            Input::State(_) => Input::State(bytes),
            Input::Peft {
                config, file_arg, ..
            } => Input::peft_raw(config.clone(), Some(bytes), *file_arg),
        }
    }
    fn peft_raw(config: Option<Vec<u8>>, weights: Option<Vec<u8>>, file_arg: bool) -> Input {
        Input::Peft {
            config,
            weights,
            file_arg,
        }
    }
    fn peft(config: &serde_json::Value, weights: Vec<u8>) -> Input {
        let config = serde_json::to_vec_pretty(config).unwrap();
        Input::peft_raw(Some(config), Some(weights), false)
    }
    fn peft_cfg_text(config: &str) -> Input {
        let weights = safetensors(&peft_entries());
        Input::peft_raw(Some(config.as_bytes().to_vec()), Some(weights), false)
    }
}

#[derive(Clone, Debug)]
enum Expect {
    /// Must load (a control case).
    Accept,
    /// Must be refused; the error line must contain each of these (besides the file name).
    Refuse(Vec<&'static str>),
    /// Loaded or cleanly refused (integer sweeps: some values are harmless).
    Either,
}

#[derive(Clone)]
struct Case {
    name: String,
    input: Input,
    expect: Expect,
}

impl Case {
    fn new(name: &str, input: Input, expect: Expect) -> Case {
        Case {
            name: name.to_string(),
            input,
            expect,
        }
    }
}

/// Adds a control case: `input` must load.
fn accept(out: &mut Vec<Case>, name: &str, input: Input) {
    out.push(Case::new(name, input, Expect::Accept));
}

/// Adds a case that may load or be refused cleanly.
fn either(out: &mut Vec<Case>, name: &str, input: Input) {
    out.push(Case::new(name, input, Expect::Either));
}

/// Adds a case that must be refused with an error line containing each of `needles`.
fn refuse(out: &mut Vec<Case>, name: &str, input: Input, needles: &[&'static str]) {
    out.push(Case::new(name, input, Expect::Refuse(needles.to_vec())));
}

fn refuse_model(out: &mut Vec<Case>, name: &str, p: &Parts, needles: &[&'static str]) {
    refuse(out, name, Input::Model(p.bytes()), needles);
}

/// A named edit of one metadata key: (case name, key, new value or `None` to remove it, needles).
/// The strings an error message must contain.
type Needles<'a> = &'a [&'static str];
/// A tensor's name and dimensions.
type Shaped = (&'static str, &'static [u64]);
/// Adapters with their scales, as `Session::set_adapters` takes them.
type Stack<'a> = Vec<(&'a Arc<Adapter>, f32)>;

type MetaEdit = (
    &'static str,
    &'static str,
    Option<MetaValue>,
    &'static [&'static str],
);

/// Adds one case per edit of `base` (presented as `input`, named with `prefix`); each must be refused.
fn meta_cases(
    out: &mut Vec<Case>,
    base: &Parts,
    input: fn(Vec<u8>) -> Input,
    prefix: &str,
    edits: Vec<MetaEdit>,
) {
    for (name, key, v, needles) in edits {
        let p = base.with_meta(key, v);
        refuse(out, &format!("{prefix}{name}"), input(p.bytes()), needles);
    }
}

/// Named corruptions of the model: structure, hyper-parameters, tensors, tokenizer.
fn model_cases() -> Vec<Case> {
    use MetaValue as V;
    let mut c = vec![];
    let base = tiny();
    let good = base.bytes();
    let set = |k: &str, v: MetaValue| base.with_meta(k, Some(v));
    accept(&mut c, "valid tiny model", Input::Model(good.clone()));
    // Valid GGUF, but the F32 norm weights then lie at odd offsets: refused (edge-run views them in place).
    refuse_model(
        &mut c,
        "alignment 1",
        &set("general.alignment", V::U32(1)),
        &["output_norm.weight", "aligned"],
    );
    let p = set("general.alignment", V::U32(64));
    accept(&mut c, "alignment 64 (valid)", Input::Model(p.bytes()));
    let p = set("tokenizer.ggml.pre", "no-such-pre-tokenizer".into());
    let name = "unknown pre-tokenizer on a llama vocab (ignored)";
    accept(&mut c, name, Input::Model(p.bytes()));

    let raw = |c: &mut Vec<Case>, name: &str, b: Vec<u8>, needles: &[&'static str]| {
        refuse(c, name, Input::Model(b), needles)
    };
    // Copies of the file with a u32 / u64 written at `at`.
    let with_u32 = |at: usize, v: u32| {
        let mut b = good.clone();
        put_u32(&mut b, at, v);
        b
    };
    let with_u64 = |at: usize, v: u64| {
        let mut b = good.clone();
        put_u64(&mut b, at, v);
        b
    };
    // --- Header and structure (byte surgery).
    let mut b = good.clone();
    b[0..4].copy_from_slice(b"GGUG");
    raw(&mut c, "bad magic", b, &["magic"]);
    raw(&mut c, "empty file", vec![], &["magic"]);
    let st = safetensors(&peft_entries());
    raw(&mut c, "safetensors file as a model", st, &["magic"]);
    for (v, needle) in [
        (1u32, "version"),
        (0, "version"),
        (4, "version"),
        (u32::MAX, "version"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        raw(
            &mut c,
            &format!("version {v:#x}"),
            with_u32(4, v),
            &[needle],
        );
    }
    // Alignment values.
    for (v, name) in [
        (V::U32(0), "0"),
        (V::U32(3), "3"),
        (V::U32(1 << 31), "2^31"),
        (V::U64(1 << 40), "2^40 u64"),
        (V::String("32".into()), "a string"),
        (V::I32(-32), "-32"),
    ] {
        // The writer refuses bad alignments: write 32 and patch the value's bytes / type afterwards.
        let mut p = base.clone();
        p.set("general.alignment", V::U32(32));
        p.set("zz.alignment.prob", v.clone());
        let b = p.bytes();
        // Swap the two keys' names (same length) so general.alignment carries the hostile value.
        let b = patch(&b, b"general.alignment", b"zz.xx.alignment.x");
        let b = patch(&b, b"zz.alignment.prob", b"general.alignment");
        let b = patch(&b, b"zz.xx.alignment.x", b"zz.alignment.prob");
        let name = format!("general.alignment {name}");
        raw(&mut c, &name, b, &["general.alignment"]);
    }
    // Duplicate keys and tensor names: written under a placeholder name of the same length, then
    // patched to the duplicate.
    let dup = |c: &mut Vec<Case>,
               name: &str,
               p: Parts,
               from: &str,
               to: &str,
               needles: &[&'static str]| {
        raw(
            c,
            name,
            patch(&p.bytes(), from.as_bytes(), to.as_bytes()),
            needles,
        )
    };
    let p = base.edited(|p| {
        p.set("zz.dup.key1", V::U32(1))
            .set("zz.dup.key2", V::U32(2));
    });
    let needles = ["duplicate", "zz.dup.key1"];
    dup(
        &mut c,
        "duplicate metadata key",
        p,
        "zz.dup.key2",
        "zz.dup.key1",
        &needles,
    );
    let p = set("llama.block_coun2", V::U32(9));
    dup(
        &mut c,
        "duplicate block_count key",
        p,
        "llama.block_coun2",
        "llama.block_count",
        &[],
    );
    let p = base.edited(|p| {
        p.add_tensor("zz.dup.t1", &[4], QuantType::F32).add_tensor(
            "zz.dup.t2",
            &[4],
            QuantType::F32,
        );
    });
    let needles = ["duplicate", "zz.dup.t1"];
    dup(
        &mut c,
        "duplicate tensor name",
        p,
        "zz.dup.t2",
        "zz.dup.t1",
        &needles,
    );
    let p = base.edited(|p| {
        p.add_tensor("blk.0.attn_q.weighX", &[4], QuantType::F32);
    });
    let (from, to) = ("blk.0.attn_q.weighX", "blk.0.attn_q.weight");
    dup(
        &mut c,
        "duplicate weight name",
        p,
        from,
        to,
        &["duplicate", to],
    );
    // Empty key / tensor name, invalid UTF-8.
    let mut b = set("Z", V::U32(1)).bytes();
    let at = b
        .windows(9)
        .position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'Z'])
        .unwrap();
    put_u64(&mut b, at, 0);
    raw(&mut c, "empty metadata key", b, &["key"]);
    let b = patch(&good, b"general.name", b"general.n\xffme");
    raw(&mut c, "invalid UTF-8 in a key", b, &["UTF-8"]);
    let b = patch(&good, "\u{2581}r".as_bytes(), b"\xc3\x28\x28\x28");
    let needles = ["tokenizer.ggml.tokens", "UTF-8"];
    raw(&mut c, "invalid UTF-8 in a token", b, &needles);
    // Tensor info fields.
    let l = gguf_fields(&good);
    let find = |name: &str| l.tensors.iter().find(|t| t.0 == name).unwrap().clone();
    let (_, nd_at, dims_at, ty_at, off_at) = find("blk.0.attn_q.weight");
    for (v, needle) in [(0u32, "n_dims"), (5, "n_dims"), (u32::MAX, "n_dims")] {
        raw(
            &mut c,
            &format!("n_dims {v}"),
            with_u32(nd_at, v),
            &[needle],
        );
    }
    raw(&mut c, "n_dims 1 (shape shifts)", with_u32(nd_at, 1), &[]);
    for (d, v) in [
        (0, 0u64),
        (1, 0),
        (0, 1 << 63),
        (0, u64::MAX),
        (1, 1 << 40),
        (1, 31),
    ] {
        let b = with_u64(dims_at + 8 * d, v);
        raw(
            &mut c,
            &format!("attn_q dims[{d}] = {v}"),
            b,
            &["blk.0.attn_q.weight"],
        );
    }
    // Element count overflows u64 with dims that are each valid.
    let mut b = with_u64(dims_at, 1 << 32);
    put_u64(&mut b, dims_at + 8, 1 << 32);
    let needles = ["blk.0.attn_q.weight", "dims"];
    raw(&mut c, "attn_q element count overflows", b, &needles);
    for (v, needle) in [
        (4u32, "type"),
        (99, "type"),
        (u32::MAX, "type"),
        (12, "block size"),
        (13, "block size"),
    ] {
        let needles = ["blk.0.attn_q.weight", needle];
        raw(
            &mut c,
            &format!("attn_q type id {v}"),
            with_u32(ty_at, v),
            &needles,
        );
    }
    let (_, _, _, emb_ty, _) = find("token_embd.weight");
    // F16: half the bytes; the next tensor's data is then not where it says. Smaller than its slot:
    // the data is garbage but in range and well-typed (the reader, unlike llama.cpp, does not insist
    // that tensors are packed without gaps).
    let b = with_u32(emb_ty, 1);
    either(&mut c, "token_embd type changed to F16", Input::Model(b));
    either(
        &mut c,
        "attn_q type changed to Q8_0",
        Input::Model(with_u32(ty_at, 8)),
    );
    let old = get_u64(&good, off_at);
    for (v, what, needle) in [
        (old + 1, "misaligned", "offset"),
        (old + 16, "misaligned by 16", "offset"),
        (good.len() as u64, "past the end", "offset"),
        (u64::MAX - 31, "near u64::MAX", "offset"),
        (0, "overlapping token_embd", "overlap"),
    ] {
        raw(
            &mut c,
            &format!("attn_q offset {what}"),
            with_u64(off_at, v),
            &[needle],
        );
    }
    let b = good[..l.info_end + 64].to_vec();
    raw(&mut c, "data section cut off", b, &["offset"]);
    let (n_tensors, n_kv) = (get_u64(&good, 8), get_u64(&good, 16));
    raw(
        &mut c,
        "tensor_count one too many",
        with_u64(8, n_tensors + 1),
        &[],
    );
    raw(&mut c, "kv_count one too many", with_u64(16, n_kv + 1), &[]);
    raw(&mut c, "kv_count one too few", with_u64(16, n_kv - 1), &[]);
    // Metadata value type ids.
    let type_at = l
        .fields
        .iter()
        .find(|f| f.what == "llama.block_count.type")
        .unwrap()
        .at;
    for v in [13u32, 99, u32::MAX, 9, 8] {
        let name = format!("block_count value type {v}");
        raw(&mut c, &name, with_u32(type_at, v), &[]);
    }
    // Arrays nested too deep.
    let mut a = MetaArray::U8(vec![1]);
    for _ in 0..12 {
        a = MetaArray::Array(vec![a]);
    }
    let p = set("zz.deep", V::Array(a));
    refuse_model(&mut c, "arrays nested 13 deep", &p, &["zz.deep"]);
    let mut b = set("zz.bool", V::Bool(true)).bytes();
    let at = b.windows(7).position(|w| w == b"zz.bool").unwrap() + 7 + 4;
    b[at] = 2;
    raw(&mut c, "bool value 2", b, &["zz.bool", "bool"]);

    // --- Architecture and hyper-parameters: one key set (or removed) each.
    #[rustfmt::skip]
    let named: Vec<MetaEdit> = vec![
        ("architecture gpt2", "general.architecture", Some("gpt2".into()), &["architecture"]),
        ("architecture missing", "general.architecture", None, &["general.architecture"]),
        ("architecture is a number", "general.architecture", Some(V::U32(7)), &["general.architecture"]),
        ("architecture empty", "general.architecture", Some("".into()), &["architecture"]),
    ];
    meta_cases(&mut c, &base, Input::Model, "", named);
    #[rustfmt::skip]
    let values: [(&str, MetaValue, &[&'static str]); 57] = [
        ("llama.attention.head_count", V::U32(0), &["head_count"]),
        ("llama.attention.head_count", V::U32(3), &["head_count"]),
        ("llama.attention.head_count", V::U32(64), &["head_count"]),
        ("llama.attention.head_count", V::U64(1 << 33), &["head_count"]),
        ("llama.attention.head_count", V::I32(-4), &["head_count"]),
        ("llama.attention.head_count", V::F32(4.0), &["head_count"]),
        ("llama.attention.head_count", V::String("4".into()), &["head_count"]),
        ("llama.attention.head_count", V::U32(8), &[]), // divides 32, but q/k shapes then differ
        ("llama.attention.head_count_kv", V::U32(0), &["head_count_kv"]),
        ("llama.attention.head_count_kv", V::U32(3), &["head_count_kv"]),
        ("llama.attention.head_count_kv", V::U32(8), &["head_count_kv"]),
        ("llama.attention.head_count_kv", V::U64(u64::MAX), &["head_count_kv"]),
        ("llama.attention.head_count_kv", V::U32(1), &["attn_k"]),
        ("llama.attention.head_count_kv", V::Array(MetaArray::U32(vec![2, 2])), &["head_count_kv"]),
        ("llama.embedding_length", V::U32(0), &["embedding_length"]),
        ("llama.embedding_length", V::U32(31), &[]),
        ("llama.embedding_length", V::U32(64), &[]),
        ("llama.embedding_length", V::U64(1 << 32), &["embedding_length"]),
        ("llama.embedding_length", V::U64(u64::MAX), &["embedding_length"]),
        ("llama.embedding_length", V::I64(-1), &["embedding_length"]),
        ("llama.block_count", V::U32(0), &["block_count"]),
        ("llama.block_count", V::U32(3), &["blk.2"]),
        ("llama.block_count", V::U32(1025), &["block_count"]),
        ("llama.block_count", V::U32(1 << 31), &["block_count"]),
        ("llama.block_count", V::U64(1 << 32), &["block_count"]),
        ("llama.block_count", V::U64(u64::MAX), &["block_count"]),
        ("llama.block_count", V::I8(-1), &["block_count"]),
        ("llama.block_count", V::Bool(true), &["block_count"]),
        ("llama.feed_forward_length", V::U32(0), &["feed_forward_length"]),
        ("llama.feed_forward_length", V::U32(63), &["ffn"]),
        ("llama.feed_forward_length", V::U64(1 << 40), &["feed_forward_length"]),
        ("llama.context_length", V::U32(0), &["context_length"]),
        ("llama.context_length", V::I32(-1), &["context_length"]),
        ("llama.context_length", V::U64(u64::MAX), &["context_length"]),
        ("llama.context_length", V::String("64".into()), &["context_length"]),
        ("llama.rope.dimension_count", V::U32(7), &["rope.dimension_count"]),
        ("llama.rope.dimension_count", V::U32(0), &["rope.dimension_count"]),
        ("llama.rope.dimension_count", V::U32(16), &["rope.dimension_count"]),
        ("llama.rope.dimension_count", V::U64(u64::MAX), &["rope.dimension_count"]),
        ("llama.attention.key_length", V::U32(7), &["key_length"]),
        ("llama.attention.key_length", V::U32(0), &["key_length"]),
        ("llama.attention.key_length", V::U32(4096), &["key_length"]),
        ("llama.attention.key_length", V::U64(1 << 62), &["key_length"]),
        ("llama.attention.key_length", V::U32(16), &[]),
        ("llama.attention.value_length", V::U32(16), &["value_length"]),
        ("llama.attention.value_length", V::U32(0), &["value_length"]),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(f32::NAN), &["epsilon"]),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(-1e-5), &["epsilon"]),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(0.0), &["epsilon"]),
        ("llama.attention.layer_norm_rms_epsilon", V::F64(1e300), &["epsilon"]),
        ("llama.attention.layer_norm_rms_epsilon", V::String("1e-5".into()), &["epsilon"]),
        ("llama.rope.freq_base", V::F32(0.0), &["freq_base"]),
        ("llama.rope.freq_base", V::F32(f32::INFINITY), &["freq_base"]),
        ("llama.rope.freq_base", V::F32(-10000.0), &["freq_base"]),
        ("llama.rope.scaling.type", V::String("yarn".into()), &["rope.scaling.type"]),
        ("llama.rope.scaling.type", V::String("linear".into()), &["rope.scaling.factor"]),
        ("llama.rope.scaling.type", V::U32(1), &["rope.scaling.type"]),
    ];
    for (key, v, needles) in values {
        let name = format!("{key} = {v:?}");
        refuse_model(&mut c, &name, &set(key, v), needles);
    }
    for f in [0.0f32, -2.0, f32::NAN, f32::INFINITY] {
        let p = base.edited(|p| {
            p.set("llama.rope.scaling.type", "linear")
                .set("llama.rope.scaling.factor", V::F32(f));
        });
        let name = format!("rope scaling factor {f}");
        refuse_model(&mut c, &name, &p, &["rope.scaling.factor"]);
    }
    for key in [
        "llama.embedding_length",
        "llama.block_count",
        "llama.attention.head_count",
        "llama.feed_forward_length",
    ] {
        let p = base.with_meta(key, None);
        refuse_model(&mut c, &format!("{key} missing"), &p, &[key]);
    }

    // --- Tensors: missing, wrong shapes, wrong types.
    for name in [
        "token_embd.weight",
        "output_norm.weight",
        "blk.0.attn_norm.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.1.attn_v.weight",
        "blk.1.attn_output.weight",
        "blk.1.ffn_norm.weight",
        "blk.0.ffn_gate.weight",
        "blk.1.ffn_up.weight",
        "blk.1.ffn_down.weight",
    ] {
        let p = base.edited(|p| {
            p.remove_tensor(name);
        });
        refuse_model(&mut c, &format!("missing {name}"), &p, &[name]);
    }
    let e = 32u64;
    for (name, dims, ty) in [
        ("token_embd.weight", vec![e, 47], QuantType::F32),
        ("token_embd.weight", vec![e, 49], QuantType::F32),
        ("token_embd.weight", vec![e, 48, 2], QuantType::F32),
        ("token_embd.weight", vec![e * 48], QuantType::F32),
        ("output_norm.weight", vec![31], QuantType::F32),
        ("output_norm.weight", vec![32], QuantType::F16),
        ("output_norm.weight", vec![32, 2], QuantType::F32),
        ("blk.0.attn_q.weight", vec![e, 16], QuantType::F32),
        ("blk.0.attn_q.weight", vec![16, e], QuantType::F32),
        ("blk.0.attn_q.weight", vec![e, e, 2], QuantType::F32),
        ("blk.0.attn_q.weight", vec![e, e], QuantType::Q8_1),
        ("blk.0.attn_q.weight", vec![e, e], QuantType::BF16),
        ("blk.0.attn_k.weight", vec![e, e], QuantType::F32),
        ("blk.0.attn_v.weight", vec![e, 8], QuantType::F32),
        ("blk.0.attn_output.weight", vec![e, 16], QuantType::F32),
        ("blk.0.ffn_gate.weight", vec![e, 63], QuantType::F32),
        ("blk.0.ffn_up.weight", vec![e, 32], QuantType::F32),
        ("blk.0.ffn_down.weight", vec![e, 64], QuantType::F32),
        ("blk.0.attn_norm.weight", vec![32], QuantType::F16),
        ("blk.1.ffn_norm.weight", vec![64], QuantType::F32),
    ] {
        let label = format!("{name} as {} {dims:?}", ty.name());
        let p = base.edited(|p| {
            p.reshape(name, &dims, ty);
        });
        refuse_model(&mut c, &label, &p, &[name]);
    }
    #[rustfmt::skip]
    let extra: [(&str, &str, &[u64], QuantType); 4] = [
        ("output.weight wrong shape", "output.weight", &[32, 47], QuantType::F32),
        ("output.weight Q8_1 (an activation type, no weight kernel)", "output.weight", &[32, 48], QuantType::Q8_1),
        ("rope_freqs.weight wrong shape", "rope_freqs.weight", &[8], QuantType::F32),
        ("rope_freqs.weight F16", "rope_freqs.weight", &[4], QuantType::F16),
    ];
    for (name, tensor, dims, ty) in extra {
        let p = base.edited(|p| {
            p.add_tensor(tensor, dims, ty);
        });
        refuse_model(&mut c, name, &p, &[tensor]);
    }

    // --- Tokenizer metadata.
    let strings = |t: Vec<String>| Some(V::Array(MetaArray::String(t)));
    let mut spm47 = spm_tokens(48);
    spm47.pop();
    #[rustfmt::skip]
    let named: Vec<MetaEdit> = vec![
        ("tokens missing", "tokenizer.ggml.tokens", None, &["tokenizer.ggml.tokens"]),
        ("tokens empty", "tokenizer.ggml.tokens", strings(vec![]), &["tokenizer.ggml.tokens"]),
        ("tokens not strings", "tokenizer.ggml.tokens", Some(vec![1u32; 48].into()), &["tokenizer.ggml.tokens"]),
        ("tokens a string", "tokenizer.ggml.tokens", Some("abc".into()), &["tokenizer.ggml.tokens"]),
        ("token count 47 ≠ vocab 48", "tokenizer.ggml.tokens", strings(spm47), &["tokenizer.ggml"]),
        ("token count 49 ≠ vocab 48", "tokenizer.ggml.tokens", strings(spm_tokens(49)), &["tokenizer.ggml"]),
        ("scores too short", "tokenizer.ggml.scores", Some(vec![0.0f32; 47].into()), &["tokenizer.ggml.scores"]),
        ("scores strings", "tokenizer.ggml.scores", strings(vec!["0".into(); 48]), &["tokenizer.ggml.scores"]),
        ("scores missing (llama vocab)", "tokenizer.ggml.scores", None, &["tokenizer.ggml.scores"]),
        ("scores f64 overflowing f32", "tokenizer.ggml.scores", Some(vec![1e300f64; 48].into()), &["tokenizer.ggml.scores"]),
        ("token_type too long", "tokenizer.ggml.token_type", Some(vec![1i32; 49].into()), &["tokenizer.ggml.token_type"]),
        ("token_type empty", "tokenizer.ggml.token_type", Some(Vec::<i32>::new().into()), &["tokenizer.ggml.token_type"]),
        ("token_type f32", "tokenizer.ggml.token_type", Some(vec![1.0f32; 48].into()), &["tokenizer.ggml.token_type"]),
        ("token_type u64 too large", "tokenizer.ggml.token_type", Some(vec![1u64 << 40; 48].into()), &["tokenizer.ggml.token_type"]),
    ];
    meta_cases(&mut c, &base, Input::Model, "", named);
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
    ] {
        for (v, label) in [
            (V::U32(48), "48 (= vocab)"),
            (V::U32(u32::MAX), "u32::MAX"),
            (V::U64(1 << 40), "2^40"),
            (V::String("1".into()), "a string"),
            (V::F32(1.0), "f32"),
        ] {
            refuse_model(&mut c, &format!("{key} {label}"), &set(key, v), &[key]);
        }
    }
    #[rustfmt::skip]
    let named: Vec<MetaEdit> = vec![
        ("padding id out of range", "tokenizer.ggml.padding_token_id", Some(V::U32(1000)), &["tokenizer.ggml.padding_token_id"]),
        ("tokenizer model missing", "tokenizer.ggml.model", None, &["tokenizer.ggml.model"]),
        ("tokenizer model bert", "tokenizer.ggml.model", Some("bert".into()), &["tokenizer.ggml.model"]),
        ("add_bos_token not a bool", "tokenizer.ggml.add_bos_token", Some(V::U8(1)), &["tokenizer.ggml.add_bos_token"]),
        ("chat template not a string", "tokenizer.chat_template", Some(V::U32(1)), &["tokenizer.chat_template"]),
    ];
    meta_cases(&mut c, &base, Input::Model, "", named);
    // A gpt2 (BPE) vocab: merges missing / malformed / wrong type.
    let gpt2 = base.edited(|p| {
        set_gpt2_vocab(
            p,
            gpt2_tokens(45, &["\u{120}", "\u{120}a", "ab"]),
            &["\u{120} a", "a b"],
        );
    });
    accept(
        &mut c,
        "valid gpt2 vocab (control)",
        Input::Model(gpt2.bytes()),
    );
    #[rustfmt::skip]
    let named: Vec<MetaEdit> = vec![
        ("gpt2 merges missing", "tokenizer.ggml.merges", None, &["tokenizer.ggml.merges"]),
        ("gpt2 merge without a space", "tokenizer.ggml.merges", Some(vec!["ab"].into()), &["tokenizer.ggml.merges"]),
        ("gpt2 merges not strings", "tokenizer.ggml.merges", Some(vec![1u32, 2].into()), &["tokenizer.ggml.merges"]),
        ("gpt2 merges a string", "tokenizer.ggml.merges", Some("a b".into()), &["tokenizer.ggml.merges"]),
    ];
    meta_cases(&mut c, &gpt2, Input::Model, "", named);
    c
}

/// Named corruptions of adapters.
fn adapter_cases() -> Vec<Case> {
    use MetaValue as V;
    let mut c = vec![];
    let base = gguf_adapter_parts(TINY, 2);
    accept(
        &mut c,
        "valid GGUF adapter",
        Input::GgufAdapter(base.bytes()),
    );
    let valid_peft = Input::peft(&peft_config(), safetensors(&peft_entries()));
    accept(&mut c, "valid PEFT adapter (directory)", valid_peft);
    let cfg_compact = serde_json::to_vec(&peft_config()).unwrap();
    let weights = safetensors(&peft_entries());
    let valid_file = Input::peft_raw(Some(cfg_compact), Some(weights), true);
    accept(&mut c, "valid PEFT adapter (.safetensors file)", valid_file);

    // --- GGUF adapters.
    let prefix = "gguf adapter: ";
    let g = |c: &mut Vec<Case>, name: &str, edit: &dyn Fn(&mut Parts), needles: &[&'static str]| {
        let p = base.edited(edit);
        refuse(
            c,
            &format!("{prefix}{name}"),
            Input::GgufAdapter(p.bytes()),
            needles,
        );
    };
    #[rustfmt::skip]
    let named: Vec<MetaEdit> = vec![
        ("wrong architecture", "general.architecture", Some("gpt2".into()), &["general.architecture"]),
        ("architecture missing", "general.architecture", None, &["general.architecture"]),
        ("general.type model", "general.type", Some("model".into()), &["general.type"]),
        ("general.type missing", "general.type", None, &["general.type"]),
        ("adapter.type ia3", "adapter.type", Some("ia3".into()), &["adapter.type"]),
        ("adapter.type a number", "adapter.type", Some(V::U32(0)), &["adapter.type"]),
        ("alpha negative", "adapter.lora.alpha", Some(V::F32(-1.0)), &["adapter.lora.alpha"]),
        ("alpha NaN", "adapter.lora.alpha", Some(V::F32(f32::NAN)), &["adapter.lora.alpha"]),
        ("alpha a string", "adapter.lora.alpha", Some("16".into()), &["adapter.lora.alpha"]),
        ("unknown adapter key", "adapter.alora.invocation_tokens", Some(vec![1u32].into()), &["adapter.alora.invocation_tokens"]),
    ];
    meta_cases(&mut c, &base, Input::GgufAdapter, prefix, named);
    let (qa, qb) = ("blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b");
    let (va, vb) = ("blk.1.attn_v.weight.lora_a", "blk.1.attn_v.weight.lora_b");
    for (name, tensor, needle) in [
        ("missing lora_b", qb, "blk.0.attn_q.weight"),
        ("missing lora_a", va, "blk.1.attn_v.weight"),
    ] {
        g(
            &mut c,
            name,
            &|p| {
                p.remove_tensor(tensor);
            },
            &[needle],
        );
    }
    // One factor replaced by one of another shape or type.
    #[rustfmt::skip]
    let reshaped: [(&str, &str, &[u64], QuantType, Needles); 7] = [
        ("rank mismatch", qb, &[3, 32], QuantType::F32, &[qb, "rank"]),
        ("rank mismatch on v", va, &[32, 4], QuantType::F32, &["blk.1.attn_v.weight", "rank"]),
        ("n_in mismatch", qa, &[16, 2], QuantType::F32, &[qa]),
        ("n_out mismatch", vb, &[2, 32], QuantType::F32, &["blk.1.attn_v.weight"]),
        ("lora_a 3-D", qa, &[32, 2, 1], QuantType::F32, &[qa]),
        ("lora_b 1-D", qb, &[64], QuantType::F32, &[qb]),
        ("factor type Q4_0", qa, &[32, 2], QuantType::Q4_0, &[qa]),
    ];
    for (name, tensor, dims, ty, needles) in reshaped {
        g(
            &mut c,
            name,
            &|p| {
                p.reshape(tensor, dims, ty);
            },
            needles,
        );
    }
    // F32 tensors added.
    #[rustfmt::skip]
    let added: [(&str, &[Shaped], &'static str); 3] = [
        ("target not in the base", &[("blk.0.attn_x.weight.lora_a", &[32, 2]), ("blk.0.attn_x.weight.lora_b", &[2, 32])], "blk.0.attn_x.weight"),
        ("layer beyond the base", &[("blk.7.attn_q.weight.lora_a", &[32, 2]), ("blk.7.attn_q.weight.lora_b", &[2, 32])], "blk.7.attn_q.weight"),
        ("tensor without a lora suffix", &[("blk.0.attn_q.weight", &[32])], "blk.0.attn_q.weight"),
    ];
    for (name, tensors, needle) in added {
        g(
            &mut c,
            name,
            &|p| {
                for (t, dims) in tensors {
                    p.add_tensor(t, dims, QuantType::F32);
                }
            },
            &[needle],
        );
    }
    g(&mut c, "no tensors", &|p| p.tensors.clear(), &["tensors"]);
    for (label, bad) in [
        ("NaN", f32::NAN),
        ("+Inf", f32::INFINITY),
        ("1e6 (overflows fp16)", 1e6),
    ] {
        g(
            &mut c,
            &format!("{label} in lora_b"),
            &|p| {
                p.tensor(qb).data[20..24].copy_from_slice(&bad.to_le_bytes());
            },
            &[qb],
        );
    }
    g(
        &mut c,
        "NaN in an F16 lora_a",
        &|p| {
            let t = p.tensor(qa);
            t.ty = QuantType::F16;
            t.data = f16_bytes(&uniform_values(64, 0.2, 5));
            t.data[6..8].copy_from_slice(&0x7e00u16.to_le_bytes());
        },
        &[qa],
    );
    g(
        &mut c,
        "the model file as an adapter",
        &|p| *p = tiny(),
        &["general.type"],
    );
    let good = base.bytes();
    let l = gguf_fields(&good);
    let mut b = good.clone();
    let (_, _, _, _, off_at) = l.tensors[1].clone();
    put_u64(&mut b, off_at, get_u64(&good, off_at) + 2);
    let name = "gguf adapter: lora_b offset misaligned";
    refuse(&mut c, name, Input::GgufAdapter(b), &["offset"]);
    let b = b"hello world, not an adapter".to_vec();
    let name = "gguf adapter: not GGUF nor safetensors";
    refuse(&mut c, name, Input::GgufAdapter(b), &["magic"]);
    let name = "gguf adapter: empty file";
    refuse(&mut c, name, Input::GgufAdapter(vec![]), &["magic"]);

    // --- safetensors structure.
    let ents = peft_entries();
    let cfg = peft_config();
    let st = |c: &mut Vec<Case>, name: &str, bytes: Vec<u8>, needles: &[&'static str]| {
        refuse(
            c,
            &format!("safetensors: {name}"),
            Input::peft(&cfg, bytes),
            needles,
        )
    };
    let good_st = safetensors(&ents);
    for v in [
        0u64,
        1,
        7,
        1 << 31,
        1 << 32,
        1 << 63,
        u64::MAX,
        good_st.len() as u64,
        100_000_001,
    ] {
        let mut b = good_st.clone();
        put_u64(&mut b, 0, v);
        st(&mut c, &format!("header length {v}"), b, &["header"]);
    }
    st(
        &mut c,
        "file of 5 bytes",
        vec![1, 0, 0, 0, 0],
        &["header_len"],
    );
    for (label, header, needle) in [
        ("header not JSON", "{not json at all", "header"),
        ("header a JSON array", "[1, 2, 3]", "header"),
        ("header empty object", "{}", "tensors"),
    ] {
        st(&mut c, label, st_raw(header, &[]), &[needle]);
    }
    let mut b = st_raw("{\"a\": 1}", &[]);
    b[10] = 0xff;
    st(&mut c, "header not UTF-8", b, &["header"]);
    type JsonMap = serde_json::Map<String, serde_json::Value>;
    // The valid file with its header edited.
    let hdr = |edit: &dyn Fn(&mut JsonMap)| -> Vec<u8> {
        let n = get_u64(&good_st, 0) as usize;
        let mut v: JsonMap = serde_json::from_slice(&good_st[8..8 + n]).unwrap();
        edit(&mut v);
        st_raw(&serde_json::to_string(&v).unwrap(), &good_st[8 + n..])
    };
    let a0 = format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_A.weight");
    let b0 = format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_B.weight");
    // One field of a tensor's entry set (or removed: `None`).
    #[rustfmt::skip]
    let fields: [(&str, &str, &str, Option<serde_json::Value>, Needles); 15] = [
        ("dtype F64", &a0, "dtype", Some(json!("F64")), &["dtype"]),
        ("dtype I8", &a0, "dtype", Some(json!("I8")), &["dtype"]),
        ("dtype a number", &a0, "dtype", Some(json!(0)), &["dtype"]),
        ("dtype missing", &a0, "dtype", None, &["dtype"]),
        ("shape negative", &a0, "shape", Some(json!([-2, 32])), &["shape"]),
        ("shape float", &a0, "shape", Some(json!([2.5, 32])), &["shape"]),
        ("shape missing", &a0, "shape", Some(json!(null)), &["shape"]),
        ("shape huge", &a0, "shape", Some(json!([u64::MAX, u64::MAX])), &["data_offsets"]),
        ("shape disagrees with the data length", &a0, "shape", Some(json!([2, 16])), &["data_offsets"]),
        ("offsets reversed", &a0, "data_offsets", Some(json!([256, 0])), &["data_offsets"]),
        ("offsets past the end", &a0, "data_offsets", Some(json!([0u64, 1u64 << 40])), &["data_offsets"]),
        ("offsets u64::MAX", &a0, "data_offsets", Some(json!([u64::MAX - 255, u64::MAX])), &["data_offsets"]),
        ("offsets 3 numbers", &a0, "data_offsets", Some(json!([0, 256, 512])), &["data_offsets"]),
        ("offsets negative", &a0, "data_offsets", Some(json!([-256, 0])), &["data_offsets"]),
        ("offsets overlap", &b0, "data_offsets", Some(json!([0, 256])), &["data_offsets"]),
    ];
    for (label, tensor, field, v, needles) in fields {
        let b = hdr(&|m| {
            let entry = m.get_mut(tensor).unwrap().as_object_mut().unwrap();
            match &v {
                Some(v) => entry.insert(field.into(), v.clone()),
                None => entry.remove(field),
            };
        });
        st(&mut c, label, b, needles);
    }
    let b = hdr(&|m| {
        m.insert(a0.clone(), json!([1, 2]));
    });
    st(&mut c, "entry not an object", b, &[]);
    let b = hdr(&|m| {
        m.insert("__metadata__".into(), json!({"format": 1}));
    });
    st(&mut c, "__metadata__ with a number", b, &["__metadata__"]);
    // Gap between tensors / data not ending at the file's end.
    let mut b = good_st.clone();
    b.extend_from_slice(&[0; 8]);
    st(
        &mut c,
        "trailing bytes after the data",
        b,
        &["data_offsets"],
    );
    let b = good_st[..good_st.len() - 4].to_vec();
    st(&mut c, "data cut short", b, &["data_offsets"]);
    let gap = {
        let mut obj = serde_json::Map::new();
        let mut off = 0usize;
        let mut data = vec![];
        for e in &ents {
            obj.insert(e.name.clone(), json!({"dtype": "F32", "shape": e.shape, "data_offsets": [off, off + e.data.len()]}));
            data.extend_from_slice(&e.data);
            data.extend_from_slice(&[0; 4]);
            off += e.data.len() + 4;
        }
        st_raw(&serde_json::to_string(&obj).unwrap(), &data)
    };
    st(&mut c, "gaps between tensors", gap, &["data_offsets"]);
    // Tensor names and shapes.
    let with = |edit: &dyn Fn(&mut Vec<StEntry>)| {
        let mut e = ents.clone();
        edit(&mut e);
        safetensors(&e)
    };
    // Entry `i` replaced by one of another shape (same name).
    let reshaped = |edits: &[(usize, &[usize])]| {
        with(&|e| {
            for &(i, shape) in edits {
                e[i] = st_entry(&e[i].name.clone(), shape, 1);
            }
        })
    };
    // The name of every entry in `idx` with `from` replaced by `to`.
    let renamed = |idx: &[usize], from: &str, to: &str| {
        with(&|e| {
            for &i in idx {
                e[i].name = e[i].name.replace(from, to);
            }
        })
    };
    let magnitude = format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_magnitude_vector");
    #[rustfmt::skip]
    let entries: [(&str, Vec<u8>, &[&'static str]); 13] = [
        ("A 3-D", reshaped(&[(0, &[2, 32, 1])]), &["q_proj.lora_A"]),
        ("B rank 3", reshaped(&[(1, &[32, 3])]), &["rank"]),
        ("A n_in 16", reshaped(&[(0, &[2, 16])]), &["q_proj.lora_A"]),
        ("B n_out 8 on v_proj", reshaped(&[(3, &[8, 2])]), &["v_proj"]),
        ("rank 0", reshaped(&[(0, &[0, 32]), (1, &[32, 0])]), &["rank"]),
        ("missing lora_B", with(&|e| { e.remove(1); }), &["q_proj"]),
        ("name without the PEFT prefix", with(&|e| e[0].name = "model.layers.0.self_attn.q_proj.lora_A.weight".into()), &["base_model.model"]),
        ("DoRA magnitude tensor", with(&|e| e.push(st_entry(&magnitude, &[32], 1))), &["lora_magnitude_vector"]),
        ("unknown module", renamed(&[0, 1], "q_proj", "x_proj"), &["x_proj"]),
        ("layer 9 (base has 2)", renamed(&[0, 1], ".0.", ".9."), &["layers.9"]),
        ("layer 2^64 in the name", renamed(&[0, 1], ".0.", ".18446744073709551616."), &["18446744073709551616"]),
        ("embedding factors on a linear module", renamed(&[0], "lora_A", "lora_embedding_A"), &["q_proj"]),
        ("F16 dtype with F32-sized data", with(&|e| e[0].dtype = "F16".into()), &["data_offsets"]),
    ];
    for (label, b, needles) in entries {
        st(&mut c, label, b, needles);
    }
    for (label, bad) in [
        ("NaN", f32::NAN),
        ("-Inf", f32::NEG_INFINITY),
        ("1e9 (overflows fp16)", 1e9),
    ] {
        let b = with(&|e| {
            e[1].data[8..12].copy_from_slice(&bad.to_le_bytes());
        });
        st(&mut c, &format!("{label} in lora_B"), b, &["q_proj.lora_B"]);
    }
    let b = with(&|e| {
        e[0].dtype = "BF16".into();
        e[0].data = [0x80, 0x7f].repeat(64);
    });
    st(&mut c, "BF16 +Inf in lora_A", b, &["q_proj.lora_A"]);

    // --- adapter_config.json.
    let cf = |c: &mut Vec<Case>, name: &str, input: Input, needles: &[&'static str]| {
        refuse(c, &format!("adapter_config: {name}"), input, needles)
    };
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    // (label, input, needle): a missing file is named.
    #[rustfmt::skip]
    let files = [
        ("missing", Input::peft_raw(None, Some(good_st.clone()), false), "adapter_config.json"),
        ("missing (file argument)", Input::peft_raw(None, Some(good_st.clone()), true), "adapter_config.json"),
        ("weights missing", Input::peft_raw(Some(cfg_bytes), None, false), "adapter_model.safetensors"),
    ];
    for (label, input, needle) in files {
        cf(&mut c, label, input, &[needle]);
    }
    for (label, text) in [
        ("empty", ""),
        ("not JSON", "{\"peft_type\": LORA}"),
        ("a JSON array", "[]"),
    ] {
        cf(
            &mut c,
            label,
            Input::peft_cfg_text(text),
            &["adapter_config.json"],
        );
    }
    let not_utf8 = b"{\"peft_type\": \"LO\xffRA\"}".to_vec();
    let input = Input::peft_raw(Some(not_utf8), Some(good_st.clone()), false);
    cf(&mut c, "not UTF-8", input, &["UTF-8"]);
    // One field of the config set (or removed: `None`).
    let edit = |k: &str, v: Option<serde_json::Value>| {
        let mut cfg = cfg.clone();
        let m = cfg.as_object_mut().unwrap();
        match v {
            Some(v) => m.insert(k.into(), v),
            None => m.remove(k),
        };
        Input::peft(&cfg, good_st.clone())
    };
    #[rustfmt::skip]
    let config_fields: [(&str, &str, Option<serde_json::Value>, &[&'static str]); 31] = [
        ("peft_type missing", "peft_type", None, &["peft_type"]),
        ("peft_type IA3", "peft_type", Some(json!("IA3")), &["peft_type"]),
        ("peft_type a number", "peft_type", Some(json!(1)), &["peft_type"]),
        ("r a string", "r", Some(json!("2")), &["r"]),
        ("r negative", "r", Some(json!(-2)), &["r"]),
        ("r 0", "r", Some(json!(0)), &["r"]),
        ("r 8 but tensors have rank 2", "r", Some(json!(8)), &["rank"]),
        ("r 2^64", "r", Some(json!(1.8446744073709552e19)), &["r"]),
        ("lora_alpha a string", "lora_alpha", Some(json!("4")), &["lora_alpha"]),
        ("use_rslora a string", "use_rslora", Some(json!("yes")), &["use_rslora"]),
        ("use_dora true", "use_dora", Some(json!(true)), &["use_dora"]),
        ("bias all", "bias", Some(json!("all")), &["bias"]),
        ("modules_to_save norm", "modules_to_save", Some(json!(["model.norm"])), &["modules_to_save", "model.norm"]),
        ("init_lora_weights pissa", "init_lora_weights", Some(json!("pissa")), &["init_lora_weights"]),
        ("unknown field", "some_future_option", Some(json!(3)), &["some_future_option"]),
        ("target_modules missing", "target_modules", None, &["target_modules"]),
        ("target_modules a number", "target_modules", Some(json!(5)), &["target_modules"]),
        ("target_modules list of numbers", "target_modules", Some(json!([1, 2])), &["target_modules"]),
        ("target_modules bad regex", "target_modules", Some(json!("(q_proj")), &["target_modules"]),
        ("target_modules unknown module", "target_modules", Some(json!(["q_proj", "v_proj", "rotary"])), &["target_modules"]),
        ("target_modules does not select v_proj", "target_modules", Some(json!(["q_proj"])), &["target_modules"]),
        ("exclude_modules excludes q_proj", "exclude_modules", Some(json!(["q_proj"])), &["exclude_modules"]),
        ("layers_to_transform [1]", "layers_to_transform", Some(json!([1])), &["layers_to_transform"]),
        ("layers_to_transform [-1]", "layers_to_transform", Some(json!([-1])), &["layers_to_transform"]),
        ("layers_to_transform a string", "layers_to_transform", Some(json!("0")), &["layers_to_transform"]),
        ("layers_pattern other", "layers_pattern", Some(json!("h")), &["layers_pattern"]),
        ("rank_pattern value a string", "rank_pattern", Some(json!({"q_proj": "2"})), &["rank_pattern"]),
        ("rank_pattern says 4", "rank_pattern", Some(json!({"q_proj": 4})), &["rank_pattern"]),
        ("rank_pattern bad regex", "rank_pattern", Some(json!({"q_proj[": 2})), &["rank_pattern"]),
        ("rank_pattern a list", "rank_pattern", Some(json!([2])), &["rank_pattern"]),
        ("alpha_pattern negative", "alpha_pattern", Some(json!({"q_proj": -1})), &["alpha_pattern"]),
    ];
    for (label, key, v, needles) in config_fields {
        cf(&mut c, label, edit(key, v), needles);
    }
    // A backtracking-heavy pattern that matches no module: harmless.
    let input = edit("alpha_pattern", Some(json!({"(a+)+$": 1})));
    either(
        &mut c,
        "adapter_config: alpha_pattern catastrophic regex",
        input,
    );
    c
}

/// Replaced modules (PEFT `modules_to_save`, GGUF `<target>.replace`) on TINY (tied head).
fn saved_module_cases() -> Vec<Case> {
    let mut c = vec![];
    let head = "base_model.model.lm_head.weight";
    let embed = "base_model.model.model.embed_tokens.weight";
    let (v, e) = (TINY.vocab, TINY.embd);
    // PEFT: LoRA entries plus `extra`, config with `modules_to_save` = `saved`.
    let peft = |saved: serde_json::Value, extra: StEntry| {
        let mut cfg = peft_config();
        cfg["modules_to_save"] = saved;
        let mut entries = peft_entries();
        entries.push(extra);
        Input::peft(&cfg, safetensors(&entries))
    };
    let with_values = |name: &str, shape: &[usize], f: &dyn Fn(&mut Vec<f32>)| {
        let mut vals = uniform_values(shape.iter().product(), 0.2, 31);
        f(&mut vals);
        StEntry {
            name: name.into(),
            dtype: "F32".into(),
            shape: shape.to_vec(),
            data: f32_bytes(&vals),
        }
    };
    let p = "modules_to_save: ";
    accept(
        &mut c,
        &format!("{p}valid lm_head"),
        peft(json!(["lm_head"]), st_entry(head, &[v, e], 31)),
    );
    accept(
        &mut c,
        &format!("{p}valid embed_tokens"),
        peft(json!(["embed_tokens"]), st_entry(embed, &[v, e], 31)),
    );
    #[rustfmt::skip]
    let bad: Vec<(&str, serde_json::Value, StEntry, &[&'static str])> = vec![
        ("lm_head one column short", json!(["lm_head"]), st_entry(head, &[v, e - 1], 31), &["lm_head", "shape"]),
        ("lm_head one row short", json!(["lm_head"]), st_entry(head, &[v - 1, e], 31), &["lm_head", "shape"]),
        ("lm_head transposed", json!(["lm_head"]), st_entry(head, &[e, v], 31), &["lm_head", "shape"]),
        ("lm_head 1-D", json!(["lm_head"]), st_entry(head, &[v * e], 31), &["lm_head", "2-D"]),
        ("embed_tokens 3-D", json!(["embed_tokens"]), st_entry(embed, &[1, v, e], 31), &["embed_tokens", "2-D"]),
        ("lm_head NaN", json!(["lm_head"]), with_values(head, &[v, e], &|x| x[77] = f32::NAN), &["lm_head", "NaN"]),
        ("embed_tokens Inf", json!(["embed_tokens"]), with_values(embed, &[v, e], &|x| x[5] = f32::INFINITY), &["embed_tokens", "inf"]),
        ("lm_head overflows fp16", json!(["lm_head"]), with_values(head, &[v, e], &|x| x[3] = 1e6), &["lm_head", "fp16"]),
        ("lm_head not listed", serde_json::Value::Null, st_entry(head, &[v, e], 31), &["lm_head", "modules_to_save"]),
        ("norm listed", json!(["norm"]), st_entry("base_model.model.model.norm.weight", &[e], 31), &["modules_to_save", "norm"]),
        ("a layer listed", json!(["q_proj"]), st_entry(head, &[v, e], 31), &["modules_to_save", "q_proj"]),
        ("not a list", json!("lm_head"), st_entry(head, &[v, e], 31), &["modules_to_save", "list"]),
    ];
    for (name, saved, extra, needles) in bad {
        refuse(&mut c, &format!("{p}{name}"), peft(saved, extra), needles);
    }
    // A LoRA on the replaced head as well.
    let mut cfg = peft_config();
    cfg["modules_to_save"] = json!(["lm_head"]);
    cfg["target_modules"] = json!(["q_proj", "v_proj", "lm_head"]);
    let mut entries = peft_entries();
    entries.push(st_entry(head, &[v, e], 31));
    entries.push(st_entry(
        "base_model.model.lm_head.lora_A.weight",
        &[2, e],
        32,
    ));
    entries.push(st_entry(
        "base_model.model.lm_head.lora_B.weight",
        &[v, 2],
        33,
    ));
    let input = Input::peft(&cfg, safetensors(&entries));
    refuse(
        &mut c,
        &format!("{p}lm_head replaced and LoRA-adapted"),
        input,
        &["output.weight", "both"],
    );
    // GGUF adapters.
    let base = gguf_adapter_parts(TINY, 2);
    let (v, e) = (v as u64, e as u64);
    let g = |c: &mut Vec<Case>,
             name: &str,
             t: &str,
             dims: &[u64],
             ty: QuantType,
             needles: &[&'static str]| {
        let p = base.edited(|p| {
            p.add_tensor(t, dims, ty);
        });
        refuse(
            c,
            &format!("gguf replace: {name}"),
            Input::GgufAdapter(p.bytes()),
            needles,
        );
    };
    let ok = base.edited(|p| {
        p.add_tensor("output.weight.replace", &[e, v], QuantType::F16);
    });
    accept(
        &mut c,
        "gguf replace: valid output.weight",
        Input::GgufAdapter(ok.bytes()),
    );
    g(
        &mut c,
        "transposed",
        "output.weight.replace",
        &[v, e],
        QuantType::F16,
        &["output.weight.replace", "shape"],
    );
    g(
        &mut c,
        "1-D",
        "token_embd.weight.replace",
        &[v * e],
        QuantType::F16,
        &["token_embd.weight.replace", "2-D"],
    );
    g(
        &mut c,
        "a layer",
        "blk.0.attn_q.weight.replace",
        &[e, e],
        QuantType::F16,
        &["blk.0.attn_q.weight", "only the embedding"],
    );
    g(
        &mut c,
        "Q4_0",
        "output.weight.replace",
        &[e, v],
        QuantType::Q4_0,
        &["output.weight.replace", "Q4_0"],
    );
    let mut nan = ok.clone();
    let t = nan
        .tensors
        .iter_mut()
        .find(|t| t.name == "output.weight.replace")
        .unwrap();
    t.data[40..42].copy_from_slice(&half::f16::NAN.to_bits().to_le_bytes());
    refuse(
        &mut c,
        "gguf replace: NaN",
        Input::GgufAdapter(nan.bytes()),
        &["output.weight.replace", "NaN"],
    );
    c
}

/// Truncations and integer sweeps of the model and adapters.
fn generated_cases() -> Vec<Case> {
    let mut c = vec![];
    let good = tiny().bytes();
    let l = gguf_fields(&good);
    truncations(&good, "model", &mut c, Input::Model(vec![]), Some(&l));
    sweeps(&good, "model", &mut c, Input::Model(vec![]));
    let ad = gguf_adapter_parts(TINY, 2).bytes();
    let la = gguf_fields(&ad);
    truncations(
        &ad,
        "gguf adapter",
        &mut c,
        Input::GgufAdapter(vec![]),
        Some(&la),
    );
    sweeps(&ad, "gguf adapter", &mut c, Input::GgufAdapter(vec![]));
    let st = safetensors(&peft_entries());
    let peft = Input::peft(&peft_config(), vec![]);
    truncations(&st, "safetensors", &mut c, peft, None);
    // Every byte of the safetensors header length, and single-byte corruptions of its JSON.
    let n = get_u64(&st, 0) as usize;
    for i in (8..8 + n).step_by(7) {
        for v in [b'"', b'}', b'9', 0] {
            let mut b = st.clone();
            if b[i] == v {
                continue;
            }
            b[i] = v;
            let name = format!("safetensors header byte {i} = {v:#x}");
            either(&mut c, &name, Input::peft(&peft_config(), b));
        }
    }
    c
}

fn all_cases() -> Vec<Case> {
    let mut c = model_cases();
    c.extend(adapter_cases());
    c.extend(saved_module_cases());
    c.extend(generated_cases());
    c.extend(state_cases());
    c
}

/// The generation flags of a state case (before `--prompt-cache FILE`); [`state_session`] is the
/// session they make.
const STATE_ARGS: [&str; 9] = [
    "-p",
    "hello world",
    "-n",
    "1",
    "--temp",
    "0",
    "-c",
    "64",
    "--quiet",
];

fn state_session(model: Arc<Model>) -> Session {
    let cfg = SessionConfig {
        n_ctx: 64,
        n_threads: 1,
        ..Default::default()
    };
    Session::new(model, cfg).unwrap()
}

/// Saved prompt states of the tiny model: the valid one, truncations, every bit 0 and 7 of the bytes
/// before the logits flipped (refused by the checksum), and every length and count swept with the
/// checksum recomputed (refused by the field checks or as another model).
fn state_cases() -> Vec<Case> {
    use common::state_file::{layout, resealed};
    let (dir, model_path) = scratch_with_tiny("state-src");
    let model = Arc::new(Model::open(&model_path).unwrap());
    let mut s = state_session(model.clone());
    s.eval(&[1, 5, 9, 13, 17, 21]).unwrap();
    let mut good = Vec::new();
    s.save_state_to(&mut good, b"app").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = vec![];
    accept(&mut c, "valid state", Input::State(good.clone()));
    truncations(&good, "state", &mut c, Input::State(vec![]), None);
    let hp = &model.hp;
    let lay = layout(&good, hp.n_layer, 4 * hp.kv_dim(), hp.n_vocab);
    for i in 0..lay.context_end {
        for bit in [0, 7] {
            let mut b = good.clone();
            b[i] ^= 1 << bit;
            let name = format!("state byte {i} bit {bit} flipped");
            let field = match i {
                0..8 => "magic",
                8..12 => "version",
                _ => "checksum",
            };
            refuse(&mut c, &name, Input::State(b), &[field]);
        }
    }
    for &(field, at) in &lay.lengths {
        for v in SWEEP64 {
            let mut b = good.clone();
            if get_u64(&b, at) == v {
                continue;
            }
            put_u64(&mut b, at, v);
            let name = format!("state sweep {field} = {v}");
            match field {
                "model.n_layer" | "model.kv_dim" | "model.n_vocab" => {
                    refuse(&mut c, &name, Input::State(resealed(b)), &["the model"])
                }
                _ => either(&mut c, &name, Input::State(resealed(b))),
            }
        }
    }
    c
}

// ---------------------------------------------------------------------------------------------------
// Running the CLI.

const BIN: &str = env!("CARGO_BIN_EXE_edge-run");

struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    secs: f64,
    timed_out: bool,
}

/// Runs edge-run with `args` under `ulimit -v 2 GiB`, killing it after `limit`.
fn run_limited(args: &[&std::ffi::OsStr], dir: &Path, limit: Duration) -> Run {
    use std::os::unix::process::ExitStatusExt;
    let out = std::fs::File::create(dir.join("stdout")).unwrap();
    let err_path = dir.join("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2097152 || exit 97; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .env_remove("EDGE_RUN_LOG")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn sh");
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let secs = t0.elapsed().as_secs_f64();
    assert_ne!(status.code(), Some(97), "ulimit -v failed in sh");
    Run {
        code: status.code(),
        signal: status.signal(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        secs,
        timed_out,
    }
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-run-hostile-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh scratch directory holding the tiny model: (directory, model path).
fn scratch_with_tiny(tag: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(tag);
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, tiny().bytes()).unwrap();
    (dir, model)
}

/// Writes a case's files into `dir`; returns the path to name and the CLI arguments after `info`.
fn materialize(input: &Input, dir: &Path, base_model: &Path) -> (PathBuf, Vec<std::ffi::OsString>) {
    match input {
        Input::Model(b) => {
            let p = dir.join("model.gguf");
            std::fs::write(&p, b).unwrap();
            (p.clone(), vec!["-m".into(), p.into()])
        }
        Input::GgufAdapter(b) => {
            let p = dir.join("adapter.gguf");
            std::fs::write(&p, b).unwrap();
            (
                p.clone(),
                vec!["-m".into(), base_model.into(), "--adapter".into(), p.into()],
            )
        }
        Input::State(b) => {
            let p = dir.join("prompt.state");
            std::fs::write(&p, b).unwrap();
            let mut args: Vec<std::ffi::OsString> = vec!["-m".into(), base_model.into()];
            args.extend(STATE_ARGS.iter().map(|&a| a.into()));
            args.extend(["--prompt-cache".into(), p.clone().into()]);
            (p, args)
        }
        Input::Peft {
            config,
            weights,
            file_arg,
        } => {
            let ad = dir.join("peft");
            std::fs::create_dir_all(&ad).unwrap();
            if let Some(cfg) = config {
                std::fs::write(ad.join("adapter_config.json"), cfg).unwrap();
            }
            let st = ad.join("adapter_model.safetensors");
            if let Some(w) = weights {
                std::fs::write(&st, w).unwrap();
            }
            let arg = if *file_arg { st } else { ad.clone() };
            (
                ad,
                vec![
                    "-m".into(),
                    base_model.into(),
                    "--adapter".into(),
                    arg.into(),
                ],
            )
        }
    }
}

/// What is wrong with this outcome, if anything.
fn judge(case: &Case, r: &Run, named: &Path) -> Option<String> {
    if r.timed_out {
        return Some(format!("did not finish in {:.1} s", r.secs));
    }
    if let Some(s) = r.signal {
        return Some(format!("killed by signal {s}"));
    }
    if r.stderr.contains("panicked")
        || r.stderr.contains("internal error")
        || r.stderr.contains("RUST_BACKTRACE")
    {
        return Some(format!("panicked: {}", r.stderr.trim()));
    }
    let code = r.code.unwrap_or(-1);
    let refuse: &[&str] = match &case.expect {
        Expect::Accept => {
            return (code != 0)
                .then(|| format!("valid input refused (exit {code}): {}", r.stderr.trim()));
        }
        Expect::Either if code == 0 => return None,
        Expect::Either => &[][..],
        Expect::Refuse(n) => n,
    };
    if code != 1 && code != 2 {
        return Some(format!(
            "exit status {code}, expected 1 or 2; stderr: {}",
            r.stderr.trim()
        ));
    }
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("edge-run: error: "))
        .collect();
    let others: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            !l.starts_with("edge-run: error: ")
                && !l.starts_with("edge-run: warn: ")
                && !l.starts_with("Try 'edge-run --help'")
        })
        .collect();
    if errors.len() != 1 || !others.is_empty() {
        return Some(format!(
            "expected exactly one error line on stderr, got: {:?}",
            r.stderr
        ));
    }
    let msg = errors[0];
    let name = named.display().to_string();
    if !msg.contains(&name) {
        return Some(format!("error does not name the file {name}: {msg}"));
    }
    // Something more specific than the file name: a field, a tensor, a key or an offset.
    if refuse.is_empty()
        && !(msg.contains("field `")
            || msg.contains("unsupported:")
            || msg.contains("tensor")
            || msg.contains("metadata")
            || msg.contains("No such file"))
    {
        return Some(format!("error names no field: {msg}"));
    }
    for n in refuse {
        if !msg.contains(n) {
            return Some(format!("error does not mention `{n}`: {msg}"));
        }
    }
    None
}

#[test]
fn hostile_corpus_is_refused_cleanly_by_the_cli() {
    let cases = all_cases();
    let (root, base_model) = scratch_with_tiny("cli");
    let next = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    let stats = std::sync::Mutex::new((0usize, 0usize, 0usize, 0.0f64)); // accepted, refused, cases, max secs
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 2);
    std::thread::scope(|s| {
        for w in 0..workers {
            let (cases, next, failures, stats, root, base_model) =
                (&cases, &next, &failures, &stats, &root, &base_model);
            s.spawn(move || {
                let dir = root.join(format!("w{w}"));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir).unwrap();
                    let (named, mut args) = materialize(&case.input, &dir, base_model);
                    if !matches!(case.input, Input::State(_)) {
                        args.insert(0, "info".into());
                    }
                    let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
                    let r = run_limited(&argv, &dir, Duration::from_secs(10));
                    if std::env::var_os("HOSTILE_SHOW").is_some() {
                        println!(
                            "[{i}] {} -> exit {:?}: {}",
                            case.name,
                            r.code,
                            r.stderr.trim()
                        );
                    }
                    if let Some(why) = judge(case, &r, &named) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("[{i}] {}: {why}", case.name));
                    }
                    let mut st = stats.lock().unwrap();
                    if r.code == Some(0) {
                        st.0 += 1;
                    } else {
                        st.1 += 1;
                    }
                    st.2 += 1;
                    st.3 = st.3.max(r.secs);
                }
            });
        }
    });
    let (acc, rej, n, max) = *stats.lock().unwrap();
    println!("hostile corpus: {n} cases through the CLI, {rej} refused, {acc} accepted, slowest {max:.3} s");
    let f = failures.into_inner().unwrap();
    if f.is_empty() {
        let _ = std::fs::remove_dir_all(&root);
    }
    assert!(
        f.is_empty(),
        "{} of {n} cases failed:\n{}",
        f.len(),
        f.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(n > 1500, "corpus unexpectedly small: {n}");
    assert!(acc >= 6, "the control cases must load");
}

#[test]
fn refusing_a_small_hostile_file_allocates_under_1_mib() {
    let cases = all_cases();
    let (root, model_path) = scratch_with_tiny("heap");
    let model = Model::open(&model_path).expect("valid tiny model");
    let mut sess = state_session(Arc::new(Model::open(&model_path).unwrap()));
    let mut worst = (0usize, String::new());
    let mut failures = vec![];
    let mut refused = 0;
    for (i, case) in cases.iter().enumerate() {
        let dir = root.join("case");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (_, args) = materialize(&case.input, &dir, &model_path);
        let target = PathBuf::from(args.last().unwrap());
        let run = || -> Result<(), String> {
            match &case.input {
                Input::Model(_) => Model::open(&target).map(|_| ()).map_err(|e| e.to_string()),
                Input::State(_) => sess
                    .load_state(&target)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                _ => Adapter::load(&target, &model.base_info)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            }
        };
        let (r, peak) = peak_heap(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)));
        match (&r, &case.expect) {
            (Err(_), _) => failures.push(format!("[{i}] {}: panicked in process", case.name)),
            (Ok(Ok(())), Expect::Refuse(_)) => failures.push(format!(
                "[{i}] {}: loaded in process but must be refused",
                case.name
            )),
            (Ok(Err(e)), Expect::Accept) => failures.push(format!(
                "[{i}] {}: control refused in process: {e}",
                case.name
            )),
            _ => {}
        }
        if let Ok(Err(_)) = r {
            refused += 1;
            if peak > worst.0 {
                worst = (peak, case.name.clone());
            }
            if peak >= 1 << 20 {
                failures.push(format!(
                    "[{i}] {}: refusing it allocated {peak} bytes (≥ 1 MiB)",
                    case.name
                ));
            }
        }
    }
    println!(
        "in process: {refused} of {} refused; largest peak heap while refusing: {} bytes ({})",
        cases.len(),
        worst.0,
        worst.1
    );
    let _ = std::fs::remove_dir_all(&root);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(worst.0 > 0, "the allocation counter counted nothing");
}

#[test]
fn the_counting_allocator_counts() {
    let (v, peak) = peak_heap(|| vec![1u8; 3 << 20]);
    assert_eq!(v.len(), 3 << 20);
    assert!(peak >= 3 << 20, "peak {peak}");
}

// ---------------------------------------------------------------------------------------------------
// Request-level faults.

fn session_cfg() -> SessionConfig {
    SessionConfig {
        n_ctx: 16,
        n_batch: 4,
        n_threads: 1,
        max_rank: 4,
        ..Default::default()
    }
}

fn load_adapter(dir: &Path, name: &str, p: &Parts, model: &Model) -> Arc<Adapter> {
    let path = dir.join(name);
    std::fs::write(&path, p.bytes()).unwrap();
    Arc::new(Adapter::load(&path, &model.base_info).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn active(s: &Session) -> Vec<(usize, f32)> {
    s.applied_adapters()
        .iter()
        .map(|(a, sc)| (Arc::as_ptr(a) as usize, *sc))
        .collect()
}
fn published(s: &Session) -> Vec<(usize, f32)> {
    s.adapter_control()
        .get()
        .iter()
        .map(|(a, sc)| (Arc::as_ptr(a) as usize, *sc))
        .collect()
}

#[test]
fn bad_requests_are_refused_and_leave_the_session_usable() {
    let (dir, mp) = scratch_with_tiny("session");
    let model = Arc::new(Model::open(&mp).unwrap());
    let nv = model.hp.n_vocab;
    assert_eq!(nv, TINY.vocab);
    let toks = [1u32, 5, 9, 30];

    let mut fresh = Session::new(model.clone(), session_cfg()).unwrap();
    let want: Vec<f32> = fresh.eval(&toks).unwrap().to_vec();
    assert!(want.iter().all(|x| x.is_finite()));

    let mut s = Session::new(model.clone(), session_cfg()).unwrap();
    // Token ids out of range, anywhere in the request.
    for bad in [
        vec![nv as u32],
        vec![1, 2, nv as u32 + 7],
        vec![u32::MAX],
        vec![3, u32::MAX, 4],
    ] {
        let e = s
            .eval(&bad)
            .expect_err("token id ≥ vocabulary must be refused")
            .to_string();
        assert!(
            e.contains("token id") && e.contains(&format!("{nv}")),
            "{e}"
        );
        assert_eq!(s.n_past(), 0, "a refused request changed the context");
    }
    // Longer than the context; empty.
    let long: Vec<u32> = (0..17).map(|i| i % nv as u32).collect();
    let e = s
        .eval(&long)
        .expect_err("17 tokens in a 16-token context")
        .to_string();
    assert!(e.contains("context"), "{e}");
    assert!(s.eval(&[]).is_err());
    assert_eq!(s.n_past(), 0);
    let got = s.eval(&toks).unwrap().to_vec();
    assert_eq!(
        got, want,
        "after refused requests the session computes something else"
    );
    // Fill the context, then one more token is refused and the state is kept.
    let rest: Vec<u32> = (0..12).map(|i| (i * 7 % nv) as u32).collect();
    s.eval(&rest).unwrap();
    assert_eq!(s.n_past(), 16);
    assert!(s.eval(&[3]).is_err());
    assert_eq!(s.n_past(), 16);
    s.truncate(4);
    let again = s.eval(&rest).unwrap().to_vec();
    s.reset();
    s.eval(&toks).unwrap();
    let full: Vec<f32> = s.eval(&rest).unwrap().to_vec();
    assert_eq!(again, full, "truncate after a refused request");
    // logits_all is required by eval_each.
    assert!(s.eval_each(&toks, |_, _| {}).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failed_adapter_loads_and_swaps_leave_the_active_set_unchanged() {
    let (dir, mp) = scratch_with_tiny("swap");
    let model = Arc::new(Model::open(&mp).unwrap());
    let good = load_adapter(&dir, "good.gguf", &gguf_adapter_parts(TINY, 2), &model);
    let toks = [1u32, 7, 8, 9];

    let mut base = Session::new(model.clone(), session_cfg()).unwrap();
    let base_logits = base.eval(&toks).unwrap().to_vec();
    let mut with = Session::new(model.clone(), session_cfg()).unwrap();
    with.set_adapters(&[(&good, 1.0)]).unwrap();
    let want = with.eval(&toks).unwrap().to_vec();
    assert_ne!(want, base_logits, "the test adapter must change the output");

    let mut s = Session::new(model.clone(), session_cfg()).unwrap();
    s.set_adapters(&[(&good, 1.0)]).unwrap();
    s.eval(&toks).unwrap();
    let before = (active(&s), published(&s));
    assert_eq!(before.0.len(), 1);

    // Rank above the session's max_rank (4).
    let big = load_adapter(&dir, "rank8.gguf", &gguf_adapter_parts(TINY, 8), &model);
    // An adapter for a wider model (validated against that model's BaseInfo, so it loads).
    let wide_dims = Dims {
        embd: 64,
        head: 8,
        head_kv: 4,
        ff: 128,
        ..TINY
    };
    let wide_path = dir.join("wide.gguf");
    std::fs::write(&wide_path, model_parts(wide_dims, QuantType::F32).bytes()).unwrap();
    let wide_model = Model::open(&wide_path).unwrap();
    let wide = load_adapter(
        &dir,
        "wide-adapter.gguf",
        &gguf_adapter_parts(wide_dims, 2),
        &wide_model,
    );
    let nine: Stack = (0..9).map(|_| (&good, 0.5)).collect();
    let attempts: Vec<(&str, Stack)> = vec![
        ("rank 8 > max 4", vec![(&good, 1.0), (&big, 1.0)]),
        ("shapes of another model", vec![(&wide, 1.0)]),
        ("NaN scale", vec![(&good, f32::NAN)]),
        ("infinite scale", vec![(&good, f32::INFINITY), (&good, 1.0)]),
        ("nine adapters", nine),
    ];
    for (what, set) in attempts {
        let e = s.set_adapters(&set).expect_err(what);
        assert!(!e.to_string().is_empty());
        assert_eq!(published(&s), before.1, "{what}: the published set changed");
        s.reset();
        let got = s.eval(&toks).unwrap().to_vec();
        assert_eq!(active(&s), before.0, "{what}: the applied set changed");
        assert_eq!(
            got, want,
            "{what}: the session computes something else afterwards"
        );
    }
    // A failed load never reaches the session.
    let bad_path = dir.join("bad.gguf");
    let mut bp = gguf_adapter_parts(TINY, 2);
    bp.remove_tensor("blk.0.attn_q.weight.lora_b");
    std::fs::write(&bad_path, bp.bytes()).unwrap();
    assert!(Adapter::load(&bad_path, &model.base_info).is_err());
    s.reset();
    assert_eq!(s.eval(&toks).unwrap().to_vec(), want);
    assert_eq!(active(&s), before.0);
    // Swapping to the empty set still works and gives the base output.
    s.set_adapters(&[]).unwrap();
    s.reset();
    assert_eq!(s.eval(&toks).unwrap().to_vec(), base_logits);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_request_faults() {
    let (dir, mp) = scratch_with_tiny("cli-req");
    let bad_ad = dir.join("bad-adapter.gguf");
    let mut bp = gguf_adapter_parts(TINY, 2);
    bp.reshape("blk.0.attn_q.weight.lora_b", &[3, 32], QuantType::F32);
    std::fs::write(&bad_ad, bp.bytes()).unwrap();
    let out = dir.join("out.npy");
    // Command lines, split at spaces; MODEL, OUT and BAD stand for the tiny model, the output file
    // and the bad adapter.
    let argv = |line: &str| -> Vec<std::ffi::OsString> {
        let path = |p: &Path| p.as_os_str().to_owned();
        line.split(' ')
            .map(|w| match w {
                "MODEL" => path(&mp),
                "OUT" => path(&out),
                "BAD" => path(&bad_ad),
                w => w.into(),
            })
            .collect()
    };
    #[rustfmt::skip]
    let cases = [
        ("logits -m MODEL --tokens 1,2,48 -o OUT", "48"),
        ("logits -m MODEL --tokens 1,-2 -o OUT", "--tokens"),
        ("logits -m MODEL --tokens 99999999999 -o OUT", "--tokens"),
        ("-m MODEL -p abcdefghijklmnop -c 4 -n 1 --temp 0", "context"),
        ("-m MODEL -p ab -n 1 --adapter BAD", "bad-adapter.gguf"),
        ("-m MODEL -p ab -n 1 -c 0", "ctx-size"),
        ("-m MODEL -p ab -n 1 --temp nan", "temp"),
        ("-m MODEL -p ab -n 1 --adapter BAD --adapter /nonexistent/x.gguf", "bad-adapter.gguf"),
    ];
    let run = |line: &str| {
        let args = argv(line);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        run_limited(&args, &dir, Duration::from_secs(20))
    };
    let mut failures = vec![];
    for (args, needle) in cases {
        let r = run(args);
        let ok = !r.timed_out
            && r.signal.is_none()
            && matches!(r.code, Some(1) | Some(2))
            && !r.stderr.contains("panicked")
            && r.stderr
                .lines()
                .any(|l| l.starts_with("edge-run: error: ") && l.contains(needle));
        if !ok {
            failures.push(format!(
                "{args}: exit {:?} signal {:?}: {}",
                r.code,
                r.signal,
                r.stderr.trim()
            ));
        }
    }
    assert!(
        !out.exists(),
        "a refused logits request left an output file"
    );
    // The same model generates fine with a fitting request (the refusals above are about the request).
    let r = run("-m MODEL -p ab -n 2 --temp 0 --quiet");
    if r.code != Some(0) {
        failures.push(format!(
            "control generation failed: {:?} {}",
            r.code, r.stderr
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------------
// Fuzzing seeds.

/// The smaller model the fuzz targets' seeds use: width 8, 1 layer, vocabulary 32.
const MICRO: Dims = Dims {
    vocab: 32,
    embd: 8,
    layers: 1,
    head: 2,
    head_kv: 1,
    ff: 16,
    ctx: 32,
};

/// The `MICRO` model with F16 weights.
fn micro_parts() -> Parts {
    model_parts(MICRO, QuantType::F16)
}

#[test]
#[ignore = "writes fuzzing seeds (to $HOSTILE_DUMP, else a temp dir)"]
fn dump_seed_corpus() {
    let root = std::env::var_os("HOSTILE_DUMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch("seeds"));
    let w = |target: &str, name: &str, b: &[u8]| {
        let d = root.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), b).unwrap();
    };
    let micro = micro_parts().bytes();
    w("gguf_parse", "micro-model.gguf", &micro);
    w("model_load", "micro-model.gguf", &micro);
    let mut p = micro_parts();
    p.add_tensor("output.weight", &[8, 32], QuantType::F16)
        .add_tensor("rope_freqs.weight", &[2], QuantType::F32);
    p.set("general.alignment", MetaValue::U32(64))
        .set("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    w("model_load", "micro-untied-rope-freqs.gguf", &p.bytes());
    let mut p = micro_parts();
    p.set("tokenizer.ggml.pre", "smollm");
    let tokens = gpt2_tokens(29, &["\u{120}", "\u{120}a", "<|im_end|>"]);
    set_gpt2_vocab(&mut p, tokens, &["\u{120} a"]);
    p.set("llama.attention.key_length", MetaValue::U32(4))
        .set("llama.rope.scaling.type", "linear")
        .set("llama.rope.scaling.factor", MetaValue::F32(2.0));
    w("model_load", "micro-gpt2.gguf", &p.bytes());
    let mut ad = gguf_adapter_parts(MICRO, 2);
    ad.tensors.retain(|t| t.name.starts_with("blk.0."));
    w("adapter_gguf", "micro-adapter.gguf", &ad.bytes());
    w("gguf_parse", "micro-adapter.gguf", &ad.bytes());
    // adapter_peft input: u32 LE config length, config JSON, safetensors bytes.
    let ents = vec![
        st_entry(
            &format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_A.weight"),
            &[2, 8],
            1,
        ),
        st_entry(
            &format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_B.weight"),
            &[8, 2],
            2,
        ),
    ];
    let mut cfg = peft_config();
    cfg["target_modules"] = json!(["q_proj"]);
    let cfg = serde_json::to_vec(&cfg).unwrap();
    let mut peft = (cfg.len() as u32).to_le_bytes().to_vec();
    peft.extend_from_slice(&cfg);
    peft.extend_from_slice(&safetensors(&ents));
    w("adapter_peft", "micro-peft.bin", &peft);
    // A sample of the named corpus (small files only).
    for (i, c) in model_cases()
        .iter()
        .chain(adapter_cases().iter())
        .enumerate()
    {
        match &c.input {
            Input::GgufAdapter(b) => w("adapter_gguf", &format!("named-{i}.gguf"), b),
            Input::Peft {
                config: Some(cfg),
                weights: Some(st),
                ..
            } if i % 2 == 0 => {
                let mut b = (cfg.len() as u32).to_le_bytes().to_vec();
                b.extend_from_slice(cfg);
                b.extend_from_slice(st);
                w("adapter_peft", &format!("named-{i}.bin"), &b);
            }
            _ => {}
        }
    }
    for t in ["gguf_parse", "model_load", "adapter_gguf", "adapter_peft"] {
        let n = std::fs::read_dir(root.join(t))
            .map(|d| d.count())
            .unwrap_or(0);
        println!("{t}: {n} seeds in {}", root.join(t).display());
        assert!(n >= 2, "{t}: no seeds written");
    }
}

/// A 5 MiB model whose KV cache at its default context is 2 GiB (64 layers, one 1024-wide head, 4096
/// positions): generating under a 2 GiB address-space limit must fail with an error, not abort.
#[test]
fn session_too_large_for_memory_is_refused_not_aborted() {
    let dir = scratch("kv");
    let d = Dims {
        vocab: 48,
        embd: 32,
        layers: 64,
        head: 1,
        head_kv: 1,
        ff: 32,
        ctx: 4096,
    };
    let mut p = model_parts(d, QuantType::Q4_0);
    p.set("llama.attention.key_length", MetaValue::U32(1024))
        .set("llama.attention.value_length", MetaValue::U32(1024))
        .set("llama.rope.dimension_count", MetaValue::U32(1024));
    for l in 0..64 {
        for (n, dims) in [
            ("attn_q", [32, 1024]),
            ("attn_k", [32, 1024]),
            ("attn_v", [32, 1024]),
            ("attn_output", [1024, 32]),
        ] {
            p.reshape(&format!("blk.{l}.{n}.weight"), &dims, QuantType::Q4_0);
        }
    }
    let mp = dir.join("kv.gguf");
    std::fs::write(&mp, p.bytes()).unwrap();
    let args: Vec<&std::ffi::OsStr> = vec![
        "-m".as_ref(),
        mp.as_os_str(),
        "-p".as_ref(),
        "ab".as_ref(),
        "-n".as_ref(),
        "1".as_ref(),
        "-t".as_ref(),
        "1".as_ref(),
        "--temp".as_ref(),
        "0".as_ref(),
        "-ctk".as_ref(),
        "f32".as_ref(),
        "-ctv".as_ref(),
        "f32".as_ref(),
    ];
    let r = run_limited(&args, &dir, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        r.signal.is_none() && r.code == Some(1),
        "exit {:?}, signal {:?}: {}",
        r.code,
        r.signal,
        r.stderr.trim()
    );
    assert!(
        r.stderr.contains("edge-run: error: ") && !r.stderr.contains("memory allocation"),
        "{}",
        r.stderr
    );
}
