//! `edge-run bench --vs-llama-cpp`: llama.cpp timed on the `edge-run bench` workload.
use super::runner::{LlamaConfig, LlamaCpp, LlamaSpeed};
use super::*;

/// llama.cpp's speed on an `edge-run bench` workload.
#[derive(Clone, Debug)]
pub struct BenchVs {
    /// Without adapters.
    pub base: LlamaSpeed,
    /// With the workload's adapters, if it has any.
    pub lora: Option<LlamaSpeed>,
    /// [`system_info`] of this llama.cpp build.
    pub system_info: String,
    /// Whether llama.cpp repacked weights for its batched kernels ([`LlamaConfig::repack`]).
    pub repacked: bool,
}

/// Runs `w` (the same prompt tokens, counts, repetitions and adapters as edge-run's bench) in llama.cpp
/// with `n_threads` threads and the KV cache types `kv_types` on the model file `model`. Adapters that are not GGUF files (PEFT
/// directories or safetensors) are first converted with edge-run's converter into a temporary GGUF
/// (their true scale folded in), since llama.cpp reads only GGUF adapters.
pub fn bench_workload(
    model: &Path,
    base: &edge_run::adapter::BaseInfo,
    n_vocab: usize,
    w: &super::super::bench::Workload,
    n_threads: usize,
    kv_types: (edge_run::session::KvType, edge_run::session::KvType),
) -> Result<BenchVs> {
    w.validate()?;
    let prompt = w.prompt(n_vocab);
    let cfg = LlamaConfig {
        kv_types,
        ..LlamaConfig::new(n_threads, w.n_prompt + w.n_gen, w.n_prompt)
    };
    let mut lc = LlamaCpp::load(model, &cfg)?;
    if lc.n_vocab() != n_vocab {
        return Err(Error::invalid(format!(
            "{}: llama.cpp sees {} tokens, edge-run {n_vocab}",
            model.display(),
            lc.n_vocab()
        )));
    }
    let base_speed = lc.bench(&prompt, w.n_gen, w.reps)?;
    let mut lora = None;
    if !w.adapters.is_empty() {
        let tmp =
            std::env::temp_dir().join(format!("edge-run-vs-llama-cpp-{}", std::process::id()));
        let result = (|| {
            let mut files = Vec::new();
            for (i, (p, s)) in w.adapters.iter().enumerate() {
                if is_gguf(p) {
                    files.push((p.clone(), *s));
                } else {
                    std::fs::create_dir_all(&tmp).map_err(|e| Error::Io {
                        path: tmp.clone(),
                        source: e,
                    })?;
                    let out = tmp.join(format!("adapter{i}.gguf"));
                    super::super::convert::convert(p, base, &out)?;
                    files.push((out, *s));
                }
            }
            let set: Vec<(&Path, f32)> = files.iter().map(|(p, s)| (p.as_path(), *s)).collect();
            lc.set_adapters(&set)?;
            lc.bench(&prompt, w.n_gen, w.reps)
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        lora = Some(result?);
    }
    Ok(BenchVs {
        base: base_speed,
        lora,
        system_info: system_info(),
        repacked: lc.repacked(),
    })
}

pub(super) fn is_gguf(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    p.is_file()
        && std::fs::File::open(p)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}
