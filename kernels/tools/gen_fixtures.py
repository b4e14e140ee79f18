#!/usr/bin/env python3
"""Generate the kernel test fixtures in kernels/tests/data/ from independent implementations.

Oracles (see kernels/tests/data/PROVENANCE.md):
- gguf-py (llama.cpp's Python package, `gguf.quants`): quantize + dequantize for Q4_0, Q4_1, Q5_0,
  Q5_1, Q8_0, BF16; dequantize only for Q4_K, Q5_K, Q6_K; numpy's float16 for F16.
- numpy code in this file for what gguf-py lacks: Q8_1 (built on gguf-py's Q8_0 result, plus the
  `s` field) and Q8_K (ggml's quantize_row_q8_K_ref semantics, written here with numpy).

Run from anywhere:  python3 kernels/tools/gen_fixtures.py
Deterministic (fixed seed); rewrites every file it owns. Needs numpy and gguf.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
rng = np.random.default_rng(20240611)

N = 768  # 3 super-blocks = 24 legacy blocks
QK = 32
QK_K = 256


def write(name: str, arr: np.ndarray) -> None:
    data = np.ascontiguousarray(arr).tobytes()
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print(f"{name:24s} {len(data):6d} bytes")


def f16_bytes(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32).astype(np.float16).reshape(-1, 1).view(np.uint8).reshape(-1, 2)


# ----------------------------------------------------------------------------------------------
# Weight rows (input of the gguf-py quantizers), with special blocks
# ----------------------------------------------------------------------------------------------
def weight_rows() -> np.ndarray:
    blocks = []
    blocks.append(np.zeros(QK, np.float32))  # all zero: d = 0, id = 0
    blocks.append(np.full(QK, 0.3, np.float32))  # constant: max == min for Q4_1/Q5_1
    b = rng.normal(0, 0.02, QK).astype(np.float32)
    b[7] = -0.5  # negative value of largest magnitude
    blocks.append(b)
    b = rng.normal(0, 0.02, QK).astype(np.float32)
    b[3] = 0.5
    b[20] = -0.5  # equal magnitudes: first one wins in ggml's scan
    blocks.append(b)
    blocks.append(rng.normal(0, 1e-6, QK).astype(np.float32))  # f16-subnormal scales
    blocks.append(rng.normal(0, 300.0, QK).astype(np.float32))  # large values
    # values on the q grid (x*id + 8.5 lands on .0 / .5 boundaries)
    b = (rng.integers(-8, 8, QK).astype(np.float32) * np.float32(0.25))
    b[0] = -2.0
    blocks.append(b)
    blocks.append(np.abs(rng.normal(0, 0.1, QK)).astype(np.float32) + np.float32(1.0))  # all positive (min > 0)
    while len(blocks) < N // QK:
        scale = float(np.exp(rng.uniform(np.log(1e-3), np.log(10.0))))
        blocks.append(rng.normal(0, scale, QK).astype(np.float32))
    return np.concatenate(blocks).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Activation rows, with special blocks for the q8 quantizers
# ----------------------------------------------------------------------------------------------
def activation_rows() -> np.ndarray:
    x = np.empty(N, np.float32)
    # super-block 0: block 0 zero, block 1 exact ties (amax 127 -> d = 1, id = 1), rest random
    x[:QK_K] = rng.normal(0, 1.0, QK_K).astype(np.float32)
    x[0:QK] = 0.0
    ties = np.array([127.0, 2.5, -2.5, 3.5, -3.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5, 0.49999997,
                     -64.5, 64.5, 10.5, -11.5], np.float32)
    x[QK:2 * QK] = np.concatenate([ties, rng.integers(-120, 120, QK - len(ties)).astype(np.float32) + 0.5])
    # super-block 1: wide dynamic range and a dominating negative value
    sb = rng.normal(0, 1.0, QK_K).astype(np.float32)
    sb[0:QK] *= np.float32(1e-3)
    sb[QK:2 * QK] *= np.float32(50.0)
    sb[2 * QK + 5] = -400.0
    sb[3 * QK:4 * QK] = np.float32(-0.75)  # constant block
    x[QK_K:2 * QK_K] = sb
    # super-block 2: all zero except the last block (Q8_K d from a single block; Q8_0 zero blocks)
    x[2 * QK_K:] = 0.0
    x[3 * QK_K - QK:] = rng.normal(0, 0.5, QK).astype(np.float32)
    return x


def q8_1_from_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_1 = Q8_0's d and qs (same formulas in ggml) + s = fp16(float(sum(qs)) * d_f32)."""
    q80 = quantize(x, T.Q8_0).reshape(-1, 34)
    qs = q80[:, 2:].view(np.int8)
    xb = x.reshape(-1, QK)
    d = np.abs(xb).max(axis=1) / np.float32(127)  # f32, before fp16 rounding
    s = qs.astype(np.int32).sum(axis=1).astype(np.float32) * d
    return np.concatenate([q80[:, :2], f16_bytes(s), q80[:, 2:]], axis=1)


