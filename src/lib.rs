//! edge-run: run quantized GGUF language models on small devices, with LoRA adapters applied as an
//! fp16 low-rank side computation over the memory-mapped, never-modified base weights.
//!
//! This crate is the runtime (what the static library `libedge_run.a` carries); the `edge-run`
//! binary adds the CLI and the tools (bench, merge, diagnose, adapter convert) in `src/bin/edge-run/`.
//!
//! Module map, from the leaves up:
//! - [`error`], [`mmap`] (every file mapping, with the truncation guard), [`threadpool`], [`sampling`]
//!   (greedy / temperature / top-k / top-p / min-p / repetition penalty, seeded);
//! - [`gguf`]: zero-copy GGUF reader (checked cursor over mapped bytes) and writer;
//! - [`tokenizer`], [`chat`]: tokenizers built from GGUF metadata, chat templates via a Jinja engine;
//! - [`model`]: the mapped model's weights and hyper-parameters; [`adapter`]: LoRA adapters and the
//!   set a session applies;
//! - [`arch`]: the forward pass of each architecture (llama, gemma3) and the operations they share;
//!   [`loader`]: `Model::open`, above both;
//! - [`session`]: a session that owns every buffer of the forward pass; [`state`]: saving and restoring
//!   its context; [`capi`]: the C API over it;
//! - [`kernels`]: re-export of the `edge-run-kernels` crate (quantized and LoRA SIMD kernels).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod adapter;
pub mod arch;
pub mod capi;
pub mod chat;
pub mod error;
pub mod gguf;
pub mod loader;
pub mod mmap;
pub mod model;
pub mod sampling;
pub mod session;
pub mod state;
pub mod threadpool;
pub mod tokenizer;

pub use edge_run_kernels as kernels;
pub use error::{Error, Result};
pub use model::Model;
pub use sampling::{Sampler, SamplingParams};
pub use session::{Session, SessionConfig, Shifted};
