#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M-Instruct (Q4_1) if missing (the only model this demo runs), build
# edge-run, and answer one chat prompt with the base model and with a LoRA adapter (the pirate adapter,
# applied unmerged in fp16).
set -euo pipefail
cd "$(dirname "$0")/.."
models/fetch.sh smollm2
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/edge-run"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
Q="${1:-What is the capital of France?}"
echo "== base model: $Q"
"$BIN" -m "$M" --chat -p "$Q" -n 64 --temp 0
echo
echo "== with the pirate LoRA adapter (tests/data/adapters/pirate.gguf): $Q"
"$BIN" -m "$M" --chat -p "$Q" -n 64 --temp 0 --adapter tests/data/adapters/pirate.gguf
