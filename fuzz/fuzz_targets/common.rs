//! The fixed base model the adapter targets validate against (the shapes of
//! `tests/hostile.rs`'s micro model), and the invariants of an accepted adapter.
use std::sync::OnceLock;

use edge_run::adapter::{Adapter, BaseInfo, LoraKind};

#[path = "../../tests/common/llama_base.rs"]
mod llama_base;

pub fn base() -> &'static BaseInfo {
    static B: OnceLock<BaseInfo> = OnceLock::new();
    B.get_or_init(|| llama_base::llama_base_info(1, (2, 1), 8, 16, 32))
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
