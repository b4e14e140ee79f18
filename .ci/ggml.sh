#!/usr/bin/env bash
# The `ggml` feature's tests, once: llama.cpp/ggml (vendored by llama-cpp-sys-2, bindings by bindgen) built in
# the test process, as the oracle for our dequantization, activation quantizers and dot products, and to run
# llama.cpp on re-quantized models and converted adapters. Installs cmake and libclang if missing.
#
# llama-cpp-sys-2 builds llama.cpp for baseline x86-64 unless told which instruction sets to use: they are
# read from /proc/cpuinfo here. AMX stays off (it faults on these machines), and the runner also disables
# llama.cpp's extra buffer types.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# bindgen loads libclang.so or libclang-<N>.so; the llvm packages' libclang-cpp.so is not it.
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1 || missing+=(clang libclang-dev)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { [[ $flags == *" $1 "* ]]; }
ggml_env=(GGML_AMX_TILE=OFF GGML_AMX_INT8=OFF GGML_AMX_BF16=OFF)
if has avx && has avx2 && has fma && has f16c; then ggml_env+=(GGML_AVX=ON GGML_AVX2=ON GGML_FMA=ON GGML_F16C=ON); fi
if has bmi2; then ggml_env+=(GGML_BMI2=ON); fi
if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then
    ggml_env+=(GGML_AVX512=ON)
    if has avx512_vnni; then ggml_env+=(GGML_AVX512_VNNI=ON); fi
    if has avx512vbmi; then ggml_env+=(GGML_AVX512_VBMI=ON); fi
    if has avx512_bf16; then ggml_env+=(GGML_AVX512_BF16=ON); fi
fi
echo "== ggml feature: llama.cpp built with ${ggml_env[*]}"
env "${ggml_env[@]}" cargo test --release --features ggml --test ggml_oracle --test ggml_llama -- --nocapture
