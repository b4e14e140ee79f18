//! Activated LoRA (aLoRA): an adapter that applies only from its invocation sequence on.
//!
//! An aLoRA carries a token sequence, its *invocation*. It adds its low-rank term to the positions
//! from the first token of the **last** occurrence of that sequence in the context on (inclusive),
//! and to nothing before it; with no occurrence it adds nothing at all (PEFT's
//! `calculate_alora_offsets` and `ALoraLinearVariant`). The positions before the invocation are
//! therefore exactly the base model's (or the other adapters'), so a session can evaluate a
//! conversation with the base model, switch an aLoRA on and go on from the base's KV cache without
//! evaluating anything again.
//!
//! Sources of the invocation: PEFT's `adapter_config.json` field `alora_invocation_tokens` (a list
//! of token ids) and llama.cpp's GGUF adapter key `adapter.alora.invocation_tokens` (an integer
//! array). Either must be non-empty, with every id in the base model's vocabulary.
//!
//! At run time a session finds, once per `eval`, where each active aLoRA starts ([`Gates::locate`]:
//! a scan of the context's tokens and the new ones, no allocation), and every LoRA computation
//! skips the rows of the batch before that position ([`Gates::skip`]). When an invocation turns out
//! to have started in tokens already evaluated without the aLoRA (it arrived over several `eval`s,
//! e.g. token by token, or the aLoRA was switched on after it), the session evaluates again only the
//! positions from the invocation's first token on, so they match an evaluation that saw the whole
//! sequence at once; the prefix before it is never evaluated again.
use serde_json::Value;

use super::peft::unexpected;
use super::{ActiveSet, Adapter, BaseInfo, LoraKind, MAX_ADAPTERS};
use crate::error::{Error, Result};

/// PEFT's `adapter_config.json` field.
pub(crate) const PEFT_FIELD: &str = "alora_invocation_tokens";
/// llama.cpp's GGUF adapter metadata key.
pub const GGUF_KEY: &str = "adapter.alora.invocation_tokens";

/// `alora_invocation_tokens` of a PEFT config: `None` when absent or null; otherwise a non-empty
/// list of non-negative integers (checked against the vocabulary later, by [`Adapter::with_invocation`]).
pub(crate) fn from_peft(v: Option<&Value>, file: &str) -> Result<Option<Vec<u32>>> {
    let list = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(unexpected(file, PEFT_FIELD, "a list of token ids", other)),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, x) in list.iter().enumerate() {
        let id = x
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                Error::format(
                    file,
                    format!("{PEFT_FIELD}[{i}]"),
                    None,
                    format!("{x} is not a token id (a non-negative integer)"),
                )
            })?;
        out.push(id);
    }
    Ok(Some(out))
}

/// `adapter.alora.invocation_tokens` of a GGUF adapter, if present (an array of integers that fit
/// in u32).
pub(crate) fn from_gguf(g: &crate::gguf::Gguf<'_>, file: &str) -> Result<Option<Vec<u32>>> {
    match g.opt_array(GGUF_KEY)? {
        None => Ok(None),
        Some(_) => g
            .get_u32_array(GGUF_KEY)
            .map(Some)
            .map_err(|e| e.in_file(file)),
    }
}

