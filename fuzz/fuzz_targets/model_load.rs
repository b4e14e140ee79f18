//! `Model::open` (GGUF parse + hyper-parameter, tensor and tokenizer validation) on arbitrary bytes
//! written to a temp file. An accepted model must also run: a session with a 4-token context
//! evaluates one token, and the tokenizer encodes and decodes a short text.
#![no_main]
use std::sync::Arc;

use edge_run::{Model, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path =
        std::env::temp_dir().join(format!("edge-run-fuzz-model-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(m) = Model::open(&path) else { return };
    let ids = m.tokenizer.encode("Hello <s> world \u{e9}\u{1F600}", true);
    assert!(ids.iter().all(|&i| (i as usize) < m.hp.n_vocab));
    let _ = m.tokenizer.decode(&ids);
    // Keep the forward pass to models of a sane size (the fuzzer's inputs are small anyway).
    if m.hp.n_layer * m.hp.n_embd.max(m.hp.n_ff) > 1 << 16 {
        return;
    }
    let cfg = SessionConfig {
        n_ctx: 4,
        n_batch: 2,
        n_threads: 1,
        max_rank: 8,
        ..Default::default()
    };
    let Ok(mut s) = Session::new(Arc::new(m), cfg) else {
        return;
    };
    let _ = s.eval(&[0]);
});
