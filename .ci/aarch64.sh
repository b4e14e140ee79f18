#!/usr/bin/env bash
# aarch64 check of the kernels crate on an x86-64 host: cross-compiles edge-run-kernels for
# aarch64-unknown-linux-gnu and runs its whole test suite under qemu-user twice,
#   - as a Cortex-A72 (Raspberry Pi 4: Advanced SIMD, no dot product)  -> tiers scalar, neon
#   - as qemu's "max" CPU (every extension, incl. dotprod)               -> tiers scalar, neon, neon-dotprod
# and checks that exactly those tiers are detected (EDGE_RUN_EXPECT_TIERS makes kernels/tests/tiers.rs
# fail if a named SIMD tier was not compared against scalar). Also builds the crate without `std`.
#
# Idempotent: installs the cross toolchain, qemu-user and the rustup target only when missing.
# Usage: bash .ci/aarch64.sh   (honours CARGO_TARGET_DIR; run as root or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

# ---------------------------------------------------------------- setup (idempotent)
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[ -e "$SYSROOT/lib/ld-linux-aarch64.so.1" ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "== aarch64: installing ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "== aarch64: rustup target add $TARGET"
    rustup target add "$TARGET"
fi
# .cargo/config.toml sets the linker and a default runner; set the linker here too so the script
# also works from a checkout without it.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc

summary=()

# ---------------------------------------------------------------- model-level tests
# Called once per emulated CPU, with the runner and EDGE_RUN_EXPECT_TIERS already exported for that CPU.
# Kept small: everything runs under emulation (roughly 10-50x slower than native).
model_tests() {
    local cpu="$1"
    # The root crate's model-level tests on the tiny fixtures (models/fixtures), under this emulated CPU:
    #  - tests/fixtures.rs: logits of every fixture model (every weight type) and with LoRA adapters
    #    against the float64 reference on every kernel tier the CPU offers, batch/thread invariance,
    #    tokenizers;
    #  - tests/capi.rs: the C API; examples/c/main.c is compiled with aarch64-linux-gnu-gcc against the
    #    aarch64 libedge_run.a and run under the same qemu runner (the test reads it from
    #    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER).
    # Left out, by name: cli_info_and_logits (execs the aarch64 `edge-run` binary, which needs
    # binfmt_misc) and c_example_on_real_model (the 94 MB model is too slow under emulation).
    # The first call cross-compiles the root crate and all its dependencies for aarch64 (measured
    # 5.6 min on 2 shared cores); the tests themselves take ~5 s per CPU.
    local t0=$SECONDS out want got
    want="scalar, ${EDGE_RUN_EXPECT_TIERS//,/, }"
    echo "-- model-level tests of the root crate under qemu -cpu $cpu (tiny fixtures)"
    out=$(cargo test --target "$TARGET" -p edge-run --test fixtures -- --nocapture --skip cli_info_and_logits 2>&1) || {
        echo "$out"
        echo "FAIL: tests/fixtures.rs under qemu -cpu $cpu" >&2
        exit 1
    }
    echo "$out" | grep -E '^(test |kernel tiers run)' | awk '!/^kernel tiers run/ || !seen[$0]++'
    got=$(echo "$out" | sed -n 's/^kernel tiers run: //p' | sort -u)
    if [ "$got" != "$want" ]; then
        echo "FAIL: qemu -cpu $cpu: fixture tests ran tiers [$got], expected [$want]" >&2
        exit 1
    fi
    out=$(cargo test --target "$TARGET" -p edge-run --test capi -- --skip c_example_on_real_model 2>&1) || {
        echo "$out"
        echo "FAIL: tests/capi.rs under qemu -cpu $cpu" >&2
        exit 1
    }
    echo "$out" | grep -E '^test '
    summary+=("qemu -cpu $cpu: model tests (tests/fixtures.rs on tiers $got; tests/capi.rs incl. the C example) passed in $((SECONDS - t0)) s")
}

# ---------------------------------------------------------------- one emulated CPU
# run_cpu CPU EXPECTED_SIMD_TIERS(comma list)
run_cpu() {
    local cpu="$1" expect="$2"
    local t0=$SECONDS
    echo
    echo "================ aarch64 kernels under qemu -cpu $cpu (expecting scalar,$expect) ================"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT -cpu $cpu"
    export EDGE_RUN_EXPECT_TIERS="$expect"
    cargo test --target "$TARGET" -p edge-run-kernels
    # Which tiers did this CPU offer? (tiers.rs prints the list; require it to be exactly the expected one.)
    local avail
    avail=$(cargo test -q --target "$TARGET" -p edge-run-kernels --test tiers expected_tiers_are_available -- --nocapture 2>&1 |
        sed -n 's/^available tiers: //p')
    echo "-- qemu -cpu $cpu: available tiers: ${avail:-<none printed>}"
    if [ "$avail" != "scalar, ${expect//,/, }" ]; then
        echo "FAIL: qemu -cpu $cpu offered tiers [$avail], expected [scalar, ${expect//,/, }]" >&2
        exit 1
    fi
    model_tests "$cpu"
    summary+=("qemu -cpu $cpu: tiers run = $avail; kernel suite passed in $((SECONDS - t0)) s")
}

t_start=$SECONDS
echo "== aarch64: no_std build (cargo build -p edge-run-kernels --no-default-features --target $TARGET)"
cargo build -p edge-run-kernels --no-default-features --target "$TARGET"
summary+=("no_std build of edge-run-kernels for $TARGET: ok")

run_cpu cortex-a72 neon
run_cpu max neon,neon-dotprod

echo
echo "================ aarch64 summary ================"
for s in "${summary[@]}"; do echo "  $s"; done
echo "  total $((SECONDS - t_start)) s"
