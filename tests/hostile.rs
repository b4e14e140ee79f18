//! Hostile inputs: every malformed model, adapter or request must be refused with a clear, one-line
//! error, never a panic, a signal, a hang or a huge allocation.
//!
//! The corpus is generated here, from a small valid llama model (SentencePiece vocabulary, F32
//! weights) and valid GGUF / PEFT adapters built with `GgufWriter` and by hand, then mutated:
//! truncation at many offsets, integer sweeps (0, 1, 2^31, 2^32, 2^63, 2^64-1) over every integer field
//! of the file structure, and ~200 named corruptions (structure, hyper-parameters, tokenizer metadata,
//! safetensors headers, adapter configs, adapter tensors). Each input is run through the CLI
//! (`edge-run info -m FILE` or `edge-run info -m MODEL --adapter FILE`) with the address space limited
//! to 2 GiB, and checked: exit status 1 or 2, exactly one error line on stderr naming the file (and,
//! for named corruptions, the field), no "panicked", no signal, under 10 s. The same corpus is loaded
//! in process with a counting allocator: refusing a small hostile file must allocate < 1 MiB.
//!
//! Request-level faults (token id ≥ vocabulary, prompt longer than the context, adapter swaps that
//! fail) are checked on a `Session`: the request is refused, the session's state and adapter set stay
//! as they were, and it still computes the same logits afterwards.
//!
//! `HOSTILE_SHOW=1` prints every case's outcome (with `--nocapture`).
//! `HOSTILE_DUMP=DIR cargo test --release --test hostile dump_seed_corpus -- --ignored` writes
//! fuzzing seeds (a smaller model, adapters, and a sample of the corpus) to DIR/<target>/.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
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

// ---------------------------------------------------------------------------------------------------
// Counting allocator: per-thread current / peak heap bytes while tracking is on.

struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static CUR: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with`: during thread teardown the slots may be gone; then nothing is counted.
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = CUR.try_with(|c| {
                let v = c.get() + delta;
                c.set(v);
                let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
            });
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged and only
// adds bookkeeping in const-initialised thread-locals (which never allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` with layout `l` (we never hand out anything else).
        unsafe { System.dealloc(p, l) };
        note(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: `p` was allocated by `System` with layout `l`; same contract as ours.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            note(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the peak heap bytes this thread held above the level at the
/// start (allocations of other threads are not counted).
fn peak_heap<R>(f: impl FnOnce() -> R) -> (R, usize) {
    CUR.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    (r, PEAK.with(|p| p.get()).max(0) as usize)
}

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

/// Deterministic small values in [-0.1, 0.1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

fn data_for(ty: QuantType, dims: &[u64], seed: u64) -> Vec<u8> {
    let n = dims.iter().product::<u64>() as usize;
    match ty {
        QuantType::F32 => f32_bytes(&values(n, seed)),
        QuantType::F16 => f16_bytes(&values(n, seed)),
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
        let v: Vec<f32> = values(t.dims[0] as usize, 3)
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
        data: f32_bytes(&values(n, seed)),
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
    while h.len() % 8 != 0 {
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
    vec![
        st_entry(
            &format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_A.weight"),
            &[2, 32],
            21,
        ),
        st_entry(
            &format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_B.weight"),
            &[32, 2],
            22,
        ),
        st_entry(
            &format!("{PEFT_PREFIX}.0.self_attn.v_proj.lora_A.weight"),
            &[2, 32],
            23,
        ),
        st_entry(
            &format!("{PEFT_PREFIX}.0.self_attn.v_proj.lora_B.weight"),
            &[16, 2],
            24,
        ),
    ]
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
        Field {
            at: 4,
            width: 4,
            what: "version".into(),
        },
        Field {
            at: 8,
            width: 8,
            what: "tensor_count".into(),
        },
        Field {
            at: 16,
            width: 8,
            what: "kv_count".into(),
        },
    ];
    let nt = get_u64(b, 8) as usize;
    let nkv = get_u64(b, 16) as usize;
    let mut p = 24;
    let string = |p: &mut usize, f: &mut Vec<Field>, what: String, record: bool| -> String {
        let n = get_u64(b, *p) as usize;
        if record {
            f.push(Field {
                at: *p,
                width: 8,
                what: format!("{what}.len"),
            });
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
        f.push(Field {
            at: p,
            width: 4,
            what: format!("{key}.type"),
        });
        p += 4;
        match t {
            8 => {
                string(&mut p, &mut f, key.clone(), true);
            }
            9 => {
                let et = get_u32(b, p);
                f.push(Field {
                    at: p,
                    width: 4,
                    what: format!("{key}.elem_type"),
                });
                let n = get_u64(b, p + 4) as usize;
                f.push(Field {
                    at: p + 4,
                    width: 8,
                    what: format!("{key}.count"),
                });
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
                    f.push(Field {
                        at: p,
                        width: w,
                        what: format!("{key}.value"),
                    });
                }
                p += w;
            }
        }
    }
    let mut tensors = vec![];
    for _ in 0..nt {
        let name = string(&mut p, &mut f, "tensor.name".into(), true);
        let nd_at = p;
        f.push(Field {
            at: p,
            width: 4,
            what: format!("{name}.n_dims"),
        });
        let nd = get_u32(b, p) as usize;
        p += 4;
        let dims_at = p;
        for d in 0..nd {
            f.push(Field {
                at: p,
                width: 8,
                what: format!("{name}.dims[{d}]"),
            });
            p += 8;
        }
        f.push(Field {
            at: p,
            width: 4,
            what: format!("{name}.type"),
        });
        f.push(Field {
            at: p + 4,
            width: 8,
            what: format!("{name}.offset"),
        });
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
            let mut m = b.to_vec();
            let old = if fld.width == 8 {
                get_u64(b, fld.at)
            } else {
                get_u32(b, fld.at) as u64
            };
            if old == v {
                continue;
            }
            if fld.width == 8 {
                put_u64(&mut m, fld.at, v);
            } else {
                put_u32(&mut m, fld.at, v as u32);
            }
            out.push(Case::new(
                &format!("{tag} sweep {} = {v}", fld.what),
                input.with(m),
                Expect::Either,
            ));
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
        out.push(Case::new(
            &format!("{tag} truncated to {c} bytes"),
            input.with(b[..c].to_vec()),
            Expect::Refuse(vec![]),
        ));
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
}

impl Input {
    /// The same kind of input with the main file replaced.
    fn with(&self, bytes: Vec<u8>) -> Input {
        match self {
            Input::Model(_) => Input::Model(bytes),
            Input::GgufAdapter(_) => Input::GgufAdapter(bytes),
            Input::Peft {
                config, file_arg, ..
            } => Input::Peft {
                config: config.clone(),
                weights: Some(bytes),
                file_arg: *file_arg,
            },
        }
    }
    fn peft(config: &serde_json::Value, weights: Vec<u8>) -> Input {
        Input::Peft {
            config: Some(serde_json::to_vec_pretty(config).unwrap()),
            weights: Some(weights),
            file_arg: false,
        }
    }
    fn peft_cfg_text(config: &str) -> Input {
        Input::Peft {
            config: Some(config.as_bytes().to_vec()),
            weights: Some(safetensors(&peft_entries())),
            file_arg: false,
        }
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

fn refuse_model(out: &mut Vec<Case>, name: &str, p: &Parts, needles: &[&'static str]) {
    out.push(Case::new(
        name,
        Input::Model(p.bytes()),
        Expect::Refuse(needles.to_vec()),
    ));
}

/// Named corruptions of the model: structure, hyper-parameters, tensors, tokenizer.
fn model_cases() -> Vec<Case> {
    let mut c = vec![];
    let base = tiny();
    let good = base.bytes();
    c.push(Case::new(
        "valid tiny model",
        Input::Model(good.clone()),
        Expect::Accept,
    ));
    let mut p = base.clone();
    p.set("general.alignment", MetaValue::U32(1));
    // Valid GGUF, but the F32 norm weights then lie at odd offsets: refused (edge-run views them in place).
    c.push(Case::new(
        "alignment 1",
        Input::Model(p.bytes()),
        Expect::Refuse(vec!["output_norm.weight", "aligned"]),
    ));
    let mut p = base.clone();
    p.set("general.alignment", MetaValue::U32(64));
    c.push(Case::new(
        "alignment 64 (valid)",
        Input::Model(p.bytes()),
        Expect::Accept,
    ));
    let mut p = base.clone();
    p.set("tokenizer.ggml.pre", "no-such-pre-tokenizer");
    c.push(Case::new(
        "unknown pre-tokenizer on a llama vocab (ignored)",
        Input::Model(p.bytes()),
        Expect::Accept,
    ));

    let raw = |c: &mut Vec<Case>, name: &str, b: Vec<u8>, needles: &[&'static str]| {
        c.push(Case::new(
            name,
            Input::Model(b),
            Expect::Refuse(needles.to_vec()),
        ));
    };
    // --- Header and structure (byte surgery).
    let mut b = good.clone();
    b[0..4].copy_from_slice(b"GGUG");
    raw(&mut c, "bad magic", b, &["magic"]);
    raw(&mut c, "empty file", vec![], &["magic"]);
    raw(
        &mut c,
        "safetensors file as a model",
        safetensors(&peft_entries()),
        &["magic"],
    );
    for (v, needle) in [
        (1u32, "version"),
        (0, "version"),
        (4, "version"),
        (u32::MAX, "version"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let mut b = good.clone();
        put_u32(&mut b, 4, v);
        raw(&mut c, &format!("version {v:#x}"), b, &[needle]);
    }
    // Alignment values.
    for (v, name) in [
        (MetaValue::U32(0), "0"),
        (MetaValue::U32(3), "3"),
        (MetaValue::U32(1 << 31), "2^31"),
        (MetaValue::U64(1 << 40), "2^40 u64"),
        (MetaValue::String("32".into()), "a string"),
        (MetaValue::I32(-32), "-32"),
    ] {
        // The writer refuses bad alignments: write 32 and patch the value's bytes / type afterwards.
        let mut p = base.clone();
        p.set("general.alignment", MetaValue::U32(32));
        p.set("zz.alignment.prob", v.clone());
        let b = p.bytes();
        // Swap the two keys' names (same length) so general.alignment carries the hostile value.
        let b = patch(&b, b"general.alignment", b"zz.xx.alignment.x");
        let b = patch(&b, b"zz.alignment.prob", b"general.alignment");
        let b = patch(&b, b"zz.xx.alignment.x", b"zz.alignment.prob");
        raw(
            &mut c,
            &format!("general.alignment {name}"),
            b,
            &["general.alignment"],
        );
    }
    // Duplicate keys and tensor names.
    let mut p = base.clone();
    p.set("zz.dup.key1", MetaValue::U32(1))
        .set("zz.dup.key2", MetaValue::U32(2));
    raw(
        &mut c,
        "duplicate metadata key",
        patch(&p.bytes(), b"zz.dup.key2", b"zz.dup.key1"),
        &["duplicate", "zz.dup.key1"],
    );
    let mut p = base.clone();
    p.set("llama.block_coun2", MetaValue::U32(9));
    raw(
        &mut c,
        "duplicate block_count key",
        patch(&p.bytes(), b"llama.block_coun2", b"llama.block_count"),
        &[],
    );
    let mut p = base.clone();
    p.add_tensor("zz.dup.t1", &[4], QuantType::F32)
        .add_tensor("zz.dup.t2", &[4], QuantType::F32);
    raw(
        &mut c,
        "duplicate tensor name",
        patch(&p.bytes(), b"zz.dup.t2", b"zz.dup.t1"),
        &["duplicate", "zz.dup.t1"],
    );
    let mut p = base.clone();
    p.add_tensor("blk.0.attn_q.weighX", &[4], QuantType::F32);
    raw(
        &mut c,
        "duplicate weight name",
        patch(&p.bytes(), b"blk.0.attn_q.weighX", b"blk.0.attn_q.weight"),
        &["duplicate", "blk.0.attn_q.weight"],
    );
    // Empty key / tensor name, invalid UTF-8.
    let mut p = base.clone();
    p.set("Z", MetaValue::U32(1));
    let mut b = p.bytes();
    let at = b
        .windows(9)
        .position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'Z'])
        .unwrap();
    put_u64(&mut b, at, 0);
    raw(&mut c, "empty metadata key", b, &["key"]);
    raw(
        &mut c,
        "invalid UTF-8 in a key",
        patch(&good, b"general.name", b"general.n\xffme"),
        &["UTF-8"],
    );
    raw(
        &mut c,
        "invalid UTF-8 in a token",
        patch(&good, "\u{2581}r".as_bytes(), b"\xc3\x28\x28\x28"),
        &["tokenizer.ggml.tokens", "UTF-8"],
    );
    // Tensor info fields.
    let l = gguf_fields(&good);
    let find = |name: &str| l.tensors.iter().find(|t| t.0 == name).unwrap().clone();
    let (_, nd_at, dims_at, ty_at, off_at) = find("blk.0.attn_q.weight");
    for (v, needle) in [(0u32, "n_dims"), (5, "n_dims"), (u32::MAX, "n_dims")] {
        let mut b = good.clone();
        put_u32(&mut b, nd_at, v);
        raw(&mut c, &format!("n_dims {v}"), b, &[needle]);
    }
    let mut b = good.clone();
    put_u32(&mut b, nd_at, 1);
    raw(&mut c, "n_dims 1 (shape shifts)", b, &[]);
    for (d, v) in [
        (0, 0u64),
        (1, 0),
        (0, 1 << 63),
        (0, u64::MAX),
        (1, 1 << 40),
        (1, 31),
    ] {
        let mut b = good.clone();
        put_u64(&mut b, dims_at + 8 * d, v);
        raw(
            &mut c,
            &format!("attn_q dims[{d}] = {v}"),
            b,
            &["blk.0.attn_q.weight"],
        );
    }
    // Element count overflows u64 with dims that are each valid.
    let mut b = good.clone();
    put_u64(&mut b, dims_at, 1 << 32);
    put_u64(&mut b, dims_at + 8, 1 << 32);
    raw(
        &mut c,
        "attn_q element count overflows",
        b,
        &["blk.0.attn_q.weight", "dims"],
    );
    for (v, needle) in [
        (4u32, "type"),
        (99, "type"),
        (u32::MAX, "type"),
        (12, "block size"),
        (13, "block size"),
    ] {
        let mut b = good.clone();
        put_u32(&mut b, ty_at, v);
        raw(
            &mut c,
            &format!("attn_q type id {v}"),
            b,
            &["blk.0.attn_q.weight", needle],
        );
    }
    let (_, _, _, emb_ty, _) = find("token_embd.weight");
    let mut b = good.clone();
    put_u32(&mut b, emb_ty, 1); // F16: half the bytes; the next tensor's data is then not where it says
                                // Smaller than its slot: the data is garbage but in range and well-typed (the reader, unlike
                                // llama.cpp, does not insist that tensors are packed without gaps).
    c.push(Case::new(
        "token_embd type changed to F16",
        Input::Model(b),
        Expect::Either,
    ));
    let mut b = good.clone();
    put_u32(&mut b, ty_at, 8);
    c.push(Case::new(
        "attn_q type changed to Q8_0",
        Input::Model(b),
        Expect::Either,
    ));
    let old = get_u64(&good, off_at);
    for (v, what, needle) in [
        (old + 1, "misaligned", "offset"),
        (old + 16, "misaligned by 16", "offset"),
        (good.len() as u64, "past the end", "offset"),
        (u64::MAX - 31, "near u64::MAX", "offset"),
        (0, "overlapping token_embd", "overlap"),
    ] {
        let mut b = good.clone();
        put_u64(&mut b, off_at, v);
        raw(&mut c, &format!("attn_q offset {what}"), b, &[needle]);
    }
    raw(
        &mut c,
        "data section cut off",
        good[..l.info_end + 64].to_vec(),
        &["offset"],
    );
    let mut b = good.clone();
    put_u64(&mut b, 8, get_u64(&good, 8) + 1);
    raw(&mut c, "tensor_count one too many", b, &[]);
    let mut b = good.clone();
    put_u64(&mut b, 16, get_u64(&good, 16) + 1);
    raw(&mut c, "kv_count one too many", b, &[]);
    let mut b = good.clone();
    put_u64(&mut b, 16, get_u64(&good, 16) - 1);
    raw(&mut c, "kv_count one too few", b, &[]);
    // Metadata value type ids.
    let type_at = l
        .fields
        .iter()
        .find(|f| f.what == "llama.block_count.type")
        .unwrap()
        .at;
    for v in [13u32, 99, u32::MAX, 9, 8] {
        let mut b = good.clone();
        put_u32(&mut b, type_at, v);
        raw(&mut c, &format!("block_count value type {v}"), b, &[]);
    }
    // Arrays nested too deep.
    let mut p = base.clone();
    let mut a = MetaArray::U8(vec![1]);
    for _ in 0..12 {
        a = MetaArray::Array(vec![a]);
    }
    p.set("zz.deep", MetaValue::Array(a));
    raw(&mut c, "arrays nested 13 deep", p.bytes(), &["zz.deep"]);
    let mut p = base.clone();
    p.set("zz.bool", MetaValue::Bool(true));
    let b = p.bytes();
    let at = b.windows(7).position(|w| w == b"zz.bool").unwrap() + 7 + 4;
    let mut b = b;
    b[at] = 2;
    raw(&mut c, "bool value 2", b, &["zz.bool", "bool"]);

    // --- Architecture and hyper-parameters.
    let hp =
        |c: &mut Vec<Case>, name: &str, edit: &dyn Fn(&mut Parts), needles: &[&'static str]| {
            let mut p = base.clone();
            edit(&mut p);
            refuse_model(c, name, &p, needles);
        };
    hp(
        &mut c,
        "architecture gpt2",
        &|p| {
            p.set("general.architecture", "gpt2");
        },
        &["architecture"],
    );
    hp(
        &mut c,
        "architecture missing",
        &|p| {
            p.remove("general.architecture");
        },
        &["general.architecture"],
    );
    hp(
        &mut c,
        "architecture is a number",
        &|p| {
            p.set("general.architecture", MetaValue::U32(7));
        },
        &["general.architecture"],
    );
    hp(
        &mut c,
        "architecture empty",
        &|p| {
            p.set("general.architecture", "");
        },
        &["architecture"],
    );
    for (key, v, needles) in [
        (
            "llama.attention.head_count",
            MetaValue::U32(0),
            &["head_count"][..],
        ),
        (
            "llama.attention.head_count",
            MetaValue::U32(3),
            &["head_count"],
        ),
        (
            "llama.attention.head_count",
            MetaValue::U32(64),
            &["head_count"],
        ),
        (
            "llama.attention.head_count",
            MetaValue::U64(1 << 33),
            &["head_count"],
        ),
        (
            "llama.attention.head_count",
            MetaValue::I32(-4),
            &["head_count"],
        ),
        (
            "llama.attention.head_count",
            MetaValue::F32(4.0),
            &["head_count"],
        ),
        (
            "llama.attention.head_count",
            MetaValue::String("4".into()),
            &["head_count"],
        ),
        ("llama.attention.head_count", MetaValue::U32(8), &[]), // divides 32, but q/k shapes then differ
        (
            "llama.attention.head_count_kv",
            MetaValue::U32(0),
            &["head_count_kv"],
        ),
        (
            "llama.attention.head_count_kv",
            MetaValue::U32(3),
            &["head_count_kv"],
        ),
        (
            "llama.attention.head_count_kv",
            MetaValue::U32(8),
            &["head_count_kv"],
        ),
        (
            "llama.attention.head_count_kv",
            MetaValue::U64(u64::MAX),
            &["head_count_kv"],
        ),
        (
            "llama.attention.head_count_kv",
            MetaValue::U32(1),
            &["attn_k"],
        ),
        (
            "llama.attention.head_count_kv",
            MetaValue::Array(MetaArray::U32(vec![2, 2])),
            &["head_count_kv"],
        ),
        (
            "llama.embedding_length",
            MetaValue::U32(0),
            &["embedding_length"],
        ),
        ("llama.embedding_length", MetaValue::U32(31), &[]),
        ("llama.embedding_length", MetaValue::U32(64), &[]),
        (
            "llama.embedding_length",
            MetaValue::U64(1 << 32),
            &["embedding_length"],
        ),
        (
            "llama.embedding_length",
            MetaValue::U64(u64::MAX),
            &["embedding_length"],
        ),
        (
            "llama.embedding_length",
            MetaValue::I64(-1),
            &["embedding_length"],
        ),
        ("llama.block_count", MetaValue::U32(0), &["block_count"]),
        ("llama.block_count", MetaValue::U32(3), &["blk.2"]),
        ("llama.block_count", MetaValue::U32(1025), &["block_count"]),
        (
            "llama.block_count",
            MetaValue::U32(1 << 31),
            &["block_count"],
        ),
        (
            "llama.block_count",
            MetaValue::U64(1 << 32),
            &["block_count"],
        ),
        (
            "llama.block_count",
            MetaValue::U64(u64::MAX),
            &["block_count"],
        ),
        ("llama.block_count", MetaValue::I8(-1), &["block_count"]),
        ("llama.block_count", MetaValue::Bool(true), &["block_count"]),
        (
            "llama.feed_forward_length",
            MetaValue::U32(0),
            &["feed_forward_length"],
        ),
        ("llama.feed_forward_length", MetaValue::U32(63), &["ffn"]),
        (
            "llama.feed_forward_length",
            MetaValue::U64(1 << 40),
            &["feed_forward_length"],
        ),
        (
            "llama.context_length",
            MetaValue::U32(0),
            &["context_length"],
        ),
        (
            "llama.context_length",
            MetaValue::I32(-1),
            &["context_length"],
        ),
        (
            "llama.context_length",
            MetaValue::U64(u64::MAX),
            &["context_length"],
        ),
        (
            "llama.context_length",
            MetaValue::String("64".into()),
            &["context_length"],
        ),
        (
            "llama.rope.dimension_count",
            MetaValue::U32(7),
            &["rope.dimension_count"],
        ),
        (
            "llama.rope.dimension_count",
            MetaValue::U32(0),
            &["rope.dimension_count"],
        ),
        (
            "llama.rope.dimension_count",
            MetaValue::U32(16),
            &["rope.dimension_count"],
        ),
        (
            "llama.rope.dimension_count",
            MetaValue::U64(u64::MAX),
            &["rope.dimension_count"],
        ),
        (
            "llama.attention.key_length",
            MetaValue::U32(7),
            &["key_length"],
        ),
        (
            "llama.attention.key_length",
            MetaValue::U32(0),
            &["key_length"],
        ),
        (
            "llama.attention.key_length",
            MetaValue::U32(4096),
            &["key_length"],
        ),
        (
            "llama.attention.key_length",
            MetaValue::U64(1 << 62),
            &["key_length"],
        ),
        ("llama.attention.key_length", MetaValue::U32(16), &[]),
        (
            "llama.attention.value_length",
            MetaValue::U32(16),
            &["value_length"],
        ),
        (
            "llama.attention.value_length",
            MetaValue::U32(0),
            &["value_length"],
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(f32::NAN),
            &["epsilon"],
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(-1e-5),
            &["epsilon"],
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(0.0),
            &["epsilon"],
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F64(1e300),
            &["epsilon"],
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::String("1e-5".into()),
            &["epsilon"],
        ),
        ("llama.rope.freq_base", MetaValue::F32(0.0), &["freq_base"]),
        (
            "llama.rope.freq_base",
            MetaValue::F32(f32::INFINITY),
            &["freq_base"],
        ),
        (
            "llama.rope.freq_base",
            MetaValue::F32(-10000.0),
            &["freq_base"],
        ),
        (
            "llama.rope.scaling.type",
            MetaValue::String("yarn".into()),
            &["rope.scaling.type"],
        ),
        (
            "llama.rope.scaling.type",
            MetaValue::String("linear".into()),
            &["rope.scaling.factor"],
        ),
        (
            "llama.rope.scaling.type",
            MetaValue::U32(1),
            &["rope.scaling.type"],
        ),
    ] {
        let name = format!("{key} = {v:?}");
        let mut p = base.clone();
        p.set(key, v);
        refuse_model(&mut c, &name, &p, needles);
    }
    for f in [0.0f32, -2.0, f32::NAN, f32::INFINITY] {
        let mut p = base.clone();
        p.set("llama.rope.scaling.type", "linear")
            .set("llama.rope.scaling.factor", MetaValue::F32(f));
        refuse_model(
            &mut c,
            &format!("rope scaling factor {f}"),
            &p,
            &["rope.scaling.factor"],
        );
    }
    for key in [
        "llama.embedding_length",
        "llama.block_count",
        "llama.attention.head_count",
        "llama.feed_forward_length",
    ] {
        hp(
            &mut c,
            &format!("{key} missing"),
            &|p| {
                p.remove(key);
            },
            &[key],
        );
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
        hp(
            &mut c,
            &format!("missing {name}"),
            &|p| {
                p.remove_tensor(name);
            },
            &[name],
        );
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
        let mut p = base.clone();
        p.reshape(name, &dims, ty);
        refuse_model(&mut c, &label, &p, &[name]);
    }
    hp(
        &mut c,
        "output.weight wrong shape",
        &|p| {
            p.add_tensor("output.weight", &[32, 47], QuantType::F32);
        },
        &["output.weight"],
    );
    hp(
        &mut c,
        "output.weight Q8_1 (an activation type, no weight kernel)",
        &|p| {
            p.add_tensor("output.weight", &[32, 48], QuantType::Q8_1);
        },
        &["output.weight"],
    );
    hp(
        &mut c,
        "rope_freqs.weight wrong shape",
        &|p| {
            p.add_tensor("rope_freqs.weight", &[8], QuantType::F32);
        },
        &["rope_freqs.weight"],
    );
    hp(
        &mut c,
        "rope_freqs.weight F16",
        &|p| {
            p.add_tensor("rope_freqs.weight", &[4], QuantType::F16);
        },
        &["rope_freqs.weight"],
    );

    // --- Tokenizer metadata.
    let tok = |c: &mut Vec<Case>,
               name: &str,
               edit: &dyn Fn(&mut Parts),
               needles: &[&'static str]| hp(c, name, edit, needles);
    tok(
        &mut c,
        "tokens missing",
        &|p| {
            p.remove("tokenizer.ggml.tokens");
        },
        &["tokenizer.ggml.tokens"],
    );
    tok(
        &mut c,
        "tokens empty",
        &|p| {
            p.set(
                "tokenizer.ggml.tokens",
                MetaValue::Array(MetaArray::String(vec![])),
            );
        },
        &["tokenizer.ggml.tokens"],
    );
    tok(
        &mut c,
        "tokens not strings",
        &|p| {
            p.set(
                "tokenizer.ggml.tokens",
                MetaValue::Array(MetaArray::U32(vec![1; 48])),
            );
        },
        &["tokenizer.ggml.tokens"],
    );
    tok(
        &mut c,
        "tokens a string",
        &|p| {
            p.set("tokenizer.ggml.tokens", "abc");
        },
        &["tokenizer.ggml.tokens"],
    );
    tok(
        &mut c,
        "token count 47 ≠ vocab 48",
        &|p| {
            let mut t = spm_tokens(48);
            t.pop();
            p.set(
                "tokenizer.ggml.tokens",
                MetaValue::Array(MetaArray::String(t)),
            );
        },
        &["tokenizer.ggml"],
    );
    tok(
        &mut c,
        "token count 49 ≠ vocab 48",
        &|p| {
            p.set(
                "tokenizer.ggml.tokens",
                MetaValue::Array(MetaArray::String(spm_tokens(49))),
            );
        },
        &["tokenizer.ggml"],
    );
    tok(
        &mut c,
        "scores too short",
        &|p| {
            p.set(
                "tokenizer.ggml.scores",
                MetaValue::Array(MetaArray::F32(vec![0.0; 47])),
            );
        },
        &["tokenizer.ggml.scores"],
    );
    tok(
        &mut c,
        "scores strings",
        &|p| {
            p.set(
                "tokenizer.ggml.scores",
                MetaValue::Array(MetaArray::String(vec!["0".into(); 48])),
            );
        },
        &["tokenizer.ggml.scores"],
    );
    tok(
        &mut c,
        "scores missing (llama vocab)",
        &|p| {
            p.remove("tokenizer.ggml.scores");
        },
        &["tokenizer.ggml.scores"],
    );
    tok(
        &mut c,
        "scores f64 overflowing f32",
        &|p| {
            p.set(
                "tokenizer.ggml.scores",
                MetaValue::Array(MetaArray::F64(vec![1e300; 48])),
            );
        },
        &["tokenizer.ggml.scores"],
    );
    tok(
        &mut c,
        "token_type too long",
        &|p| {
            p.set(
                "tokenizer.ggml.token_type",
                MetaValue::Array(MetaArray::I32(vec![1; 49])),
            );
        },
        &["tokenizer.ggml.token_type"],
    );
    tok(
        &mut c,
        "token_type empty",
        &|p| {
            p.set(
                "tokenizer.ggml.token_type",
                MetaValue::Array(MetaArray::I32(vec![])),
            );
        },
        &["tokenizer.ggml.token_type"],
    );
    tok(
        &mut c,
        "token_type f32",
        &|p| {
            p.set(
                "tokenizer.ggml.token_type",
                MetaValue::Array(MetaArray::F32(vec![1.0; 48])),
            );
        },
        &["tokenizer.ggml.token_type"],
    );
    tok(
        &mut c,
        "token_type u64 too large",
        &|p| {
            p.set(
                "tokenizer.ggml.token_type",
                MetaValue::Array(MetaArray::U64(vec![1 << 40; 48])),
            );
        },
        &["tokenizer.ggml.token_type"],
    );
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
    ] {
        for (v, label) in [
            (MetaValue::U32(48), "48 (= vocab)"),
            (MetaValue::U32(u32::MAX), "u32::MAX"),
            (MetaValue::U64(1 << 40), "2^40"),
            (MetaValue::String("1".into()), "a string"),
            (MetaValue::F32(1.0), "f32"),
        ] {
            tok(
                &mut c,
                &format!("{key} {label}"),
                &|p| {
                    p.set(key, v.clone());
                },
                &[key],
            );
        }
    }
    tok(
        &mut c,
        "padding id out of range",
        &|p| {
            p.set("tokenizer.ggml.padding_token_id", MetaValue::U32(1000));
        },
        &["tokenizer.ggml.padding_token_id"],
    );
    tok(
        &mut c,
        "tokenizer model missing",
        &|p| {
            p.remove("tokenizer.ggml.model");
        },
        &["tokenizer.ggml.model"],
    );
    tok(
        &mut c,
        "tokenizer model bert",
        &|p| {
            p.set("tokenizer.ggml.model", "bert");
        },
        &["tokenizer.ggml.model"],
    );
    tok(
        &mut c,
        "add_bos_token not a bool",
        &|p| {
            p.set("tokenizer.ggml.add_bos_token", MetaValue::U8(1));
        },
        &["tokenizer.ggml.add_bos_token"],
    );
    tok(
        &mut c,
        "chat template not a string",
        &|p| {
            p.set("tokenizer.chat_template", MetaValue::U32(1));
        },
        &["tokenizer.chat_template"],
    );
    // A gpt2 (BPE) vocab: merges missing / malformed / wrong type.
    let gpt2 = |p: &mut Parts| {
        let mut t: Vec<String> = (b'!'..=b'~').map(|b| (b as char).to_string()).collect(); // 94
        t.truncate(45);
        t.extend(["\u{120}".to_string(), "\u{120}a".into(), "ab".into()]);
        p.set("tokenizer.ggml.model", "gpt2").set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(t)),
        );
        p.set(
            "tokenizer.ggml.merges",
            MetaValue::Array(MetaArray::String(vec!["\u{120} a".into(), "a b".into()])),
        );
    };
    let mut p = base.clone();
    gpt2(&mut p);
    c.push(Case::new(
        "valid gpt2 vocab (control)",
        Input::Model(p.bytes()),
        Expect::Accept,
    ));
    tok(
        &mut c,
        "gpt2 merges missing",
        &|p| {
            gpt2(p);
            p.remove("tokenizer.ggml.merges");
        },
        &["tokenizer.ggml.merges"],
    );
    tok(
        &mut c,
        "gpt2 merge without a space",
        &|p| {
            gpt2(p);
            p.set(
                "tokenizer.ggml.merges",
                MetaValue::Array(MetaArray::String(vec!["ab".into()])),
            );
        },
        &["tokenizer.ggml.merges"],
    );
    tok(
        &mut c,
        "gpt2 merges not strings",
        &|p| {
            gpt2(p);
            p.set(
                "tokenizer.ggml.merges",
                MetaValue::Array(MetaArray::U32(vec![1, 2])),
            );
        },
        &["tokenizer.ggml.merges"],
    );
    tok(
        &mut c,
        "gpt2 merges a string",
        &|p| {
            gpt2(p);
            p.set("tokenizer.ggml.merges", "a b");
        },
        &["tokenizer.ggml.merges"],
    );
    c
}

/// Named corruptions of adapters.
fn adapter_cases() -> Vec<Case> {
    let mut c = vec![];
    let base = gguf_adapter_parts(TINY, 2);
    c.push(Case::new(
        "valid GGUF adapter",
        Input::GgufAdapter(base.bytes()),
        Expect::Accept,
    ));
    c.push(Case::new(
        "valid PEFT adapter (directory)",
        Input::peft(&peft_config(), safetensors(&peft_entries())),
        Expect::Accept,
    ));
    c.push(Case::new(
        "valid PEFT adapter (.safetensors file)",
        Input::Peft {
            config: Some(serde_json::to_vec(&peft_config()).unwrap()),
            weights: Some(safetensors(&peft_entries())),
            file_arg: true,
        },
        Expect::Accept,
    ));

    // --- GGUF adapters.
    let g = |c: &mut Vec<Case>, name: &str, edit: &dyn Fn(&mut Parts), needles: &[&'static str]| {
        let mut p = base.clone();
        edit(&mut p);
        c.push(Case::new(
            &format!("gguf adapter: {name}"),
            Input::GgufAdapter(p.bytes()),
            Expect::Refuse(needles.to_vec()),
        ));
    };
    g(
        &mut c,
        "wrong architecture",
        &|p| {
            p.set("general.architecture", "gpt2");
        },
        &["general.architecture"],
    );
    g(
        &mut c,
        "architecture missing",
        &|p| {
            p.remove("general.architecture");
        },
        &["general.architecture"],
    );
    g(
        &mut c,
        "general.type model",
        &|p| {
            p.set("general.type", "model");
        },
        &["general.type"],
    );
    g(
        &mut c,
        "general.type missing",
        &|p| {
            p.remove("general.type");
        },
        &["general.type"],
    );
    g(
        &mut c,
        "adapter.type ia3",
        &|p| {
            p.set("adapter.type", "ia3");
        },
        &["adapter.type"],
    );
    g(
        &mut c,
        "adapter.type a number",
        &|p| {
            p.set("adapter.type", MetaValue::U32(0));
        },
        &["adapter.type"],
    );
    g(
        &mut c,
        "alpha negative",
        &|p| {
            p.set("adapter.lora.alpha", MetaValue::F32(-1.0));
        },
        &["adapter.lora.alpha"],
    );
    g(
        &mut c,
        "alpha NaN",
        &|p| {
            p.set("adapter.lora.alpha", MetaValue::F32(f32::NAN));
        },
        &["adapter.lora.alpha"],
    );
    g(
        &mut c,
        "alpha a string",
        &|p| {
            p.set("adapter.lora.alpha", "16");
        },
        &["adapter.lora.alpha"],
    );
    g(
        &mut c,
        "unknown adapter key",
        &|p| {
            p.set(
                "adapter.alora.invocation_tokens",
                MetaValue::Array(MetaArray::U32(vec![1])),
            );
        },
        &["adapter.alora.invocation_tokens"],
    );
    g(
        &mut c,
        "missing lora_b",
        &|p| {
            p.remove_tensor("blk.0.attn_q.weight.lora_b");
        },
        &["blk.0.attn_q.weight"],
    );
    g(
        &mut c,
        "missing lora_a",
        &|p| {
            p.remove_tensor("blk.1.attn_v.weight.lora_a");
        },
        &["blk.1.attn_v.weight"],
    );
    g(
        &mut c,
        "rank mismatch",
        &|p| {
            p.reshape("blk.0.attn_q.weight.lora_b", &[3, 32], QuantType::F32);
        },
        &["blk.0.attn_q.weight.lora_b", "rank"],
    );
    g(
        &mut c,
        "rank mismatch on v",
        &|p| {
            p.reshape("blk.1.attn_v.weight.lora_a", &[32, 4], QuantType::F32);
        },
        &["blk.1.attn_v.weight", "rank"],
    );
    g(
        &mut c,
        "n_in mismatch",
        &|p| {
            p.reshape("blk.0.attn_q.weight.lora_a", &[16, 2], QuantType::F32);
        },
        &["blk.0.attn_q.weight.lora_a"],
    );
    g(
        &mut c,
        "n_out mismatch",
        &|p| {
            p.reshape("blk.1.attn_v.weight.lora_b", &[2, 32], QuantType::F32);
        },
        &["blk.1.attn_v.weight"],
    );
    g(
        &mut c,
        "lora_a 3-D",
        &|p| {
            p.reshape("blk.0.attn_q.weight.lora_a", &[32, 2, 1], QuantType::F32);
        },
        &["blk.0.attn_q.weight.lora_a"],
    );
    g(
        &mut c,
        "lora_b 1-D",
        &|p| {
            p.reshape("blk.0.attn_q.weight.lora_b", &[64], QuantType::F32);
        },
        &["blk.0.attn_q.weight.lora_b"],
    );
    g(
        &mut c,
        "factor type Q4_0",
        &|p| {
            p.reshape("blk.0.attn_q.weight.lora_a", &[32, 2], QuantType::Q4_0);
        },
        &["blk.0.attn_q.weight.lora_a"],
    );
    g(
        &mut c,
        "target not in the base",
        &|p| {
            p.add_tensor("blk.0.attn_x.weight.lora_a", &[32, 2], QuantType::F32)
                .add_tensor("blk.0.attn_x.weight.lora_b", &[2, 32], QuantType::F32);
        },
        &["blk.0.attn_x.weight"],
    );
    g(
        &mut c,
        "layer beyond the base",
        &|p| {
            p.add_tensor("blk.7.attn_q.weight.lora_a", &[32, 2], QuantType::F32)
                .add_tensor("blk.7.attn_q.weight.lora_b", &[2, 32], QuantType::F32);
        },
        &["blk.7.attn_q.weight"],
    );
    g(
        &mut c,
        "tensor without a lora suffix",
        &|p| {
            p.add_tensor("blk.0.attn_q.weight", &[32], QuantType::F32);
        },
        &["blk.0.attn_q.weight"],
    );
    g(
        &mut c,
        "no tensors",
        &|p| {
            p.tensors.clear();
        },
        &["tensors"],
    );
    for (label, bad) in [
        ("NaN", f32::NAN),
        ("+Inf", f32::INFINITY),
        ("1e6 (overflows fp16)", 1e6),
    ] {
        g(
            &mut c,
            &format!("{label} in lora_b"),
            &|p| {
                let t = p.tensor("blk.0.attn_q.weight.lora_b");
                t.data[20..24].copy_from_slice(&bad.to_le_bytes());
            },
            &["blk.0.attn_q.weight.lora_b"],
        );
    }
    g(
        &mut c,
        "NaN in an F16 lora_a",
        &|p| {
            let t = p.tensor("blk.0.attn_q.weight.lora_a");
            t.ty = QuantType::F16;
            t.data = f16_bytes(&values(64, 5));
            t.data[6..8].copy_from_slice(&0x7e00u16.to_le_bytes());
        },
        &["blk.0.attn_q.weight.lora_a"],
    );
    g(
        &mut c,
        "the model file as an adapter",
        &|p| {
            *p = tiny();
        },
        &["general.type"],
    );
    let good = base.bytes();
    let l = gguf_fields(&good);
    let mut b = good.clone();
    let (_, _, _, _, off_at) = l.tensors[1].clone();
    put_u64(&mut b, off_at, get_u64(&good, off_at) + 2);
    c.push(Case::new(
        "gguf adapter: lora_b offset misaligned",
        Input::GgufAdapter(b),
        Expect::Refuse(vec!["offset"]),
    ));
    c.push(Case::new(
        "gguf adapter: not GGUF nor safetensors",
        Input::GgufAdapter(b"hello world, not an adapter".to_vec()),
        Expect::Refuse(vec!["magic"]),
    ));
    c.push(Case::new(
        "gguf adapter: empty file",
        Input::GgufAdapter(vec![]),
        Expect::Refuse(vec!["magic"]),
    ));

    // --- safetensors structure.
    let ents = peft_entries();
    let cfg = peft_config();
    let st = |c: &mut Vec<Case>, name: &str, bytes: Vec<u8>, needles: &[&'static str]| {
        c.push(Case::new(
            &format!("safetensors: {name}"),
            Input::peft(&cfg, bytes),
            Expect::Refuse(needles.to_vec()),
        ));
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
    st(
        &mut c,
        "header not JSON",
        st_raw("{not json at all", &[]),
        &["header"],
    );
    st(
        &mut c,
        "header a JSON array",
        st_raw("[1, 2, 3]", &[]),
        &["header"],
    );
    st(
        &mut c,
        "header empty object",
        st_raw("{}", &[]),
        &["tensors"],
    );
    st(
        &mut c,
        "header not UTF-8",
        {
            let mut b = st_raw("{\"a\": 1}", &[]);
            b[10] = 0xff;
            b
        },
        &["header"],
    );
    let hdr = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| -> Vec<u8> {
        let b = safetensors(&ents);
        let n = get_u64(&b, 0) as usize;
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&b[8..8 + n]).unwrap();
        edit(&mut v);
        st_raw(&serde_json::to_string(&v).unwrap(), &b[8 + n..])
    };
    let a0 = format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_A.weight");
    let b0 = format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_B.weight");
    let a0k = a0.clone();
    let b0k = b0.clone();
    let set = move |k: &str, f: &str, v: serde_json::Value| {
        let (k, f) = (k.to_string(), f.to_string());
        move |m: &mut serde_json::Map<String, serde_json::Value>| {
            m.get_mut(&k)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(f.clone(), v.clone());
        }
    };
    let _ = &b0k;
    for (label, edit, needles) in [
        (
            "dtype F64",
            Box::new(set(&a0k, "dtype", json!("F64"))) as Box<dyn Fn(&mut _)>,
            &["dtype"][..],
        ),
        (
            "dtype I8",
            Box::new(set(&a0k, "dtype", json!("I8"))),
            &["dtype"],
        ),
        (
            "dtype a number",
            Box::new(set(&a0k, "dtype", json!(0))),
            &["dtype"],
        ),
        (
            "dtype missing",
            Box::new(|m: &mut serde_json::Map<_, _>| {
                m.get_mut(&a0k)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("dtype");
            }),
            &["dtype"],
        ),
        (
            "shape negative",
            Box::new(set(&a0k, "shape", json!([-2, 32]))),
            &["shape"],
        ),
        (
            "shape float",
            Box::new(set(&a0k, "shape", json!([2.5, 32]))),
            &["shape"],
        ),
        (
            "shape missing",
            Box::new(set(&a0k, "shape", json!(null))),
            &["shape"],
        ),
        (
            "shape huge",
            Box::new(set(&a0k, "shape", json!([u64::MAX, u64::MAX]))),
            &["data_offsets"],
        ),
        (
            "shape disagrees with the data length",
            Box::new(set(&a0k, "shape", json!([2, 16]))),
            &["data_offsets"],
        ),
        (
            "offsets reversed",
            Box::new(set(&a0k, "data_offsets", json!([256, 0]))),
            &["data_offsets"],
        ),
        (
            "offsets past the end",
            Box::new(set(&a0k, "data_offsets", json!([0u64, 1u64 << 40]))),
            &["data_offsets"],
        ),
        (
            "offsets u64::MAX",
            Box::new(set(&a0k, "data_offsets", json!([u64::MAX - 255, u64::MAX]))),
            &["data_offsets"],
        ),
        (
            "offsets 3 numbers",
            Box::new(set(&a0k, "data_offsets", json!([0, 256, 512]))),
            &["data_offsets"],
        ),
        (
            "offsets negative",
            Box::new(set(&a0k, "data_offsets", json!([-256, 0]))),
            &["data_offsets"],
        ),
        (
            "offsets overlap",
            Box::new(set(&b0k, "data_offsets", json!([0, 256]))),
            &["data_offsets"],
        ),
        (
            "entry not an object",
            Box::new({
                let k = a0k.clone();
                move |m: &mut serde_json::Map<String, serde_json::Value>| {
                    m.insert(k.clone(), json!([1, 2]));
                }
            }),
            &[],
        ),
        (
            "__metadata__ with a number",
            Box::new(|m: &mut serde_json::Map<String, serde_json::Value>| {
                m.insert("__metadata__".into(), json!({"format": 1}));
            }),
            &["__metadata__"],
        ),
    ] {
        st(&mut c, label, hdr(&*edit), needles);
    }
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
    for (label, b, needles) in [
        (
            "A 3-D",
            with(&|e| {
                e[0] = st_entry(&e[0].name.clone(), &[2, 32, 1], 1);
            }),
            &["q_proj.lora_A"][..],
        ),
        (
            "B rank 3",
            with(&|e| {
                e[1] = st_entry(&e[1].name.clone(), &[32, 3], 1);
            }),
            &["rank"],
        ),
        (
            "A n_in 16",
            with(&|e| {
                e[0] = st_entry(&e[0].name.clone(), &[2, 16], 1);
            }),
            &["q_proj.lora_A"],
        ),
        (
            "B n_out 8 on v_proj",
            with(&|e| {
                e[3] = st_entry(&e[3].name.clone(), &[8, 2], 1);
            }),
            &["v_proj"],
        ),
        (
            "rank 0",
            with(&|e| {
                e[0] = st_entry(&e[0].name.clone(), &[0, 32], 1);
                e[1] = st_entry(&e[1].name.clone(), &[32, 0], 1);
            }),
            &["rank"],
        ),
        (
            "missing lora_B",
            with(&|e| {
                e.remove(1);
            }),
            &["q_proj"],
        ),
        (
            "name without the PEFT prefix",
            with(&|e| {
                e[0].name = "model.layers.0.self_attn.q_proj.lora_A.weight".into();
            }),
            &["base_model.model"],
        ),
        (
            "DoRA magnitude tensor",
            with(&|e| {
                e.push(st_entry(
                    &format!("{PEFT_PREFIX}.0.self_attn.q_proj.lora_magnitude_vector"),
                    &[32],
                    1,
                ));
            }),
            &["lora_magnitude_vector"],
        ),
        (
            "unknown module",
            with(&|e| {
                e[0].name = e[0].name.replace("q_proj", "x_proj");
                e[1].name = e[1].name.replace("q_proj", "x_proj");
            }),
            &["x_proj"],
        ),
        (
            "layer 9 (base has 2)",
            with(&|e| {
                e[0].name = e[0].name.replace(".0.", ".9.");
                e[1].name = e[1].name.replace(".0.", ".9.");
            }),
            &["layers.9"],
        ),
        (
            "layer 2^64 in the name",
            with(&|e| {
                e[0].name = e[0].name.replace(".0.", ".18446744073709551616.");
                e[1].name = e[1].name.replace(".0.", ".18446744073709551616.");
            }),
            &["18446744073709551616"],
        ),
        (
            "embedding factors on a linear module",
            with(&|e| {
                e[0].name = e[0].name.replace("lora_A", "lora_embedding_A");
            }),
            &["q_proj"],
        ),
        (
            "F16 dtype with F32-sized data",
            with(&|e| {
                e[0].dtype = "F16".into();
            }),
            &["data_offsets"],
        ),
    ] {
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
        e[0].data = vec![0x80, 0x7f].repeat(64);
    });
    st(&mut c, "BF16 +Inf in lora_A", b, &["q_proj.lora_A"]);

    // --- adapter_config.json.
    let cf = |c: &mut Vec<Case>, name: &str, input: Input, needles: &[&'static str]| {
        c.push(Case::new(
            &format!("adapter_config: {name}"),
            input,
            Expect::Refuse(needles.to_vec()),
        ));
    };
    cf(
        &mut c,
        "missing",
        Input::Peft {
            config: None,
            weights: Some(good_st.clone()),
            file_arg: false,
        },
        &["adapter_config.json"],
    );
    cf(
        &mut c,
        "missing (file argument)",
        Input::Peft {
            config: None,
            weights: Some(good_st.clone()),
            file_arg: true,
        },
        &["adapter_config.json"],
    );
    cf(
        &mut c,
        "weights missing",
        Input::Peft {
            config: Some(serde_json::to_vec(&cfg).unwrap()),
            weights: None,
            file_arg: false,
        },
        &["adapter_model.safetensors"],
    );
    cf(
        &mut c,
        "empty",
        Input::peft_cfg_text(""),
        &["adapter_config.json"],
    );
    cf(
        &mut c,
        "not JSON",
        Input::peft_cfg_text("{\"peft_type\": LORA}"),
        &["adapter_config.json"],
    );
    cf(
        &mut c,
        "a JSON array",
        Input::peft_cfg_text("[]"),
        &["adapter_config.json"],
    );
    cf(
        &mut c,
        "not UTF-8",
        Input::Peft {
            config: Some(b"{\"peft_type\": \"LO\xffRA\"}".to_vec()),
            weights: Some(good_st.clone()),
            file_arg: false,
        },
        &["UTF-8"],
    );
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut v = cfg.clone();
        f(v.as_object_mut().unwrap());
        Input::peft(&v, good_st.clone())
    };
    let put = |k: &'static str, v: serde_json::Value| {
        move |m: &mut serde_json::Map<String, serde_json::Value>| {
            m.insert(k.into(), v.clone());
        }
    };
    for (label, input, needles) in [
        (
            "peft_type missing",
            edit(&|m| {
                m.remove("peft_type");
            }),
            &["peft_type"][..],
        ),
        (
            "peft_type IA3",
            edit(&put("peft_type", json!("IA3"))),
            &["peft_type"],
        ),
        (
            "peft_type a number",
            edit(&put("peft_type", json!(1))),
            &["peft_type"],
        ),
        ("r a string", edit(&put("r", json!("2"))), &["r"]),
        ("r negative", edit(&put("r", json!(-2))), &["r"]),
        ("r 0", edit(&put("r", json!(0))), &["r"]),
        (
            "r 8 but tensors have rank 2",
            edit(&put("r", json!(8))),
            &["rank"],
        ),
        (
            "r 2^64",
            edit(&put("r", json!(1.8446744073709552e19))),
            &["r"],
        ),
        (
            "lora_alpha a string",
            edit(&put("lora_alpha", json!("4"))),
            &["lora_alpha"],
        ),
        (
            "use_rslora a string",
            edit(&put("use_rslora", json!("yes"))),
            &["use_rslora"],
        ),
        (
            "use_dora true",
            edit(&put("use_dora", json!(true))),
            &["use_dora"],
        ),
        ("bias all", edit(&put("bias", json!("all"))), &["bias"]),
        (
            "modules_to_save",
            edit(&put("modules_to_save", json!(["lm_head"]))),
            &["modules_to_save"],
        ),
        (
            "init_lora_weights pissa",
            edit(&put("init_lora_weights", json!("pissa"))),
            &["init_lora_weights"],
        ),
        (
            "unknown field",
            edit(&put("some_future_option", json!(3))),
            &["some_future_option"],
        ),
        (
            "target_modules missing",
            edit(&|m| {
                m.remove("target_modules");
            }),
            &["target_modules"],
        ),
        (
            "target_modules a number",
            edit(&put("target_modules", json!(5))),
            &["target_modules"],
        ),
        (
            "target_modules list of numbers",
            edit(&put("target_modules", json!([1, 2]))),
            &["target_modules"],
        ),
        (
            "target_modules bad regex",
            edit(&put("target_modules", json!("(q_proj"))),
            &["target_modules"],
        ),
        (
            "target_modules unknown module",
            edit(&put(
                "target_modules",
                json!(["q_proj", "v_proj", "rotary"]),
            )),
            &["target_modules"],
        ),
        (
            "target_modules does not select v_proj",
            edit(&put("target_modules", json!(["q_proj"]))),
            &["target_modules"],
        ),
        (
            "exclude_modules excludes q_proj",
            edit(&put("exclude_modules", json!(["q_proj"]))),
            &["exclude_modules"],
        ),
        (
            "layers_to_transform [1]",
            edit(&put("layers_to_transform", json!([1]))),
            &["layers_to_transform"],
        ),
        (
            "layers_to_transform [-1]",
            edit(&put("layers_to_transform", json!([-1]))),
            &["layers_to_transform"],
        ),
        (
            "layers_to_transform a string",
            edit(&put("layers_to_transform", json!("0"))),
            &["layers_to_transform"],
        ),
        (
            "layers_pattern other",
            edit(&put("layers_pattern", json!("h"))),
            &["layers_pattern"],
        ),
        (
            "rank_pattern value a string",
            edit(&put("rank_pattern", json!({"q_proj": "2"}))),
            &["rank_pattern"],
        ),
        (
            "rank_pattern says 4",
            edit(&put("rank_pattern", json!({"q_proj": 4}))),
            &["rank_pattern"],
        ),
        (
            "rank_pattern bad regex",
            edit(&put("rank_pattern", json!({"q_proj[": 2}))),
            &["rank_pattern"],
        ),
        (
            "rank_pattern a list",
            edit(&put("rank_pattern", json!([2]))),
            &["rank_pattern"],
        ),
        (
            "alpha_pattern negative",
            edit(&put("alpha_pattern", json!({"q_proj": -1}))),
            &["alpha_pattern"],
        ),
    ] {
        cf(&mut c, label, input, needles);
    }
    // A backtracking-heavy pattern that matches no module: harmless.
    c.push(Case::new(
        "adapter_config: alpha_pattern catastrophic regex",
        edit(&put("alpha_pattern", json!({"(a+)+$": 1}))),
        Expect::Either,
    ));
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
            c.push(Case::new(
                &format!("safetensors header byte {i} = {v:#x}"),
                Input::peft(&peft_config(), b),
                Expect::Either,
            ));
        }
    }
    c
}

