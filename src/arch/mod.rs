//! Model architectures. Each family is one short forward function over the session's buffers
//! ([`llama`], [`gemma3`], [`qwen2`], [`qwen3`], [`phi3`]); the pieces they share — embedding lookup (with embedding LoRA), RMSNorm,
//! RoPE (adjacent pairs or NeoX halves), causal attention over the KV cache (optionally a sliding
//! window kept in a ring buffer), `linear` with fused LoRA, activations and the output head — live in
//! [`ops`].
//!
//! What an architecture provides:
//! - its hyper-parameter rules at load ([`read_hparams`], which the loader calls after the common
//!   ones; llama and the Qwen families have none of their own), and the extra per-layer tensors it needs
//!   ([`crate::model::Layer`]'s optional fields);
//! - a `forward(env, st, tokens, pos0) -> rows` that evaluates one batch and leaves the logits of the
//!   last `rows` positions in `st.logits`, allocating nothing;
//! - whether its GGUF Q/K rows are permuted for interleaved RoPE ([`Arch::permuted_qk`], with the
//!   [`Arch`] enum in [`crate::model`]), which decides how PEFT adapters' q/k factors line up with the
//!   base.
pub(crate) mod block;
pub mod gemma3;
pub mod kv;
pub(crate) mod linear;
pub mod llama;
pub(crate) mod ops;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub(crate) mod rope;
pub(crate) mod shift;

use crate::adapter::{Applied, ControlVector};
use crate::gguf::Gguf;
use crate::kernels::lora::LoraKernels;
use crate::kernels::Kernels;
use crate::model::{Arch, HParams, Model};
use crate::threadpool::ThreadPool;
use crate::{Error, Result};

/// How activations are quantized for the integer dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    /// One 8-bit quantization per block, exactly as ggml does (fastest).
    Q8,
    /// 8-bit quantization plus an 8-bit quantization of its residual, `x ≈ d₁q₁ + d₂q₂`: two integer dot
    /// products per block over the same weights (read from memory once), about 100× less activation
    /// rounding error. Closer to the fp32 reference than llama.cpp; the default.
    Q8x2,
}

/// The sizes a session's buffers are made for ([`ops::State::new`]), from its configuration.
pub(crate) struct Capacity {
    pub n_ctx: usize,
    /// Already clamped to `n_ctx`.
    pub n_batch: usize,
    pub n_threads: usize,
    pub logits_all: bool,
    pub act_quant: ActQuant,
    pub max_adapters: usize,
    pub max_rank: usize,
    pub type_k: kv::KvType,
    pub type_v: kv::KvType,
}

/// Everything a forward pass reads but does not own.
pub(crate) struct Env<'a> {
    pub m: &'a Model,
    pub k: &'static Kernels,
    pub lk: &'static LoraKernels,
    pub pool: &'a ThreadPool,
    pub applied: &'a Applied,
    /// The control vector added to the residual stream after each block, if any.
    pub cvec: Option<&'a ControlVector>,
    /// Context capacity (the global layers' KV length).
    pub n_ctx: usize,
    /// Keep the logits of every position of the batch, not only the last.
    pub logits_all: bool,
}

/// Read the family's own hyper-parameters into `hp` (the loader read the common ones).
pub(crate) fn read_hparams(g: &Gguf<'_>, fname: &str, hp: &mut HParams) -> Result<()> {
    match hp.arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => Ok(()),
        Arch::Gemma3 => gemma3::hparams(g, fname, hp),
        Arch::Phi3 => phi3::hparams(g, fname, hp),
    }
}

/// The f32 at metadata key `key` (`default` where the file has none), refused unless finite and
/// `> 0` (`≥ 0` with `zero_ok`).
pub(crate) fn finite_f32(
    g: &Gguf<'_>,
    fname: &str,
    key: String,
    default: f32,
    zero_ok: bool,
) -> Result<f32> {
    let v = g.opt_f32(&key)?.unwrap_or(default);
    let in_range = if zero_ok { v >= 0.0 } else { v > 0.0 };
    if v.is_finite() && in_range {
        return Ok(v);
    }
    let bound = if zero_ok { "≥ 0" } else { "> 0" };
    Err(Error::format(
        fname,
        key,
        None,
        format!("must be finite and {bound}, got {v}"),
    ))
}

/// How layer `l` rotates its queries and keys: which RoPE table of [`ops::State::rope`] (0: global
/// frequencies, 1: the sliding-window layers') and which pairing.
pub(crate) fn qk_rope(hp: &HParams, l: usize) -> (usize, block::Rotate) {
    match hp.arch {
        // adjacent pairs, as GGUF stores llama's permuted Q/K rows
        Arch::Llama => (0, ops::rope_pairs),
        // NeoX halves, with the local layers' own frequencies
        Arch::Gemma3 => (usize::from(hp.swa[l]), ops::rope_neox),
        // NeoX halves (Hugging Face Q/K order); Phi-3's window layers keep the global frequencies
        Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 => (0, ops::rope_neox),
    }
}

/// The forward pass of the model's family over one batch of `tokens` at positions
/// `pos0..pos0 + tokens.len()` (the caller checked ids and room). Returns how many logit rows
/// `st.logits` now holds.
pub(crate) fn forward(env: &Env<'_>, st: &mut ops::State, tokens: &[u32], pos0: usize) -> usize {
    match env.m.hp.arch {
        // Phi-3 is llama's block over its fused tensors' parts
        Arch::Llama | Arch::Phi3 => llama::forward(env, st, tokens, pos0),
        Arch::Gemma3 => gemma3::forward(env, st, tokens, pos0),
        Arch::Qwen2 => qwen2::forward(env, st, tokens, pos0),
        Arch::Qwen3 => qwen3::forward(env, st, tokens, pos0),
    }
}
