//! Phi-3 and Phi-3.5 mini (`phi3`), as llama.cpp defines it for GGUF files and transformers' `Phi3`
//! computes it: llama's pre-norm block (RMSNorm, grouped-query attention, SwiGLU feed-forward) with
//! - fused tensors: `attn_qkv` holds the q, k and v rows (in that order) and `ffn_up` the gate rows
//!   then the up rows; the loader cuts them into row ranges ([`crate::model::WeightRef::rows`]), and a
//!   LoRA on a fused tensor acts on each part with its `B` rows of that part (the fused product
//!   split after the low-rank term is added);
//! - NeoX-style RoPE (GGUF keeps the Hugging Face Q/K order) over the first `rope.dimension_count`
//!   dimensions of each head (partial rotary when smaller than the head), base `rope.freq_base`;
//! - LongRoPE when the file has `rope_factors_long.weight` and `rope_factors_short.weight`: per-pair
//!   frequency divisors, the long ones when the session's context exceeds
//!   `rope.scaling.original_context_length`, else the short ones (one choice per session, as
//!   llama.cpp makes it; transformers switches when the sequence grows past that length, which is the
//!   same for a sequence that fills more than the original context), and the cosines and sines scaled
//!   by `rope.scaling.attn_factor` (transformers' attention factor);
//! - a sliding window on every layer when the file has `attention.sliding_window` (Phi-3 mini 4k:
//!   2047): a query at p sees keys p − window < j ≤ p, as transformers masks them (llama.cpp's graph
//!   ignores the key);
//! - the output head `output.weight` (the embedding where the file has none, as Phi-4 mini).
use super::finite_f32;
use crate::gguf::Gguf;
use crate::model::{Arch, HParams};
use crate::{Error, Result};

/// The sliding window and LongRoPE keys.
pub(crate) fn hparams(g: &Gguf<'_>, fname: &str, hp: &mut HParams) -> Result<()> {
    let key = |k: &str| format!("phi3.{k}");
    let n_swa = g.opt_u64(&key("attention.sliding_window"))?.unwrap_or(0);
    let n_swa = usize::try_from(n_swa).unwrap_or(usize::MAX);
    hp.n_swa = n_swa;
    hp.swa = vec![n_swa > 0; hp.n_layer];
    let orig = g.opt_u64(&key("rope.scaling.original_context_length"))?;
    hp.n_ctx_orig = orig.map_or(0, |v| usize::try_from(v).unwrap_or(usize::MAX));
    let attn_factor = finite_f32(g, fname, key("rope.scaling.attn_factor"), 1.0, false)?;
    hp.rope_attn_factor = attn_factor;
    Ok(())
}

/// LongRoPE factors need this family and the original context that picks between them: a file with
/// them otherwise is refused.
pub(crate) fn check_longrope(fname: &str, has_factors: bool, hp: &HParams) -> Result<()> {
    if !has_factors {
        return Ok(());
    }
    if hp.arch != Arch::Phi3 {
        return Err(Error::unsupported(
            fname,
            "LongRoPE factors (`rope_factors_long.weight`) outside a phi3 model",
        ));
    }
    if hp.n_ctx_orig == 0 {
        return Err(Error::format(
            fname,
            "phi3.rope.scaling.original_context_length",
            None,
            "LongRoPE factors need the original context length (missing or 0)",
        ));
    }
    Ok(())
}
