//! Model architectures. Each family is one short forward function over the session's buffers
//! ([`llama`], [`gemma3`]); the pieces they share — embedding lookup (with embedding LoRA), RMSNorm,
//! RoPE (adjacent pairs or NeoX halves), causal attention over the KV cache (optionally a sliding
//! window kept in a ring buffer), `linear` with fused LoRA, activations and the output head — live in
//! [`ops`].
//!
//! What an architecture provides:
//! - its hyper-parameter rules at load ([`gemma3::hparams`] for Gemma 3; llama's are the defaults in
//!   `model.rs`), and the extra per-layer tensors it needs ([`crate::model::Layer`]'s optional fields);
//! - a `forward(env, st, tokens, pos0) -> rows` that evaluates one batch and leaves the logits of the
//!   last `rows` positions in `st.logits`, allocating nothing;
//! - whether its GGUF Q/K rows are permuted for interleaved RoPE ([`Arch::permuted_qk`]), which decides
//!   how PEFT adapters' q/k factors line up with the base.
pub mod gemma3;
pub mod llama;
pub(crate) mod ops;

use crate::adapter_set::Applied;
use crate::kernels::lora::LoraKernels;
use crate::kernels::Kernels;
use crate::model::Model;
use crate::threadpool::ThreadPool;

/// The model families edge-run runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `llama`, `mistral`: RMSNorm, interleaved RoPE, GQA, SwiGLU.
    Llama,
    /// `gemma3`: scaled embeddings, QK-norm, sandwich norms, GELU-gated FFN, NeoX RoPE, local
    /// (sliding-window) and global layers with their own RoPE bases.
    Gemma3,
}

impl Arch {
    /// `general.architecture` values edge-run accepts.
    pub const SUPPORTED: &'static [&'static str] = &["llama", "mistral", "gemma3"];

    /// The architecture for a `general.architecture` value.
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "gemma3" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    /// Whether llama.cpp's converter stores this architecture's `attn_q` / `attn_k` rows permuted so
    /// that RoPE rotates adjacent pairs (it does for llama; Gemma 3 keeps the Hugging Face order and
    /// uses NeoX-style RoPE). PEFT adapters' q/k `lora_B` rows must then be permuted the same way.
    pub fn permuted_qk(self) -> bool {
        matches!(self, Arch::Llama)
    }
}

/// Everything a forward pass reads but does not own.
pub(crate) struct Env<'a> {
    pub m: &'a Model,
    pub k: &'static Kernels,
    pub lk: &'static LoraKernels,
    pub pool: &'a ThreadPool,
    pub applied: &'a Applied,
    /// Context capacity (the global layers' KV length).
    pub n_ctx: usize,
    /// Keep the logits of every position of the batch, not only the last.
    pub logits_all: bool,
}

/// Evaluate one batch of `tokens` at positions `pos0..pos0 + tokens.len()` (the caller checked ids and
/// room). Returns how many logit rows `st.logits` now holds.
pub(crate) fn forward(env: &Env<'_>, st: &mut ops::State, tokens: &[u32], pos0: usize) -> usize {
    match env.m.hp.arch {
        Arch::Llama => llama::forward(env, st, tokens, pos0),
        Arch::Gemma3 => gemma3::forward(env, st, tokens, pos0),
    }
}