impl Adapter {
    /// Makes this adapter an aLoRA with `invocation` (or leaves it a plain LoRA with `None`), after
    /// checking the sequence against the base model: non-empty, every id in the vocabulary, and no
    /// embedding LoRA (whose rows are looked up, not gated by position in PEFT's aLoRA). `field`
    /// names where the sequence came from in the file.
    pub(crate) fn with_invocation(
        mut self,
        invocation: Option<Vec<u32>>,
        base: &BaseInfo,
        file: &str,
        field: &str,
    ) -> Result<Adapter> {
        let Some(ids) = invocation else {
            return Ok(self);
        };
        if ids.is_empty() {
            return Err(Error::format(
                file,
                field,
                None,
                "empty list: an aLoRA needs at least one invocation token",
            ));
        }
        let n_vocab = base.target_shape("token_embd.weight").map_or(0, |s| s.1);
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= n_vocab) {
            return Err(Error::format(
                file,
                format!("{field}[{i}]"),
                None,
                format!("token id {id} is outside the base model's vocabulary of {n_vocab} tokens"),
            ));
        }
        if let Some(t) = self.tensors.iter().find(|t| t.kind == LoraKind::Embedding) {
            return Err(Error::unsupported(
                file,
                format!(
                    "aLoRA ({field}) with an embedding LoRA on `{}`: an aLoRA adapts linear layers only",
                    t.target
                ),
            ));
        }
        if let Some(m) = self.saved.first() {
            return Err(Error::unsupported(
                file,
                format!(
                    "aLoRA ({field}) replacing `{}` (modules_to_save): a replaced tensor acts on every \
                     position, an aLoRA only from its invocation on",
                    m.target
                ),
            ));
        }
        self.notes.push(format!(
            "aLoRA: applies from the last occurrence of the invocation tokens {ids:?} on; \
             cannot be merged into the weights"
        ));
        self.invocation = Some(ids);
        Ok(self)
    }

    /// The invocation sequence of an aLoRA (`None` for a plain LoRA).
    pub fn invocation_tokens(&self) -> Option<&[u32]> {
        self.invocation.as_deref()
    }

    /// Whether this adapter is an aLoRA (applies only from its invocation sequence on).
    pub fn is_alora(&self) -> bool {
        self.invocation.is_some()
    }
}

/// Start of the last occurrence of `seq` in the concatenation `a ++ b` (without building it).
pub fn last_occurrence(a: &[u32], b: &[u32], seq: &[u32]) -> Option<usize> {
    let n = a.len() + b.len();
    if seq.is_empty() || seq.len() > n {
        return None;
    }
    let at = |i: usize| if i < a.len() { a[i] } else { b[i - a.len()] };
    (0..=n - seq.len())
        .rev()
        .find(|&s| seq.iter().enumerate().all(|(k, &t)| at(s + k) == t))
}

/// Which rows of the batch being computed each active adapter applies to.
pub(crate) struct Gates {
    /// Per active adapter: the first position it applies to (0 for a plain LoRA; `usize::MAX` for an
    /// aLoRA whose invocation is not in the context).
    start: [usize; MAX_ADAPTERS],
    /// Per active adapter: the position from which the KV cache holds its contribution
    /// (`usize::MAX`: from nowhere, e.g. just after the set changed).
    cached_from: [usize; MAX_ADAPTERS],
    /// The position just past the batch being computed.
    end: usize,
}

impl Gates {
    pub(crate) fn new() -> Gates {
        Gates {
            start: [0; MAX_ADAPTERS],
            cached_from: [usize::MAX; MAX_ADAPTERS],
            end: 0,
        }
    }

    /// The adapter set changed: the cache holds none of the new set's contributions.
    pub(crate) fn forget(&mut self) {
        self.cached_from = [usize::MAX; MAX_ADAPTERS];
    }

    /// Finds where each aLoRA of `active` starts in the context `history ++ new`. Returns the
    /// position to evaluate `history` again from, if an invocation starts inside `history` at a
    /// position whose cache entries were computed without its aLoRA (an invocation whose first
    /// tokens came in an earlier `eval`, or an aLoRA switched on after its invocation): only those
    /// positions are evaluated again, never the prefix before them. Allocation-free.
    pub(crate) fn locate(
        &mut self,
        active: &ActiveSet,
        history: &[u32],
        new: &[u32],
    ) -> Option<usize> {
        let mut rewind: Option<usize> = None;
        for (i, (a, _)) in active.iter().enumerate() {
            let Some(seq) = a.invocation_tokens() else {
                self.start[i] = 0;
                continue;
            };
            let s = last_occurrence(history, new, seq).unwrap_or(usize::MAX);
            if s < history.len() && s < self.cached_from[i] {
                rewind = Some(rewind.map_or(s, |r| r.min(s)));
            }
            self.start[i] = s;
            self.cached_from[i] = s;
        }
        rewind
    }

    /// The context was cut to its first `n` positions: contributions cached from `n` on are gone.
    pub(crate) fn truncated(&mut self, n: usize) {
        for c in self.cached_from.iter_mut().filter(|c| **c >= n) {
            *c = usize::MAX;
        }
    }

