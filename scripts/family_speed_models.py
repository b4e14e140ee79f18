#!/usr/bin/env python3
"""Write full-size copies of SmolLM2-135M (GGUF arch `llama`) dressed as other model families.

The weights are reused unchanged (same quantized bytes); only the architecture name, the
`{arch}.*` metadata keys and the family-specific extra tensors change, so each copy has the
shapes and types of a real model of that family at SmolLM2-135M's size. The outputs are meant
for decode-speed measurements, not for meaningful text.

Files written into the output directory:
  llama-rewritten - the source unchanged, only passed through this writer (a control for
           effects of the file layout alone)
  qwen2  - `qwen2.*` keys, per-layer F32 Q/K/V biases
  qwen3  - `qwen3.*` keys, per-layer F32 Q/K norms [head_dim], key/value length
  llama3 - `llama` arch plus a `rope_freqs.weight` F32 tensor [rope_dim / 2]
  phi3   - `phi3.*` keys, Q/K/V fused into `attn_qkv`, gate/up fused into `ffn_up`

Usage (needs the `gguf` and `numpy` packages):

    python scripts/family_speed_models.py models/SmolLM2-135M-Instruct.Q4_1.gguf OUT_DIR
    for f in OUT_DIR/*.gguf; do ./target/release/edge-run bench -m $f -t 1 -p 32 -n 128 -r 3; done

Compare each family with `llama-rewritten.gguf` (same bytes, written at the same time), not with the
source file: where a file's pages lie can move decode speed by several percent on its own.
"""
import os
import sys

import numpy as np
import gguf

if len(sys.argv) != 3:
    sys.exit(__doc__)
SRC, OUT = sys.argv[1], sys.argv[2]


def read_source(path):
    r = gguf.GGUFReader(path)
    kv = []  # (name, value, type, sub_type) in file order
    for f in r.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        vt = f.types[0]
        st = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        kv.append((f.name, f.contents(), vt, st))
    tensors = [(t.name, t.tensor_type, np.asarray(t.data)) for t in r.tensors]
    return r, kv, tensors


def get_kv(kv, name):
    for k, v, _, _ in kv:
        if k == name:
            return v
    raise KeyError(name)


def write(path, arch, kv, extra_kv, tensors):
    """kv: source keys; `llama.*` keys are renamed to `{arch}.*`. extra_kv overrides/adds keys.
    tensors: list of (name, ggml type, numpy array in reader layout)."""
    w = gguf.GGUFWriter(path, arch)
    for k, v, vt, st in kv:
        if k.startswith("llama."):
            k = arch + "." + k[len("llama."):]
        if k in extra_kv:
            continue
        w.add_key_value(k, v, vt, sub_type=st)
    for k, (v, vt) in extra_kv.items():
        w.add_key_value(k, v, vt)
    for name, ty, data in tensors:
        if ty in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def f32(shape, value):
    return np.full(shape, value, dtype=np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    _, kv, tensors = read_source(SRC)
    n_layer = int(get_kv(kv, "llama.block_count"))
    n_embd = int(get_kv(kv, "llama.embedding_length"))
    n_head = int(get_kv(kv, "llama.attention.head_count"))
    n_head_kv = int(get_kv(kv, "llama.attention.head_count_kv"))
    head_dim = n_embd // n_head
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    U32, F32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    by_name = {n: (ty, d) for n, ty, d in tensors}

    # Keys every family below reads as required (present in the source, stated again to be explicit).
    base_keys = lambda arch: {
        f"{arch}.attention.layer_norm_rms_epsilon":
            (float(get_kv(kv, "llama.attention.layer_norm_rms_epsilon")), F32),
        f"{arch}.rope.freq_base": (float(get_kv(kv, "llama.rope.freq_base")), F32),
    }

    def with_layer_extras(extras):
        """The source tensors with extra per-layer tensors inserted after each layer's attn_v."""
        out = []
        for name, ty, data in tensors:
            out.append((name, ty, data))
            if name.startswith("blk.") and name.endswith(".attn_v.weight"):
                i = int(name.split(".")[1])
                out.extend(extras(i))
        return out

    # control: the source model as is, written by the same writer
    write(f"{OUT}/llama-rewritten.gguf", "llama", kv, {}, tensors)

    # qwen2: Q/K/V biases (small values)
    qwen2 = with_layer_extras(lambda i: [
        (f"blk.{i}.attn_q.bias", gguf.GGMLQuantizationType.F32, f32(q_dim, 0.01)),
        (f"blk.{i}.attn_k.bias", gguf.GGMLQuantizationType.F32, f32(kv_dim, 0.01)),
        (f"blk.{i}.attn_v.bias", gguf.GGMLQuantizationType.F32, f32(kv_dim, 0.01)),
    ])
    write(f"{OUT}/qwen2.gguf", "qwen2", kv, base_keys("qwen2"), qwen2)

    # qwen3: per-head Q/K RMS norms (ones) and explicit key/value head size
    qwen3 = with_layer_extras(lambda i: [
        (f"blk.{i}.attn_q_norm.weight", gguf.GGMLQuantizationType.F32, f32(head_dim, 1.0)),
        (f"blk.{i}.attn_k_norm.weight", gguf.GGMLQuantizationType.F32, f32(head_dim, 1.0)),
    ])
    q3keys = base_keys("qwen3")
    q3keys["qwen3.attention.key_length"] = (head_dim, U32)
    q3keys["qwen3.attention.value_length"] = (head_dim, U32)
    write(f"{OUT}/qwen3.gguf", "qwen3", kv, q3keys, qwen3)

    # llama3: a RoPE frequency-divisor tensor, one per rotated pair (ones: unchanged frequencies)
    rope_dim = int(get_kv(kv, "llama.rope.dimension_count"))
    llama3 = [("rope_freqs.weight", gguf.GGMLQuantizationType.F32, f32(rope_dim // 2, 1.0))] + tensors
    write(f"{OUT}/llama3.gguf", "llama", kv, {}, llama3)

    # phi3: fused attn_qkv (q rows, then k, then v) and fused ffn_up (gate rows, then up).
    # Quantized tensors are stored row by row, so fusing is concatenating the rows' bytes.
    phi3 = []
    for name, ty, data in tensors:
        parts = name.split(".")
        if name.startswith("blk.") and parts[2] in ("attn_k", "attn_v", "ffn_gate"):
            continue  # folded into a fused tensor below
        if name.startswith("blk.") and parts[2] == "attn_q":
            i = parts[1]
            qkv = [by_name[f"blk.{i}.{p}.weight"] for p in ("attn_q", "attn_k", "attn_v")]
            assert len({t for t, _ in qkv}) == 1, "q, k, v must share a type to be fused"
            phi3.append((f"blk.{i}.attn_qkv.weight", ty, np.concatenate([d for _, d in qkv], axis=0)))
            continue
        if name.startswith("blk.") and parts[2] == "ffn_up":
            i = parts[1]
            gu = [by_name[f"blk.{i}.{p}.weight"] for p in ("ffn_gate", "ffn_up")]
            assert len({t for t, _ in gu}) == 1, "gate and up must share a type to be fused"
            phi3.append((name, ty, np.concatenate([d for _, d in gu], axis=0)))
            continue
        phi3.append((name, ty, data))
    p3keys = base_keys("phi3")
    write(f"{OUT}/phi3.gguf", "phi3", kv, p3keys, phi3)


if __name__ == "__main__":
    main()
