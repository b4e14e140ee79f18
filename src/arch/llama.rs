//! The LLaMA forward pass (`llama`, `mistral`): RMSNorm, RoPE on adjacent pairs (GGUF stores Q/K
//! permuted for it), grouped-query attention, SwiGLU feed-forward, pre-norm residual blocks. Llama 3.x's
//! RoPE frequency scaling comes as per-frequency divisors (`rope_freqs.weight`), folded into the RoPE
//! table's frequencies once per session (`rope::Rope`).
//!
//! The Qwen families run this same block with one step of their own between the q/k/v projections
//! and RoPE ([`AfterQkv`]): Qwen2's biases, Qwen3's per-head q/k norms.
use super::block;
use super::ops::{self, add, State};
use super::Env;
use crate::model::Layer;

/// A family's step on the fresh q, k and v rows of a batch of `b` tokens (`st.work.qkv()`), before RoPE.
pub(crate) type AfterQkv = fn(env: &Env<'_>, st: &mut State, layer: &Layer, b: usize);

pub(crate) fn forward(env: &Env<'_>, st: &mut State, tokens: &[u32], pos0: usize) -> usize {
    forward_with(env, st, tokens, pos0, |_, _, _, _| {})
}

/// The llama block over one batch, with the family's `after_qkv` step.
pub(crate) fn forward_with(
    env: &Env<'_>,
    st: &mut State,
    tokens: &[u32],
    pos0: usize,
    after_qkv: AfterQkv,
) -> usize {
    let hp = &env.m.hp;
    let b = tokens.len();
    let (e, ff) = (hp.n_embd, hp.n_ff);

    // x[t] = token_embd[tokens[t]]                                         [B, e]
    ops::embed(env, &mut st.x, &mut st.lora_t, tokens, 1.0);
    // RoPE angles for this batch's positions                              [B, rope_dim/2]
    st.rope[0].set_positions(pos0, b);

    for (l, layer) in env.m.layers.iter().enumerate() {
        // --- attention: x += Wo·attention(RoPE(q), RoPE(k), v), (q, k, v) = after_qkv(Wqkv·xb),
        //     xb = rmsnorm(x) ---
        block::norm_qkv(env, st, layer, b);
        after_qkv(env, st, layer, b);
        // RoPE with the family's pairing (adjacent pairs for llama's permuted Q/K, NeoX halves)
        let (table, rotate) = super::qk_rope(hp, l);
        block::rope_qk(env, st, table, b, rotate);
        // all positions, or the last `n_swa` on a sliding-window layer (Phi-3)
        let window = if hp.swa[l] { hp.n_swa } else { 0 };
        block::attend(env, st, l, pos0, b, window);
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
