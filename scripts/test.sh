#!/usr/bin/env bash
# Run edge-run's test suite: fetch the models the tests run (SmolLM2-135M-Instruct Q4_1 and Gemma 3 270M
# Q4_K_M) if missing, then every test of the workspace in release mode (the model-level tests are too
# slow unoptimized). Tiers the CPU offers are printed by the kernel tests.
set -euo pipefail
cd "$(dirname "$0")/.."
models/fetch.sh smollm2
models/fetch.sh gemma3
cargo test --release --workspace "$@"
