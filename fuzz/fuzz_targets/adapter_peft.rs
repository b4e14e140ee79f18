//! `Adapter::load` of a PEFT adapter directory. Input: a u32 LE length `n`, `n` bytes of
//! adapter_config.json, then adapter_model.safetensors. Same base and invariants as adapter_gguf.
#![no_main]
use edge_run::adapter::Adapter;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let n = (u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize).min(data.len() - 4);
    let (cfg, st) = data[4..].split_at(n);
    let dir = std::env::temp_dir().join(format!("edge-run-fuzz-peft-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("adapter_config.json"), cfg).is_err()
        || std::fs::write(dir.join("adapter_model.safetensors"), st).is_err()
    {
        return;
    }
    if let Ok(a) = Adapter::load(&dir, common::base()) {
        common::check(&a);
    }
});
