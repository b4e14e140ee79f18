//! Gemma 3 (`gemma3`), as llama.cpp defines it for GGUF files:
//! - input embeddings scaled by √n_embd (after the embedding LoRA, as llama.cpp applies it);
//! - RMSNorm with the weights as stored: llama.cpp's converter already folded Gemma's `(1 + w)`;
//! - per-head RMSNorm of q and k (`attn_q_norm`, `attn_k_norm`) before RoPE;
//! - NeoX-style RoPE (rotating x[i] with x[i + rot/2]; GGUF keeps the Hugging Face Q/K row order);
//! - local layers attend to the last `attention.sliding_window` positions (a query at p sees
//!   p - window < j ≤ p) with RoPE base `rope.freq_base_swa` (default 10000, no scaling); the
//!   others are global with `rope.freq_base` and the file's linear RoPE scaling. Which layers are
//!   local: `attention.sliding_window_pattern` (a bool per layer, or a period n: layer il is local
//!   iff il % n < n - 1), default period 6;
//! - attention scale 1/√head_dim (1/√(n_embd/n_head) for the 62-layer 27B, as llama.cpp);
//! - sandwich norms: `post_attention_norm` on the attention output and `post_ffw_norm` on the FFN
//!   output, each before its residual add;
//! - GELU(tanh)-gated feed-forward: down(gelu(gate·x) ⊙ up·x);
//! - output head tied to `token_embd` unless `output.weight` exists; final soft cap
//!   c·tanh(logits / c) only if `final_logit_softcapping` is in the file.
use super::block;
use super::ops::{self, add, rmsnorm_rows, rmsnorm_rows_inplace, State};
use super::{finite_f32, Env};
use crate::gguf::Gguf;
use crate::model::{HParams, WeightRef};
use crate::{Error, Result};

/// Read Gemma 3's keys (`gemma3.*`) into `hp`: the sliding window and which layers use it, their RoPE
/// base, the attention and embedding scales, the final logit soft cap.
pub(crate) fn hparams(g: &Gguf<'_>, fname: &str, hp: &mut HParams) -> Result<()> {
    let (n_layer, n_embd, n_head, head_dim) = (hp.n_layer, hp.n_embd, hp.n_head, hp.head_dim);
    let key = |k: &str| format!("gemma3.{k}");
    let n_swa = g.opt_u64(&key("attention.sliding_window"))?.unwrap_or(0);
    let n_swa = usize::try_from(n_swa)
        .ok()
        .filter(|&w| w <= u32::MAX as usize)
        .ok_or_else(|| {
            Error::format(
                fname,
                key("attention.sliding_window"),
                None,
                format!("value {n_swa} is too large"),
            )
        })?;
    let mut swa = vec![false; n_layer];
    if n_swa > 0 {
        let pk = key("attention.sliding_window_pattern");
        match g.get(&pk) {
            Some(v) if v.as_array().is_some() => {
                let a = v.as_array().expect("checked");
                if a.len() != n_layer {
                    return Err(Error::format(
                        fname,
                        pk,
                        None,
                        format!(
                            "per-layer pattern has {} entries for {n_layer} layers",
                            a.len()
                        ),
                    ));
                }
                for (i, s) in swa.iter_mut().enumerate() {
                    *s = a.get(i).and_then(|v| v.as_bool()).ok_or_else(|| {
                        Error::format(fname, format!("{pk}[{i}]"), None, "expected a bool")
                    })?;
                }
            }
            v => {
                let n = match v {
                    None => 6,
                    Some(v) => v.as_u32().ok_or_else(|| {
                        Error::format(
                            fname,
                            &pk,
                            None,
                            "expected an unsigned integer or an array of bools",
                        )
                    })? as usize,
                };
                for (il, s) in swa.iter_mut().enumerate() {
                    *s = n == 0 || il % n < n - 1;
                }
            }
        }
    }
    let rope_freq_base_swa = finite_f32(g, fname, key("rope.freq_base_swa"), 10000.0, false)?;
    let logit_softcap = finite_f32(g, fname, key("final_logit_softcapping"), 0.0, true)?;
    // llama.cpp (after gemma_pytorch's config): the 27B model scales by 1/√(n_embd/n_head).
    let att_scale = if n_layer == 62 {
        1.0 / ((n_embd / n_head) as f32).sqrt()
    } else {
        1.0 / (head_dim as f32).sqrt()
    };
    hp.n_swa = n_swa;
    hp.swa = swa;
    hp.rope_freq_base_swa = rope_freq_base_swa;
    hp.att_scale = att_scale;
    hp.embd_scale = (n_embd as f32).sqrt();
    hp.logit_softcap = logit_softcap;
    Ok(())
}

pub(crate) fn forward(env: &Env<'_>, st: &mut State, tokens: &[u32], pos0: usize) -> usize {
    let m = env.m;
    let hp = &m.hp;
    let b = tokens.len();
    let (e, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
    let eps = hp.rms_eps;
    let norm = |w: &Option<WeightRef>| m.f32s(w.as_ref().expect("gemma3 norms checked at load"));

    // x[t] = √e · token_embd[tokens[t]]                                    [B, e]
    ops::embed(env, &mut st.x, &mut st.lora_t, tokens, hp.embd_scale);
    // RoPE angles of the global and the local layers                     [B, rope_dim/2] each
    st.rope[0].set_positions(pos0, b);
    if hp.n_swa > 0 {
        st.rope[1].set_positions(pos0, b);
    }

    for (l, layer) in m.layers.iter().enumerate() {
        let local = hp.swa[l];
        // --- attention: x += post_attention_norm(Wo·attention(q, k, v)), xb = rmsnorm(x) ---
        block::norm_qkv(env, st, layer, b);
        // QK-norm: every head of q and k RMS-normed                          [B, n_head | n_head_kv, hd]
        let (q, k, _) = st.work.qkv();
        rmsnorm_rows_inplace(&mut q[..b * qd], norm(&layer.attn_q_norm), eps);
        rmsnorm_rows_inplace(&mut k[..b * kvd], norm(&layer.attn_k_norm), eps);
        // RoPE (NeoX halves) with the layer's frequencies
        let (table, rotate) = super::qk_rope(hp, l);
        block::rope_qk(env, st, table, b, rotate);
        // over the window (local) or all positions
        block::attend(env, st, l, pos0, b, if local { hp.n_swa } else { 0 });
        block::attn_output(env, st, layer, b);
        post_norm_add(st, norm(&layer.attn_post_norm), e * b, eps);

        // --- feed-forward: x += post_ffw_norm(Wdown·(gelu(Wgate·xb) ⊙ Wup·xb)) ---
        block::ffn_input(env, st, layer, b);
        (env.k.geglu)(&mut st.hb[..b * ff], &st.work.up()[..b * ff]);
        block::ffn_output(env, st, layer, b);
        post_norm_add(st, norm(&layer.ffn_post_norm), e * b, eps);

        // control vector: x += v_l (when it has this block)
        block::steer(env, st, l, b);
    }

    // logits = Wout · rmsnorm(x) (soft-capped if the file says so)         [B or 1, n_vocab]
    ops::output(env, st, b)
}

/// The sandwich norm's second half: x += rmsnorm(proj) · w (the first `len` values).
fn post_norm_add(st: &mut State, w: &[f32], len: usize, eps: f32) {
    rmsnorm_rows(&mut st.xb[..len], &st.work.proj()[..len], w, eps);
    add(&mut st.x[..len], &st.xb[..len]);
}
