//! The steps of a transformer block that the families share, each over the batch of `b` tokens in
//! the session's buffers ([`State`]): the input norm and the q/k/v projections, RoPE on q and k,
//! attention over the cache, the output projection, and the two halves of the gated feed-forward.
//! A family's forward pass (`llama.rs`, `gemma3.rs`) is these steps in its order, with its own norms,
//! activation and residual adds between them.
use super::ops::{self, linear, rmsnorm_rows, ActBuf, State, Work};
use super::Env;
use crate::model::{Layer, WeightRef};

/// xb = rmsnorm(x) · weight over the first `b` rows.
fn norm_into_xb(env: &Env<'_>, st: &mut State, weight: &WeightRef, b: usize) {
    let e = env.m.hp.n_embd;
    rmsnorm_rows(
        &mut st.xb[..b * e],
        &st.x[..b * e],
        env.m.f32s(weight),
        env.m.hp.rms_eps,
    );
}

/// xb = rmsnorm(x) · `norm`; then `weights[i]`·xb into `outs(..)[i]`, the outputs that `outs` picks
/// from the work buffer and the hidden rows.
fn norm_project<const N: usize>(
    env: &Env<'_>,
    st: &mut State,
    norm: &WeightRef,
    b: usize,
    weights: [&WeightRef; N],
    outs: impl for<'s> FnOnce(&'s mut Work, &'s mut ActBuf) -> [&'s mut [f32]; N],
) {
    let e = env.m.hp.n_embd;
    norm_into_xb(env, st, norm, b);
    let mut outs = outs(&mut st.work, &mut st.hb).into_iter();
    let outs = weights.map(|w| (w, outs.next().expect("one output per weight")));
    let x = st.xb.input(b * e);
    linear(env, &mut st.xq, x, e, b, outs, &mut st.lora_t);
}

/// proj = `w`·hb over the batch's hidden rows of width `n`                  [B, e]
fn project_hb(env: &Env<'_>, st: &mut State, w: &WeightRef, n: usize, b: usize) {
    let e = env.m.hp.n_embd;
    let (x, out) = (st.hb.input(b * n), &mut st.work.proj()[..b * e]);
    linear(env, &mut st.xq, x, n, b, [(w, out)], &mut st.lora_t);
}

/// xb = rmsnorm(x) · attn_norm; q, k, v = Wq·xb, Wk·xb, Wv·xb          [B, qd], [B, kvd], [B, kvd]
pub(crate) fn norm_qkv(env: &Env<'_>, st: &mut State, layer: &Layer, b: usize) {
    let (qd, kvd) = (env.m.hp.q_dim(), env.m.hp.kv_dim());
    let weights = [&layer.attn_q, &layer.attn_k, &layer.attn_v];
    norm_project(env, st, &layer.attn_norm, b, weights, |work, _| {
        let (q, k, v) = work.qkv();
        [&mut q[..b * qd], &mut k[..b * kvd], &mut v[..b * kvd]]
    });
}

/// q, k, v += their biases (each row of the batch), for the families that have them.
pub(crate) fn qkv_bias(env: &Env<'_>, st: &mut State, layer: &Layer, b: usize) {
    let hp = &env.m.hp;
    let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
    let (q, k, v) = st.work.qkv();
    let outs: [(&Option<WeightRef>, &mut [f32], usize); 3] = [
        (&layer.attn_q_bias, &mut q[..b * qd], qd),
        (&layer.attn_k_bias, &mut k[..b * kvd], kvd),
        (&layer.attn_v_bias, &mut v[..b * kvd], kvd),
    ];
    for (bias, out, width) in outs {
        if let Some(bias) = bias {
            let bias = env.m.f32s(bias);
            for row in out.chunks_exact_mut(width) {
                ops::add(row, bias);
            }
        }
    }
}

/// A RoPE rotation of one row of heads (`ops::rope_pairs`, `ops::rope_neox`): row, head dim, angles.
pub(crate) type Rotate = fn(&mut [f32], usize, &[(f32, f32)]);

/// RoPE on every head of q and k with the angles of `st.rope[table]` (`rotate`: the family's pairing).
pub(crate) fn rope_qk(env: &Env<'_>, st: &mut State, table: usize, b: usize, rotate: Rotate) {
    let hp = &env.m.hp;
    let (qd, kvd, hd, half) = (hp.q_dim(), hp.kv_dim(), hp.head_dim, hp.rope_dim / 2);
    let rope = &st.rope[table];
    let (q, k, _) = st.work.qkv();
    for t in 0..b {
        let cs = &rope.cs[t * half..(t + 1) * half];
        rotate(&mut q[t * qd..(t + 1) * qd], hd, cs);
        rotate(&mut k[t * kvd..(t + 1) * kvd], hd, cs);
    }
}

/// hb[t, h] = softmax(q·Kᵀ · scale) · V over the last `window` positions (0: all); k, v of the
/// batch appended to layer `l`'s cache                                        [B, qd]
pub(crate) fn attend(
    env: &Env<'_>,
    st: &mut State,
    l: usize,
    pos0: usize,
    b: usize,
    window: usize,
) {
    let (q, k, v) = st.work.qkv();
    ops::attention(
        env,
        &mut st.kv,
        &mut st.att,
        q,
        k,
        v,
        &mut st.hb,
        l,
        pos0,
        b,
        window,
        env.m.hp.att_scale,
    );
}

/// proj = Wo·hb                                                         [B, e]
pub(crate) fn attn_output(env: &Env<'_>, st: &mut State, layer: &Layer, b: usize) {
    project_hb(env, st, &layer.attn_output, env.m.hp.q_dim(), b);
}

/// xb = rmsnorm(x) · ffn_norm; hb, up = Wgate·xb, Wup·xb                [B, ff] each
pub(crate) fn ffn_input(env: &Env<'_>, st: &mut State, layer: &Layer, b: usize) {
    let ff = env.m.hp.n_ff;
    let weights = [&layer.ffn_gate, &layer.ffn_up];
    norm_project(env, st, &layer.ffn_norm, b, weights, |work, hb| {
        [&mut hb[..b * ff], &mut work.up()[..b * ff]]
    });
}

/// proj = Wdown·hb (hb: the gated activation)                            [B, e]
pub(crate) fn ffn_output(env: &Env<'_>, st: &mut State, layer: &Layer, b: usize) {
    project_hb(env, st, &layer.ffn_down, env.m.hp.n_ff, b);
}

/// x[t] += v_l for every row of the batch, when the control vector has block `l` (after the block's
/// last residual add, as llama.cpp applies `direction.l`).
pub(crate) fn steer(env: &Env<'_>, st: &mut State, l: usize, b: usize) {
    if let Some(v) = env.cvec.and_then(|c| c.layer(l)) {
        let e = env.m.hp.n_embd;
        for row in st.x[..b * e].chunks_exact_mut(e) {
            ops::add(row, v);
        }
    }
}
