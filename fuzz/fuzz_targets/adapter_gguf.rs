//! `Adapter::load` of a GGUF LoRA adapter (arbitrary bytes in a temp file) against a fixed small base:
//! width 8, 1 layer, 2 query / 1 KV heads of size 4, FFN 16, vocabulary 32, tied output.
//! Invariant: every accepted tensor's factors have exactly rank × n_in and n_out × rank halves.
#![no_main]
use edge_run::adapter::Adapter;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path =
        std::env::temp_dir().join(format!("edge-run-fuzz-adapter-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(a) = Adapter::load(&path, common::base()) {
        common::check(&a);
    }
});
