#!/usr/bin/env bash
# Run edge-run's test suite: fetch the test model if missing, then every test of the workspace in release
# mode (the model-level tests are too slow unoptimized). Tiers the CPU offers are printed by the kernel tests.
set -euo pipefail
cd "$(dirname "$0")/.."
models/fetch.sh
cargo test --release --workspace "$@"
