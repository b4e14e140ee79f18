//! The LLaMA forward pass (`llama`, `mistral`): RMSNorm, RoPE on adjacent pairs (GGUF stores Q/K
//! permuted for it), grouped-query attention, SwiGLU feed-forward, pre-norm residual blocks.
use super::ops::{self, add, linear, rmsnorm_rows, swiglu, State};
use super::Env;
use crate::model::WeightRef;

pub(crate) fn forward(env: &Env<'_>, st: &mut State, tokens: &[u32], pos0: usize) -> usize {
    let m = env.m;
    let hp = &m.hp;
    let b = tokens.len();
    let (e, qd, kvd, ff, hd) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff, hp.head_dim);

    // x[t] = token_embd[tokens[t]]                                         [B, e]
    ops::embed(env, &mut st.x, &mut st.lora_t, tokens, 1.0);
    // RoPE angles for this batch's positions                              [B, rope_dim/2]
    st.rope[0].set_positions(pos0, b);
    let half = hp.rope_dim / 2;

    for (l, layer) in m.layers.iter().enumerate() {
        // --- attention ---
        rmsnorm_rows(
            &mut st.xb[..b * e],
            &st.x[..b * e],
            m.f32s(&layer.attn_norm),
            hp.rms_eps,
        );
        // q, k, v = Wq·xb, Wk·xb, Wv·xb                                     [B, qd], [B, kvd], [B, kvd]
        {
            let outs: [(&WeightRef, &mut [f32]); 3] = [
                (&layer.attn_q, &mut st.q[..b * qd]),
                (&layer.attn_k, &mut st.kk[..b * kvd]),
                (&layer.attn_v, &mut st.v[..b * kvd]),
            ];
            linear(
                env,
                &mut st.xq,
                st.xb.input(b * e),
                e,
                b,
                outs,
                &mut st.lora_t,
            );
        }
        // RoPE on q and k (adjacent pairs, as GGUF stores llama's Q/K)
        for t in 0..b {
            let cs = &st.rope[0].cs[t * half..(t + 1) * half];
            ops::rope_pairs(&mut st.q[t * qd..(t + 1) * qd], hd, cs);
            ops::rope_pairs(&mut st.kk[t * kvd..(t + 1) * kvd], hd, cs);
        }
        // att_out[t, h] = softmax(q[t,h]·K[0..=pos]ᵀ / √hd) · V; k, v appended to the cache    [B, qd]
        ops::attention(
            env,
            &mut st.kv,
            &mut st.att,
            &st.q,
            &st.kk,
            &st.v,
            &mut st.att_out,
            l,
            pos0,
            b,
            0,
            hp.att_scale,
        );
        // x += Wo·att_out                                                  [B, e]
        linear(
            env,
            &mut st.xq,
            st.att_out.input(b * qd),
            qd,
            b,
            [(&layer.attn_output, &mut st.proj[..b * e])],
            &mut st.lora_t,
        );
        add(&mut st.x[..b * e], &st.proj[..b * e]);

        // --- feed-forward: x += Wdown·(silu(Wgate·xb) ⊙ Wup·xb) ---
        rmsnorm_rows(
            &mut st.xb[..b * e],
            &st.x[..b * e],
            m.f32s(&layer.ffn_norm),
            hp.rms_eps,
        );
        {
            let outs: [(&WeightRef, &mut [f32]); 2] = [
                (&layer.ffn_gate, &mut st.hb[..b * ff]),
                (&layer.ffn_up, &mut st.hb2[..b * ff]),
            ];
            linear(
                env,
                &mut st.xq,
                st.xb.input(b * e),
                e,
                b,
                outs,
                &mut st.lora_t,
            );
        }
        swiglu(&mut st.hb[..b * ff], &st.hb2[..b * ff]);
        linear(
            env,
            &mut st.xq,
            st.hb.input(b * ff),
            ff,
            b,
            [(&layer.ffn_down, &mut st.proj[..b * e])],
            &mut st.lora_t,
        );
        add(&mut st.x[..b * e], &st.proj[..b * e]);
    }

    // logits = Wout · rmsnorm(x)                                           [B or 1, n_vocab]
    ops::output(env, st, b)
}