fn all_cases() -> Vec<Case> {
    let mut c = model_cases();
    c.extend(adapter_cases());
    c.extend(generated_cases());
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
    let root = scratch("cli");
    let base_model = root.join("base.gguf");
    std::fs::write(&base_model, tiny().bytes()).unwrap();
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
                    args.insert(0, "info".into());
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
    let root = scratch("heap");
    let model_path = root.join("base.gguf");
    std::fs::write(&model_path, tiny().bytes()).unwrap();
    let model = Model::open(&model_path).expect("valid tiny model");
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
    let dir = scratch("session");
    let mp = dir.join("tiny.gguf");
    std::fs::write(&mp, tiny().bytes()).unwrap();
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
    let dir = scratch("swap");
    let mp = dir.join("tiny.gguf");
    std::fs::write(&mp, tiny().bytes()).unwrap();
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
    let nine: Vec<(&Arc<Adapter>, f32)> = (0..9).map(|_| (&good, 0.5)).collect();
    let attempts: Vec<(&str, Vec<(&Arc<Adapter>, f32)>)> = vec![
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
    let dir = scratch("cli-req");
    let mp = dir.join("tiny.gguf");
    std::fs::write(&mp, tiny().bytes()).unwrap();
    let bad_ad = dir.join("bad-adapter.gguf");
    let mut bp = gguf_adapter_parts(TINY, 2);
    bp.reshape("blk.0.attn_q.weight.lora_b", &[3, 32], QuantType::F32);
    std::fs::write(&bad_ad, bp.bytes()).unwrap();
    let out = dir.join("out.npy");
    let m = mp.as_os_str();
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (
            vec![
                "logits".as_ref(),
                "-m".as_ref(),
                m,
                "--tokens".as_ref(),
                "1,2,48".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
            "48",
        ),
        (
            vec![
                "logits".as_ref(),
                "-m".as_ref(),
                m,
                "--tokens".as_ref(),
                "1,-2".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
            "--tokens",
        ),
        (
            vec![
                "logits".as_ref(),
                "-m".as_ref(),
                m,
                "--tokens".as_ref(),
                "99999999999".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
            "--tokens",
        ),
        (
            vec![
                "-m".as_ref(),
                m,
                "-p".as_ref(),
                "abcdefghijklmnop".as_ref(),
                "-c".as_ref(),
                "4".as_ref(),
                "-n".as_ref(),
                "1".as_ref(),
                "--temp".as_ref(),
                "0".as_ref(),
            ],
            "context",
        ),
        (
            vec![
                "-m".as_ref(),
                m,
                "-p".as_ref(),
                "ab".as_ref(),
                "-n".as_ref(),
                "1".as_ref(),
                "--adapter".as_ref(),
                bad_ad.as_os_str(),
            ],
            "bad-adapter.gguf",
        ),
        (
            vec![
                "-m".as_ref(),
                m,
                "-p".as_ref(),
                "ab".as_ref(),
                "-n".as_ref(),
                "1".as_ref(),
                "-c".as_ref(),
                "0".as_ref(),
            ],
            "ctx-size",
        ),
        (
            vec![
                "-m".as_ref(),
                m,
                "-p".as_ref(),
                "ab".as_ref(),
                "-n".as_ref(),
                "1".as_ref(),
                "--temp".as_ref(),
                "nan".as_ref(),
            ],
            "temp",
        ),
        (
            vec![
                "-m".as_ref(),
                m,
                "-p".as_ref(),
                "ab".as_ref(),
                "-n".as_ref(),
                "1".as_ref(),
                "--adapter".as_ref(),
                bad_ad.as_os_str(),
                "--adapter".as_ref(),
                "/nonexistent/x.gguf".as_ref(),
            ],
            "bad-adapter.gguf",
        ),
    ];
    let mut failures = vec![];
    for (args, needle) in &cases {
        let r = run_limited(args, &dir, Duration::from_secs(20));
        let ok = !r.timed_out
            && r.signal.is_none()
            && matches!(r.code, Some(1) | Some(2))
            && !r.stderr.contains("panicked")
            && r.stderr
                .lines()
                .any(|l| l.starts_with("edge-run: error: ") && l.contains(needle));
        if !ok {
            failures.push(format!(
                "{args:?}: exit {:?} signal {:?}: {}",
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
    let r = run_limited(
        &[
            "-m".as_ref(),
            m,
            "-p".as_ref(),
            "ab".as_ref(),
            "-n".as_ref(),
            "2".as_ref(),
            "--temp".as_ref(),
            "0".as_ref(),
            "--quiet".as_ref(),
        ],
        &dir,
        Duration::from_secs(20),
    );
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

/// The smaller model the fuzz targets' seeds use: width 8, 1 layer, F16 weights, vocabulary 32.
fn micro_parts() -> Parts {
    let d = Dims {
        vocab: 32,
        embd: 8,
        layers: 1,
        head: 2,
        head_kv: 1,
        ff: 16,
        ctx: 32,
    };
    model_parts(d, QuantType::F16)
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
    let mut t: Vec<String> = (b'!'..=b'~').map(|b| (b as char).to_string()).collect();
    t.truncate(29);
    t.extend([
        "\u{120}".to_string(),
        "\u{120}a".into(),
        "<|im_end|>".into(),
    ]);
    p.set("tokenizer.ggml.model", "gpt2")
        .set("tokenizer.ggml.pre", "smollm")
        .set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(t)),
        );
    p.set(
        "tokenizer.ggml.merges",
        MetaValue::Array(MetaArray::String(vec!["\u{120} a".into()])),
    );
    p.set("llama.attention.key_length", MetaValue::U32(4))
        .set("llama.rope.scaling.type", "linear")
        .set("llama.rope.scaling.factor", MetaValue::F32(2.0));
    w("model_load", "micro-gpt2.gguf", &p.bytes());
    let md = Dims {
        vocab: 32,
        embd: 8,
        layers: 1,
        head: 2,
        head_kv: 1,
        ff: 16,
        ctx: 32,
    };
    let mut ad = gguf_adapter_parts(md, 2);
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
