//! The layout of a state file (format version 1, `src/state/format.rs`), walked field by field, for
//! the tests that corrupt one field at a time.
#![allow(dead_code)]
use edge_run::state::hash64;

/// The byte offsets of a state file's fields (format version 1), walked the way a reader would.
pub struct Layout {
    pub lengths: Vec<(&'static str, usize)>,
    /// Where the tokens' ids start (the end of the identity).
    pub identity_end: usize,
    /// The adapters' file names (only for messages: a changed name is still the same adapter).
    pub names: Vec<std::ops::Range<usize>>,
    /// Where the logits start (after the tokens and flags).
    pub context_end: usize,
}

pub fn layout(b: &[u8], n_layer: usize, row_bytes: usize, n_vocab: usize) -> Layout {
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
    let mut lengths = Vec::new();
    let mut at = 12 + 8;
    lengths.push(("model.arch", at));
    at += 8 + u64_at(at);
    for f in ["model.n_layer", "model.kv_dim", "model.n_vocab"] {
        lengths.push((f, at));
        at += 8;
    }
    for f in ["kv.type_k", "kv.type_v"] {
        lengths.push((f, at));
        at += 8 + u64_at(at);
    }
    lengths.push(("adapters.count", at));
    let n_adapters = u64_at(at);
    at += 8;
    let mut names = Vec::new();
    for _ in 0..n_adapters {
        at += 12;
        names.push(at..at + 8 + u64_at(at));
        at += 8 + u64_at(at);
    }
    let identity_end = at;
    lengths.push(("tokens.count", at));
    let n = u64_at(at);
    at += 8 + 5 * n;
    let context_end = at;
    at += 1 + if b[at] == 1 { 4 * n_vocab } else { 0 };
    lengths.push(("app.length", at));
    at += 8 + u64_at(at);
    for l in 0..n_layer {
        lengths.push((
            if l == 0 {
                "layers[0].rows"
            } else {
                "layers.rows"
            },
            at,
        ));
        at += 8 + u64_at(at) * row_bytes;
    }
    assert_eq!(at + 8, b.len(), "layout walk");
    Layout {
        lengths,
        identity_end,
        names,
        context_end,
    }
}

/// `b` with its checksum recomputed (so the reader's field checks, not the checksum, must refuse it).
pub fn resealed(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 8;
    let h = hash64(&b[..n]);
    b[n..].copy_from_slice(&h.to_le_bytes());
    b
}
