//! Replaced modules (PEFT `modules_to_save`): a whole `token_embd.weight` or `output.weight` that an
//! adapter brings in place of the base's.
//!
//! While such an adapter is active (any non-zero user scale), the embedding lookup reads its rows and
//! the output head multiplies with it through the fp16 matrix kernels; the base tensor in the model's
//! map is untouched, so removing the adapter gives the base back exactly. The user scale does not
//! apply to a replacement (PEFT has none for saved modules); it scales the adapter's LoRA tensors only.
//!
//! Layout: fp16, `n_vocab` rows of `n_embd` (GGUF `token_embd` / `output`, ne0 = `n_embd`), in place
//! from the file's map when it is fp16 and aligned there, otherwise converted once at load.
//!
//! Tied heads: on a base whose head is the embedding (no `output.weight`), replacing `token_embd`
//! leaves the head on the original embedding, as PEFT does unless `ensure_weight_tying` is set; with
//! it, the replacement serves both (the loader adds a second entry sharing the data).
use std::sync::Arc;

use super::{BaseInfo, Halves};
use crate::error::{Error, Result};

/// The base tensors an adapter may replace.
pub const REPLACEABLE: [&str; 2] = ["token_embd.weight", "output.weight"];

/// One replaced base tensor.
#[derive(Clone, Debug)]
pub struct SavedModule {
    /// `token_embd.weight` or `output.weight`.
    pub target: String,
    /// Row length (the model width).
    pub n_embd: usize,
    /// Rows (the vocabulary).
    pub n_vocab: usize,
    data: Arc<Halves>,
}

impl SavedModule {
    /// Builds a replacement of `target` from `data` (`n_vocab × n_embd` fp16, checked by the caller).
    pub(super) fn new(target: &str, n_embd: usize, n_vocab: usize, data: Halves) -> SavedModule {
        SavedModule {
            target: target.to_string(),
            n_embd,
            n_vocab,
            data: Arc::new(data),
        }
    }
    /// The same data standing in for another base tensor (a tied head).
    pub(super) fn alias(&self, target: &str) -> SavedModule {
        SavedModule {
            target: target.to_string(),
            ..self.clone()
        }
    }
    /// fp16 bits, `n_vocab × n_embd` row-major.
    pub fn data(&self) -> &[u16] {
        self.data.get()
    }
    /// Whether the data is used in place from the file's memory map.
    pub fn is_mapped(&self) -> bool {
        self.data.is_mapped()
    }
}

/// `(n_embd, n_vocab)` a replacement of `target` must have: the base tensor's `(ne0, ne1)`, or for a
/// tied head the embedding's. Errors name `file` and `tensor`.
pub(super) fn expected_shape(
    target: &str,
    base: &BaseInfo,
    file: &str,
    tensor: &str,
) -> Result<(usize, usize)> {
    if !REPLACEABLE.contains(&target) {
        return Err(Error::unsupported(
            file,
            format!(
                "tensor {tensor:?} replaces {target:?}; only the embedding and the output head can be replaced"
            ),
        ));
    }
    base.target_shape(target).ok_or_else(|| {
        Error::format(
            file,
            tensor,
            None,
            format!("replaces {target:?}, which the base model does not have"),
        )
    })
}

/// Error unless `(n_embd, n_vocab)` of `tensor` equals `want`.
pub(super) fn check_shape(
    got: (usize, usize),
    want: (usize, usize),
    file: &str,
    tensor: &str,
    target: &str,
) -> Result<()> {
    if got != want {
        return Err(Error::format(
            file,
            format!("{tensor}.shape"),
            None,
            format!(
                "{} rows of {} but the base's {target} has {} rows (vocabulary) of {} (width)",
                got.1, got.0, want.1, want.0
            ),
        ));
    }
    Ok(())
}
