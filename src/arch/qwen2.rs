//! Qwen2 and Qwen2.5 (`qwen2`), as llama.cpp defines it for GGUF files: llama's pre-norm block
//! (RMSNorm, grouped-query attention, SwiGLU feed-forward) with
//! - biases on the q, k and v projections (`attn_q.bias`, `attn_k.bias`, `attn_v.bias`), added after
//!   the projection and its LoRA;
//! - NeoX-style RoPE (rotating x[i] with x[i + rot/2]; GGUF keeps the Hugging Face Q/K row order) with
//!   the file's `rope.freq_base` (1e6 for Qwen2.5);
//! - the output head tied to `token_embd` unless `output.weight` exists.
use super::ops::State;
use super::{block, llama, Env};

pub(crate) fn forward(env: &Env<'_>, st: &mut State, tokens: &[u32], pos0: usize) -> usize {
    // (q, k, v) = Wqkv·xb + (bq, bk, bv)
    llama::forward_with(env, st, tokens, pos0, block::qkv_bias)
}