def q8_k(x: np.ndarray) -> np.ndarray:
    """ggml quantize_row_q8_K_ref: iscale = -127/max (max = first value of largest |x|),
    q = min(127, round-half-even(iscale*x)), d = 1/iscale, bsums over groups of 16."""
    out = []
    for xb in x.reshape(-1, QK_K):
        ax = np.abs(xb)
        amax = ax.max()
        if amax == 0:
            d = np.float32(0)
            qs = np.zeros(QK_K, np.int8)
        else:
            mx = xb[int(np.argmax(ax))]
            iscale = np.float32(-127.0) / mx
            v = np.rint((iscale * xb).astype(np.float32))  # f32 product, ties to even
            qs = np.minimum(v, 127).astype(np.int8)
            d = np.float32(1.0) / iscale
        bsums = qs.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
        out.append(np.concatenate([np.array([d], np.float32).view(np.uint8), qs.view(np.uint8),
                                   bsums.view(np.uint8)]))
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------
# Random valid blocks (every bit pattern of the quant fields; sane finite f16 scales)
# ----------------------------------------------------------------------------------------------
def rand_f16(n, sigma):
    v = rng.normal(0, sigma, n).astype(np.float32)
    v[0] = 0.0
    if n > 1:
        v[1] = 3e-7  # f16 subnormal
    return f16_bytes(v)


LAYOUT = {  # type: (type_size, [(offset, kind, sigma)], elements per block)
    T.Q4_0: (18, [(0, "f16", 0.05)], QK),
    T.Q4_1: (20, [(0, "f16", 0.05), (2, "f16", 0.2)], QK),
    T.Q5_0: (22, [(0, "f16", 0.05)], QK),
    T.Q5_1: (24, [(0, "f16", 0.05), (2, "f16", 0.2)], QK),
    T.Q8_0: (34, [(0, "f16", 0.01)], QK),
    T.Q4_K: (144, [(0, "f16", 0.01), (2, "f16", 0.01)], QK_K),
    T.Q5_K: (176, [(0, "f16", 0.01), (2, "f16", 0.01)], QK_K),
    T.Q6_K: (210, [(208, "f16", 0.005)], QK_K),
}


def rand_blocks(t) -> np.ndarray:
    ts, fields, bs = LAYOUT[t]
    nb = N // bs
    b = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
    for off, _, sigma in fields:
        b[:, off:off + 2] = rand_f16(nb, sigma)
    return b.reshape(-1)


NAMES = {T.Q4_0: "q4_0", T.Q4_1: "q4_1", T.Q5_0: "q5_0", T.Q5_1: "q5_1", T.Q8_0: "q8_0",
         T.Q4_K: "q4_k", T.Q5_K: "q5_k", T.Q6_K: "q6_k"}


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    from importlib.metadata import version
    print(f"gguf-py {version('gguf')} from {os.path.dirname(gguf.__file__)}; numpy {np.__version__}")

    w = weight_rows()
    write("weights_src.f32", w)
    for t in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        write(f"{NAMES[t]}_quant.bin", quantize(w, t))

    for t in NAMES:
        blocks = rand_blocks(t)
        write(f"{NAMES[t]}_rand.bin", blocks)
        write(f"{NAMES[t]}_rand_deq.f32", dequantize(blocks, t).astype(np.float32))

    # F16: every class of value (normal, subnormal, zero, inf) from random bits; NaN left out.
    h = rng.integers(0, 1 << 16, 256, dtype=np.uint16)
    h[(h & 0x7C00) == 0x7C00] &= 0xFC00  # NaN -> inf of the same sign
    h[:4] = [0x0000, 0x8000, 0x0001, 0x7C00]
    write("f16_rand.bin", h)
    write("f16_rand_deq.f32", dequantize(h.view(np.uint8), T.F16).astype(np.float32))

    # BF16: gguf-py quantize (round to nearest even) and dequantize.
    bsrc = np.concatenate([rng.normal(0, 1, 120).astype(np.float32),
                           np.array([0.0, -0.0, 1e-40, 3.0e38, 1.00390625, 1.01171875, -1.00390625, 1.0], np.float32)])
    bq = quantize(bsrc, T.BF16)
    write("bf16_quant.bin", bq)
    write("bf16_quant_deq.f32", dequantize(bq, T.BF16).astype(np.float32))

    x = activation_rows()
    write("act_src.f32", x)
    write("act_q8_0.bin", quantize(x, T.Q8_0))
    write("act_q8_1.bin", q8_1_from_q8_0(x))
    write("act_q8_k.bin", q8_k(x))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT) if not f.endswith(".md"))
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
