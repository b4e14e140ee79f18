#!/usr/bin/env bash
# The Raspberry Pi cost model: cycles per 256 weight·token products of edge-run's NEON kernels and of
# the llama.cpp (ggml-cpu) kernels a Pi 4 / Pi 5 build runs, per weight type, for decode and prefill,
# from llvm-mca 19 on the executed instruction trace of one kernel call (see scripts/arm-model/).
#
#   cortex-a72: llvm-mca -mcpu=cortex-a72 (Raspberry Pi 4; no dotprod; llama.cpp -march=armv8-a)
#   cortex-a76: llvm-mca -mcpu=neoverse-n1 -mattr=+dotprod (Raspberry Pi 5: llvm-mca 19's cortex-a76
#               model is its Cortex-A57 one, the Neoverse N1 is the A76-derived core it models;
#               llama.cpp -march=armv8.2-a+dotprod)
#
# llama.cpp's sources come from the llama-cpp-sys-2 crate (an optional dependency of the root crate,
# feature `ggml`): `cargo fetch` downloads it; nothing of it is built with cargo. Its two CPU files
# (ggml-cpu/arch/arm/quants.c, repack.cpp) are compiled with clang --target=aarch64-linux-gnu -O3
# and the definitions its CMake passes, into a small harness (scripts/arm-model/ggml_harness.c);
# edge-run's kernels go into scripts/arm-model/harness (a binary crate on edge-run-kernels).
# Both run under qemu-user; llvm-mca gets the instruction sequence each call executed.
#
# Output: a readable table, a modelled decode tok/s table (two small models on both boards, from the
# decode cycles and the boards' DRAM bandwidth; see model.py), then one JSON line (last line of stdout):
#   {"cortex-a72": {"q4_0": {"decode": {"edge_run": C, "llama_cpp": C, "edge_run_q8x2": C, ...},
#                            "prefill": {...}}, ...}, "cortex-a76": {...}}
#
# Idempotent; installs what is missing (llvm-19, clang, the aarch64 cross C/C++ libraries, qemu-user,
# python3, the rustup target). Honours CARGO_TARGET_DIR. Usage: bash scripts/arm-model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=aarch64-unknown-linux-gnu

# ---------------------------------------------------------------- setup (idempotent)
LLVM=/usr/lib/llvm-19/bin
missing=()
[ -x "$LLVM/llvm-mca" ] && [ -x "$LLVM/llvm-mc" ] || missing+=(llvm-19)
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.a ] || missing+=(libc6-dev-arm64-cross)
ls /usr/aarch64-linux-gnu/include/c++/*/cstdint >/dev/null 2>&1 || missing+=(libstdc++-12-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "== arm-model: installing ${missing[*]}" >&2
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET" >&2
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export LLVM_BIN=$LLVM

# ---------------------------------------------------------------- llama.cpp's sources
VER=$(sed -n '/^name = "llama-cpp-sys-2"/{n;s/^version = "\(.*\)"/\1/p}' Cargo.lock)
[ -n "$VER" ] || { echo "arm-model: llama-cpp-sys-2 not in Cargo.lock" >&2; exit 1; }
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
find_src() { ls -d "$CARGO_HOME"/registry/src/*/llama-cpp-sys-2-"$VER"/llama.cpp/ggml 2>/dev/null | head -1; }
G=$(find_src)
if [ -z "$G" ]; then
    echo "== arm-model: cargo fetch (llama-cpp-sys-2 $VER sources)" >&2
    cargo fetch >&2
    G=$(find_src)
fi
[ -d "$G/src/ggml-cpu/arch/arm" ] || { echo "arm-model: no ggml sources under $G" >&2; exit 1; }

# ---------------------------------------------------------------- harnesses
OUT=${CARGO_TARGET_DIR:-$ROOT/target}/arm-model
mkdir -p "$OUT"
CC=clang
echo "== arm-model: $($CC --version | head -1); llama.cpp from llama-cpp-sys-2 $VER" >&2
# The definitions ggml-cpu's CMake passes for a Linux aarch64 build, plus -O3 -DNDEBUG (Release).
DEFS="-D_GNU_SOURCE -D_XOPEN_SOURCE=600 -DNDEBUG -DGGML_USE_LLAMAFILE -DGGML_USE_CPU_REPACK -DGGML_SCHED_MAX_COPIES=4"
INC="-I$G/include -I$G/src -I$G/src/ggml-cpu"
for v in a72:armv8-a a76:armv8.2-a+dotprod; do
    name=${v%%:*} march=${v#*:}
    exe=$OUT/ggml_harness_$name
    stamp="$OUT/ggml_harness_$name.flags"
    flags="$CC $march $DEFS $(cat scripts/arm-model/ggml_harness.c | md5sum)"
    if [ -x "$exe" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$flags" ]; then continue; fi
    cf="--target=aarch64-linux-gnu -O3 -march=$march $DEFS $INC"
    $CC $cf -std=c11 -c "$G/src/ggml-cpu/arch/arm/quants.c" -o "$OUT/quants_$name.o"
    $CC $cf -std=c++17 -c "$G/src/ggml-cpu/arch/arm/repack.cpp" -o "$OUT/repack_$name.o"
    $CC $cf -std=c11 -c scripts/arm-model/ggml_harness.c -o "$OUT/harness_$name.o"
    # Only the measured kernels are called; the rest of ggml is left unresolved.
    aarch64-linux-gnu-gcc -static "$OUT/harness_$name.o" "$OUT/quants_$name.o" "$OUT/repack_$name.o" \
        -o "$exe" -Wl,--unresolved-symbols=ignore-all -lstdc++ -lm
    echo "$flags" >"$stamp"
done
echo "== arm-model: building scripts/arm-model/harness (edge-run-kernels, release, $TARGET)" >&2
cargo build -q --release --target "$TARGET" --manifest-path scripts/arm-model/harness/Cargo.toml >&2
EDGE=${CARGO_TARGET_DIR:-$ROOT/scripts/arm-model/harness/target}/$TARGET/release/arm-model-harness

# ---------------------------------------------------------------- the model
python3 scripts/arm-model/model.py "$OUT" "$EDGE"
