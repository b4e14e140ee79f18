//! edge-run: run quantized GGUF language models on small devices, with LoRA adapters applied as an
//! fp16 low-rank side computation over the memory-mapped, never-modified base weights.
//!
//! Module map:
//! - [`gguf`]: zero-copy GGUF reader (checked cursor over mapped bytes) and a writer for fixtures/tools.
//! - [`tokenizer`], [`chat`]: tokenizers built from GGUF metadata, chat templates via a Jinja engine.
//! - [`model`], [`session`]: the mapped model and a session that owns every buffer of the forward pass.
//! - [`arch`]: the forward pass of each architecture (llama, gemma3) and the operations they share.
//! - [`sampling`]: greedy / temperature / top-k / top-p / min-p / repetition penalty, seeded.
//! - [`kernels`]: re-export of the `edge-run-kernels` crate (quantized and LoRA SIMD kernels).
pub mod adapter;
pub mod chat;
pub mod error;
pub mod gguf;
pub mod tokenizer;

pub use edge_run_kernels as kernels;
pub use error::{Error, Result};
pub mod arch;
pub mod bench;
pub mod capi;
pub mod diagnose;
/// llama.cpp/ggml in the same process (feature `ggml`): oracle kernels, a runner, model quantization.
#[cfg(feature = "ggml")]
pub mod ggml;
pub mod loader;
pub mod merge;
pub mod mmap;
pub mod model;
pub mod sampling;
pub mod session;
pub mod threadpool;

pub use model::Model;
pub use sampling::{Sampler, SamplingParams};
pub use session::{Session, SessionConfig};
