#!/usr/bin/env bash
# Fuzz edge-run's input validation with cargo-fuzz (libFuzzer + AddressSanitizer, nightly Rust).
#
#   bash .ci/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Defaults: 25 s for each of gguf_parse, model_load, adapter_gguf, adapter_peft, tokenizer,
# chat_template, state_load. Each target starts from its seeds in fuzz/corpus/<target>/ (never modified: new
# inputs go to a scratch corpus under $FUZZ_WORK, default /tmp/edge-run-fuzz) and stops at the first
# crash, leak or timeout (> 10 s for one input), whose input libFuzzer saves under fuzz/artifacts/.
# Installs what is missing: a C++ compiler (for libFuzzer), the nightly toolchain (or falls back to
# RUSTC_BOOTSTRAP=1), cargo-fuzz.
# Set FUZZ_SANITIZER=none for a faster run without ASan.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-25}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf_parse model_load adapter_gguf adapter_peft tokenizer chat_template state_load)
WORK="${FUZZ_WORK:-/tmp/edge-run-fuzz}"
SANITIZER="${FUZZ_SANITIZER:-address}"

# ---------------------------------------------------------------- setup (idempotent)
if ! command -v c++ >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends g++
fi
# libFuzzer's instrumentation needs unstable rustc flags (-Zsanitizer, -Cpasses=sancov): use the nightly
# toolchain if it is installed or can be installed, else the default toolchain with RUSTC_BOOTSTRAP=1 (which
# lets a stable rustc accept them; same compiler features, no second download).
TC=()
if rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal; then
    TC=(+nightly)
else
    echo "== no nightly toolchain: fuzzing with $(rustc --version) and RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# ---------------------------------------------------------------- build once, then run each target
cargo "${TC[@]}" fuzz build --sanitizer "$SANITIZER" 2>&1 | tail -n 3
summary=()
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t" "fuzz/artifacts/$t"
    log="$WORK/$t.log"
    echo "== fuzz $t for ${SECS}s (sanitizer $SANITIZER)"
    if cargo "${TC[@]}" fuzz run --sanitizer "$SANITIZER" "$t" "$WORK/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1; then
        res="ok"
    else
        res="FAILED (see $log and fuzz/artifacts/$t/)"
        status=1
        grep -E "ERROR|panicked|SUMMARY|Test unit written" "$log" | head -n 8 || true
    fi
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -n 1)
    cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+' || true)
    summary+=("$t: ${runs:-?} runs, ${cov:-cov: ?}, $res")
done
echo "== fuzz summary"
printf '  %s\n' "${summary[@]}"
exit $status
