//! Qwen3 (`qwen3`, dense), as llama.cpp defines it for GGUF files: llama's pre-norm block (RMSNorm,
//! grouped-query attention, SwiGLU feed-forward) with
//! - a head size of its own (`attention.key_length`, e.g. 128 at width 1024): q has
//!   n_head · head_dim rows, which need not equal the width;
//! - per-head RMSNorm of q and k (`attn_q_norm`, `attn_k_norm`, weights used as stored) before RoPE;
//! - no biases; NeoX-style RoPE (GGUF keeps the Hugging Face Q/K row order) with the file's base;
//! - the output head tied to `token_embd` unless `output.weight` exists.
use super::ops::{rmsnorm_rows_inplace, State};
use super::{llama, Env};
use crate::model::{Layer, WeightRef};

pub(crate) fn forward(env: &Env<'_>, st: &mut State, tokens: &[u32], pos0: usize) -> usize {
    llama::forward_with(env, st, tokens, pos0, qk_norm)
}

/// QK-norm: every head of q and k RMS-normed                  [B, n_head | n_head_kv, hd]
fn qk_norm(env: &Env<'_>, st: &mut State, layer: &Layer, b: usize) {
    let (m, hp) = (env.m, &env.m.hp);
    let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
    let norm = |w: &Option<WeightRef>| m.f32s(w.as_ref().expect("qwen3 norms checked at load"));
    let (q, k, _) = st.work.qkv();
    rmsnorm_rows_inplace(&mut q[..b * qd], norm(&layer.attn_q_norm), hp.rms_eps);
    rmsnorm_rows_inplace(&mut k[..b * kvd], norm(&layer.attn_k_norm), hp.rms_eps);
}
