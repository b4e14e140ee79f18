//! The tools the `edge-run` binary adds to the runtime library: nothing here is part of `libedge_run`
//! (the static library firmware links), and everything here uses only the library's public API.
//! - [`bench`]: the `edge-run bench` workload and the memory roofline (shared with the criterion
//!   benches);
//! - [`convert`]: `edge-run adapter convert`, any adapter written as a llama.cpp GGUF adapter;
//! - [`merge`]: `edge-run merge`, adapters folded into the weights of a new GGUF;
//! - [`diagnose`]: `edge-run diagnose`, what adapters do to a model;
//! - [`ggml`] (feature `ggml`): llama.cpp in the same process, for `bench --vs-llama-cpp`,
//!   `edge-run quantize` and the oracle tests.
//!
//! Tests and benches that call these functions include this directory as a module
//! (`#[path = "../src/bin/edge-run/tools/mod.rs"] mod tools;`).
pub mod bench;
pub mod convert;
pub mod diagnose;
/// llama.cpp/ggml in the same process (feature `ggml`): oracle kernels, a runner, model quantization.
/// The binary uses the runner and the quantizer, the tests the oracle kernels and the runner's logits:
/// each crate that includes the module leaves part of it unused.
#[cfg(feature = "ggml")]
#[allow(dead_code)]
pub mod ggml;
pub mod merge;

/// `v` with the keys of every object in sorted order: the reports' JSON keeps the form it always had,
/// whatever order serde_json's maps keep (the crate is built with `preserve_order`).
pub fn sorted_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted_keys(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted_keys).collect()),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sorted_keys_orders_every_object() {
        let v = serde_json::json!({"b": 1, "a": [{"z": 0, "y": {"d": 1, "c": 2}}]});
        assert_eq!(
            super::sorted_keys(v).to_string(),
            r#"{"a":[{"y":{"c":2,"d":1},"z":0}],"b":1}"#
        );
    }
}
