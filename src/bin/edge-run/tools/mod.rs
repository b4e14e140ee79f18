//! The tools the `edge-run` binary adds to the runtime library: nothing here is part of `libedge_run`
//! (the static library firmware links), and everything here uses only the library's public API.
//! - [`bench`]: the `edge-run bench` workload and the memory roofline (shared with the criterion
//!   benches);
//! - [`convert`]: `edge-run adapter convert`, any adapter written as a llama.cpp GGUF adapter;
//! - [`merge`]: `edge-run merge`, adapters folded into the weights of a new GGUF;
//! - [`diagnose`]: `edge-run diagnose`, what adapters do to a model;
//! - [`ggml`] (feature `ggml`): llama.cpp in the same process, for `bench --vs-llama-cpp` and the
//!   oracle tests.
//!
//! Tests and benches that call these functions include this directory as a module
//! (`#[path = "../src/bin/edge-run/tools/mod.rs"] mod tools;`).
pub mod bench;
pub mod convert;
pub mod diagnose;
/// llama.cpp/ggml in the same process (feature `ggml`): oracle kernels, a runner, model quantization.
#[cfg(feature = "ggml")]
pub mod ggml;
pub mod merge;
