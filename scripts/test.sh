#!/usr/bin/env bash
# Run edge-run's test suite: fetch the models the tests run (SmolLM2-135M-Instruct Q4_1 and Gemma 3 270M
# Q4_K_M) if missing, then every test of the workspace in release mode (the model-level tests are too
# slow unoptimized), with the HTTP server (feature serve) built in. Tiers the CPU offers are printed by the kernel tests.
set -euo pipefail
cd "$(dirname "$0")/.."
models/fetch.sh smollm2
models/fetch.sh gemma3
# The official `openai` Python client for tests/serve.rs, in a venv of its own (a failure here fails the run).
venv=target/openai-venv
if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
    python3 -m venv "$venv" || { apt-get update -qq && apt-get install -y python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install --quiet openai
fi
export EDGE_RUN_OPENAI_PYTHON=$PWD/$venv/bin/python
cargo test --release --workspace --features edge-run/serve "$@"
