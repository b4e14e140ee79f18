//! The fixed base model the adapter targets validate against (the shapes of
//! `tests/hostile.rs`'s micro model), and the invariants of an accepted adapter.
use std::collections::HashMap;
use std::sync::OnceLock;

use edge_run::adapter::{Adapter, BaseInfo, LoraKind};

pub fn base() -> &'static BaseInfo {
    static B: OnceLock<BaseInfo> = OnceLock::new();
    B.get_or_init(|| {
        let mut t = HashMap::new();
        t.insert("token_embd.weight".to_string(), (8, 32));
        for (n, s) in [
            ("attn_q", (8, 8)),
            ("attn_k", (8, 4)),
            ("attn_v", (8, 4)),
            ("attn_output", (8, 8)),
            ("ffn_gate", (8, 16)),
            ("ffn_up", (8, 16)),
            ("ffn_down", (16, 8)),
        ] {
            t.insert(format!("blk.0.{n}.weight"), s);
        }
        BaseInfo {
            arch: "llama".into(),
            n_layer: 1,
            n_head: 2,
            n_head_kv: 1,
            tensors: t,
        }
    })
}

pub fn check(a: &Adapter) {
    assert!(!a.tensors().is_empty());
    for t in a.tensors() {
        assert!(t.rank > 0);
        assert_eq!(
            t.a().len(),
            t.rank * t.n_in,
            "{}: A has the wrong length",
            t.target
        );
        assert_eq!(
            t.b().len(),
            t.n_out * t.rank,
            "{}: B has the wrong length",
            t.target
        );
        assert!(t.scale.is_finite(), "{}: scale {}", t.target, t.scale);
        let (ne0, ne1) = match base().tensors.get(&t.target) {
            Some(&s) => s,
            None => base().tensors["token_embd.weight"], // tied output head
        };
        match t.kind {
            LoraKind::Linear => assert_eq!((t.n_in, t.n_out), (ne0, ne1), "{}", t.target),
            LoraKind::Embedding => assert_eq!((t.n_in, t.n_out), (ne1, ne0), "{}", t.target),
        }
        for h in t.a().iter().chain(t.b()) {
            assert!(
                half::f16::from_bits(*h).is_finite(),
                "{}: non-finite factor",
                t.target
            );
        }
        assert!(a.get(&t.target).is_some());
    }
    let _ = a.summary();
}