    /// A context shift dropped `n_discard` positions after the first `n_keep` and moved the rest
    /// down.
    pub(crate) fn shifted(&mut self, n_keep: usize, n_discard: usize) {
        for c in self.cached_from.iter_mut().filter(|c| **c >= n_keep) {
            *c = match c.checked_sub(n_discard) {
                Some(moved) if moved >= n_keep && *c != usize::MAX => moved,
                _ => usize::MAX,
            };
        }
    }

    /// The batch about to be computed: positions `pos0..pos0 + n`.
    pub(crate) fn set_batch(&mut self, pos0: usize, n: usize) {
        self.end = pos0 + n;
    }

    /// For a computation over the last `rows` rows of the batch: how many of those rows, from the
    /// first, active adapter `i` skips (`rows` or more: it applies to none of them).
    pub(crate) fn skip(&self, i: usize, rows: usize) -> usize {
        let first = self.end.saturating_sub(rows);
        self.start[i].saturating_sub(first)
    }
}

/// Zeroes, in the LoRA intermediates `t` of one weight (`[rows, rr]`, the adapters' parts side by
/// side in the order of `refs`), the first `skips[k]` rows of adapter k's part: its expand then adds
/// nothing to those rows.
pub(crate) fn gate_rows(
    refs: &[crate::kernels::lora::LoraRef<'_>],
    skips: &[usize],
    rr: usize,
    t: &mut [f32],
) {
    let mut off = 0;
    for (r, &skip) in refs.iter().zip(skips) {
        for row in t.chunks_exact_mut(rr).take(skip) {
            row[off..off + r.rank].fill(0.0);
        }
        off += r.rank;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_occurrence_spans_both_halves() {
        let seq = [7, 8, 9];
        assert_eq!(last_occurrence(&[1, 7, 8], &[9, 2], &seq), Some(1));
        assert_eq!(last_occurrence(&[7, 8, 9, 7, 8, 9], &[], &seq), Some(3));
        assert_eq!(
            last_occurrence(&[], &[7, 8, 9, 1, 7, 8, 9, 5], &seq),
            Some(4)
        );
        assert_eq!(last_occurrence(&[7, 8], &[], &seq), None);
        assert_eq!(last_occurrence(&[7, 8, 8, 9], &[], &seq), None);
        assert_eq!(last_occurrence(&[3], &[], &[3]), Some(0));
    }

    #[test]
    fn skip_counts_rows_before_the_start() {
        let mut g = Gates::new();
        g.start[0] = 10;
        g.start[1] = 0;
        g.start[2] = usize::MAX;
        g.set_batch(8, 4); // positions 8..12
        assert_eq!(g.skip(0, 4), 2);
        assert_eq!(g.skip(1, 4), 0);
        assert!(g.skip(2, 4) >= 4);
        // The output head's last row only (position 11).
        assert_eq!(g.skip(0, 1), 0);
        g.set_batch(4, 4); // positions 4..8: all before 10
        assert!(g.skip(0, 4) >= 4);
    }

    #[test]
    fn cached_contributions_follow_truncate_and_shift() {
        let mut g = Gates::new();
        g.cached_from[..3].copy_from_slice(&[10, 20, 30]);
        g.shifted(12, 5); // positions 12..17 dropped: 20 → 15; 10 kept
        assert_eq!(g.cached_from[..3], [10, 15, 25]);
        g.shifted(14, 5); // 15 was dropped: its invocation is gone
        assert_eq!(g.cached_from[..3], [10, usize::MAX, 20]);
        g.truncated(20);
        assert_eq!(g.cached_from[..3], [10, usize::MAX, usize::MAX]);
    }

    #[test]
    fn peft_field_types() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(from_peft(None, "f").unwrap(), None);
        assert_eq!(from_peft(Some(&v("null")), "f").unwrap(), None);
        assert_eq!(
            from_peft(Some(&v("[1, 520]")), "f").unwrap(),
            Some(vec![1, 520])
        );
        for bad in ["\"1\"", "[1, -2]", "[1.5]", "[\"a\"]", "{}"] {
            let e = from_peft(Some(&v(bad)), "cfg.json")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("cfg.json") && e.contains(PEFT_FIELD),
                "{bad}: {e}"
            );
        }
    }
}
