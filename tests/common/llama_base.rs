//! The base-model shapes an adapter is validated against, for a llama-style model.
use edge_run::adapter::BaseInfo;
use std::collections::HashMap;

/// A llama model of `n_layer` layers of width `n_embd` with `n_head` query and `n_head_kv` key/value
/// heads, FFN width `n_ff`, a vocabulary of `n_vocab` and a tied output head (no `output.weight`):
/// every 2-D tensor as `(n_in, n_out)`.
pub fn llama_base_info(
    n_layer: usize,
    (n_head, n_head_kv): (usize, usize),
    n_embd: usize,
    n_ff: usize,
    n_vocab: usize,
) -> BaseInfo {
    let kv = n_embd / n_head * n_head_kv;
    let mut tensors = HashMap::new();
    tensors.insert("token_embd.weight".to_string(), (n_embd, n_vocab));
    for l in 0..n_layer {
        for (name, shape) in [
            ("attn_q", (n_embd, n_embd)),
            ("attn_k", (n_embd, kv)),
            ("attn_v", (n_embd, kv)),
            ("attn_output", (n_embd, n_embd)),
            ("ffn_gate", (n_embd, n_ff)),
            ("ffn_up", (n_embd, n_ff)),
            ("ffn_down", (n_ff, n_embd)),
        ] {
            tensors.insert(format!("blk.{l}.{name}.weight"), shape);
        }
    }
    BaseInfo {
        arch: "llama".into(),
        n_layer,
        n_head,
        n_head_kv,
        tensors,
    }
}
