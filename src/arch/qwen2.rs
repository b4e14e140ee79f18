//! Qwen2 and Qwen2.5 (`qwen2`), as llama.cpp defines it for GGUF files: llama's pre-norm block
//! (RMSNorm, grouped-query attention, SwiGLU feed-forward) with
//! - biases on the q, k and v projections (`attn_q.bias`, `attn_k.bias`, `attn_v.bias`), added after
//!   the projection and its LoRA;
//! - NeoX-style RoPE (rotating x[i] with x[i + rot/2]; GGUF keeps the Hugging Face Q/K row order) with
//!   the file's `rope.freq_base` (1e6 for Qwen2.5);
//! - the output head tied to `token_embd` unless `output.weight` exists.
use super::block;
use super::ops::{self, add, State};
use super::Env;

pub(crate) fn forward(env: &Env<'_>, st: &mut State, tokens: &[u32], pos0: usize) -> usize {
    let hp = &env.m.hp;
    let b = tokens.len();
    let (e, ff) = (hp.n_embd, hp.n_ff);

    // x[t] = token_embd[tokens[t]]                                         [B, e]
    ops::embed(env, &mut st.x, &mut st.lora_t, tokens, 1.0);
    // RoPE angles for this batch's positions                              [B, rope_dim/2]
    st.rope[0].set_positions(pos0, b);

    for (l, layer) in env.m.layers.iter().enumerate() {
        // --- attention: x += Wo·attention(RoPE(Wq·xb + bq), RoPE(Wk·xb + bk), Wv·xb + bv) ---
        block::norm_qkv(env, st, layer, b);
        block::qkv_bias(env, st, layer, b);
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
