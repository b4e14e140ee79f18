#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M-Instruct (Q4_1) if missing, build edge-run, and answer one chat prompt
# with the base model and with a LoRA adapter (the pirate adapter, applied unmerged in fp16).
set -euo pipefail
cd "$(dirname "$0")/.."
models/fetch.sh
cargo build --release --quiet
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
Q="${1:-What is the capital of France?}"
echo "== base model: $Q"
target/release/edge-run -m "$M" --chat -p "$Q" -n 64 --temp 0
echo
echo "== with the pirate LoRA adapter (tests/data/adapters/pirate.gguf): $Q"
target/release/edge-run -m "$M" --chat -p "$Q" -n 64 --temp 0 --adapter tests/data/adapters/pirate.gguf
