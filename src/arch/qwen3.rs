//! Qwen3 (`qwen3`, dense), as llama.cpp defines it for GGUF files: llama's pre-norm block (RMSNorm,
//! grouped-query attention, SwiGLU feed-forward) with
//! - a head size of its own (`attention.key_length`, e.g. 128 at width 1024): q has
//!   n_head · head_dim rows, which need not equal the width;
//! - per-head RMSNorm of q and k (`attn_q_norm`, `attn_k_norm`, weights used as stored) before RoPE;
//! - no biases; NeoX-style RoPE (GGUF keeps the Hugging Face Q/K row order) with the file's base;
//! - the output head tied to `token_embd` unless `output.weight` exists.
use super::block;
use super::ops::{self, add, rmsnorm_rows_inplace, State};
use super::Env;
use crate::model::WeightRef;

pub(crate) fn forward(env: &Env<'_>, st: &mut State, tokens: &[u32], pos0: usize) -> usize {
    let m = env.m;
    let hp = &m.hp;
    let b = tokens.len();
    let (e, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
    let norm = |w: &Option<WeightRef>| m.f32s(w.as_ref().expect("qwen3 norms checked at load"));

    // x[t] = token_embd[tokens[t]]                                         [B, e]
    ops::embed(env, &mut st.x, &mut st.lora_t, tokens, 1.0);
    // RoPE angles for this batch's positions                              [B, rope_dim/2]
    st.rope[0].set_positions(pos0, b);

    for (l, layer) in m.layers.iter().enumerate() {
        // --- attention: x += Wo·attention(RoPE(norm(Wq·xb)), RoPE(norm(Wk·xb)), Wv·xb) ---
        block::norm_qkv(env, st, layer, b);
        // QK-norm: every head of q and k RMS-normed                          [B, n_head | n_head_kv, hd]
        let (q, k, _) = st.work.qkv();
        rmsnorm_rows_inplace(&mut q[..b * qd], norm(&layer.attn_q_norm), hp.rms_eps);
        rmsnorm_rows_inplace(&mut k[..b * kvd], norm(&layer.attn_k_norm), hp.rms_eps);
        let (table, rotate) = super::qk_rope(hp, l);
        block::rope_qk(env, st, table, b, rotate);
        block::attend(env, st, l, pos0, b, 0);
        block::attn_output(env, st, layer, b);
        add(&mut st.x[..b * e], &st.work.proj()[..b * e]);

        // --- feed-forward: x += Wdown·(silu(Wgate·xb) ⊙ Wup·xb) ---
        block::ffn_input(env, st, layer, b);
        (env.k.swiglu)(&mut st.hb[..b * ff], &st.work.up()[..b * ff]);
        block::ffn_output(env, st, layer, b);
        add(&mut st.x[..b * e], &st.work.proj()[..b * e]);

        // control vector: x += v_l (when it has this block)
        block::steer(env, st, l, b);
    }

    // logits = Wout · rmsnorm(x)                                           [B or 1, n_vocab]
    ops::output(env, st, b)
}
