#!/usr/bin/env python3
"""A float64 numpy forward pass of Gemma 3, written from the model's definition (Google's Gemma 3 /
Hugging Face `Gemma3ForCausalLM`), independent of edge-run's Rust code. Used by make_fixtures.py for the
tiny gemma3 fixture's expected logits, and runnable on a real GGUF as a diagnostic:

    python3 models/tools/gemma3_ref.py MODEL.gguf SEQUENCES.json [--llamacpp L.npz] [--compact OUT.npz]

prints, per reference sequence, the KL / top-1 of this float64 pass against llama.cpp's compact logits,
and writes its own logits in the same compact form (tests/data/gemma3/oracle_f64.npz was made so).

The model, as a GGUF holds it (gguf-py dequantizes every weight):
  h = embed[tokens] * sqrt(n_embd)
  per layer l (local iff the sliding-window pattern says so):
    a = rmsnorm(h) * attn_norm                         (GGUF norm weights already hold Gemma's 1 + w)
    q, k, v = a Wq^T, a Wk^T, a Wv^T, split in heads
    q, k = rmsnorm(q_head) * attn_q_norm, rmsnorm(k_head) * attn_k_norm
    q, k = rotate-half RoPE (pairs i, i + d/2) at the token's position, base 10000 (local) or
           rope.freq_base (global, divided by the linear scaling factor if any)
    o = softmax(q k^T * scale + mask) v, mask: causal, and for local layers key j is seen from query i
        only if i - j < window; scale = 1/sqrt(head_dim)
    h = h + rmsnorm(o Wo^T) * post_attention_norm
    f = rmsnorm(h) * ffn_norm
    h = h + rmsnorm(((gelu_tanh(f Wg^T)) * (f Wu^T)) Wd^T) * post_ffw_norm
  logits = rmsnorm(h) * output_norm @ embed^T (tied), then c*tanh(logits/c) if a soft cap is given.
LoRA: y = W x + scale * (alpha / r) * B (A x) on the named linear weights (an optional dict).
"""
import json
import sys

import numpy as np


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_half(x, pos, base, scale=1.0):
    """Rotate (x[..., i], x[..., i + d/2]) by pos * scale * base^(-2i/d). x: [T, H, d]."""
    d = x.shape[-1]
    half = d // 2
    theta = (pos[:, None] * scale) * base ** (-2.0 * np.arange(half) / d)  # [T, half]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def local_layers(n_layer, pattern):
    """Gemma 3: every `pattern`-th layer (1-based) is global, the others use the sliding window."""
    return [(i + 1) % pattern != 0 for i in range(n_layer)]


def lora_linear(W, name, x, lora=None, lora_scale=1.0):
    """x @ W[name]^T, plus lora_scale * alpha / r * (x @ A^T) @ B^T when `lora` has factors for `name`."""
    y = x @ W[name].T
    if lora is not None and name in lora["t"]:
        a, b = lora["t"][name]
        y = y + lora_scale * lora["alpha"] / a.shape[0] * ((x @ a.T) @ b.T)
    return y


def forward(hp, W, tokens, lora=None, lora_scale=1.0):
    """hp: n_embd, n_layer, n_head, n_head_kv, head_dim, eps, rope_base, rope_base_local, rope_scale,
    window, local (list of bools), softcap (0 = none). W: name -> float64 array [n_out, n_in] / [n]."""
    E, H, KV, hd = hp["n_embd"], hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    eps = hp["eps"]
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    ii, jj = np.arange(T)[:, None], np.arange(T)[None, :]
    causal = np.where(jj <= ii, 0.0, -np.inf)
    sliding = np.where((jj <= ii) & (ii - jj < hp["window"]), 0.0, -np.inf)
    scale = 1.0 / np.sqrt(hd)

    def lin(name, x):
        return lora_linear(W, name, x, lora, lora_scale)

    emb = W["token_embd.weight"]
    h = emb[tokens] * np.sqrt(E)
    for l in range(hp["n_layer"]):
        p = f"blk.{l}."
        local = hp["local"][l]
        a = rmsnorm(h, W[p + "attn_norm.weight"], eps)
        q = lin(p + "attn_q.weight", a).reshape(T, H, hd)
        k = lin(p + "attn_k.weight", a).reshape(T, KV, hd)
        v = lin(p + "attn_v.weight", a).reshape(T, KV, hd)
        q = rmsnorm(q, W[p + "attn_q_norm.weight"], eps)
        k = rmsnorm(k, W[p + "attn_k_norm.weight"], eps)
        if local:
            q, k = rope_half(q, pos, hp["rope_base_local"]), rope_half(k, pos, hp["rope_base_local"])
        else:
            q, k = rope_half(q, pos, hp["rope_base"], hp["rope_scale"]), rope_half(k, pos, hp["rope_base"], hp["rope_scale"])
        mask = sliding if local else causal
        o = np.zeros((T, H, hd))
        for hh in range(H):
            g = hh // (H // KV)
            s = q[:, hh] @ k[:, g].T * scale + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            o[:, hh] = s @ v[:, g]
        h = h + rmsnorm(lin(p + "attn_output.weight", o.reshape(T, H * hd)), W[p + "post_attention_norm.weight"], eps)
        f = rmsnorm(h, W[p + "ffn_norm.weight"], eps)
        m = gelu_tanh(lin(p + "ffn_gate.weight", f)) * lin(p + "ffn_up.weight", f)
        h = h + rmsnorm(lin(p + "ffn_down.weight", m), W[p + "post_ffw_norm.weight"], eps)
    x = rmsnorm(h, W["output_norm.weight"], eps)
    head = W.get("output.weight", emb)
    z = x @ head.T
    if hp.get("softcap", 0.0):
        c = hp["softcap"]
        z = c * np.tanh(z / c)
    return z


def load_gguf(path, dtype=np.float64):
    """Hyper-parameters and gguf-py-dequantized weights of a gemma3 GGUF."""
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(str(path))

    def kv(k, default=None):
        f = r.fields.get(k)
        if f is None:
            return default
        return f.parts[f.data[0]][0] if len(f.data) == 1 else [f.parts[i][0] for i in f.data]

    W = {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        W[t.name] = dequantize(np.array(t.data), t.tensor_type).astype(dtype).reshape(shape if len(shape) > 1 else -1)
    a = "gemma3."
    E, H = int(kv(a + "embedding_length")), int(kv(a + "attention.head_count"))
    L = int(kv(a + "block_count"))
    hd = int(kv(a + "attention.key_length", E // H))
    pattern = kv(a + "attention.sliding_window_pattern", 6)
    local = [bool(x) for x in pattern] if isinstance(pattern, list) else local_layers(L, int(pattern))
    window = int(kv(a + "attention.sliding_window", 0))
    if window == 0:
        local = [False] * L
    factor = float(kv(a + "rope.scaling.factor", 0.0) or 0.0)
    hp = dict(n_embd=E, n_layer=L, n_head=H, n_head_kv=int(kv(a + "attention.head_count_kv", H)), head_dim=hd,
              eps=float(kv(a + "attention.layer_norm_rms_epsilon")), rope_base=float(kv(a + "rope.freq_base", 10000.0)),
              rope_base_local=float(kv(a + "rope.freq_base_swa", 10000.0)),
              rope_scale=1.0 / factor if factor else 1.0, window=window if window else 1 << 30, local=local,
              softcap=float(kv(a + "final_logit_softcapping", 0.0) or 0.0))
    return hp, W


def _compare(z, ref_ids, ref_logits, ref_lse):
    """The reference set's metrics: KL(ref || run) over the reference's top-128, and top-1 agreement."""
    lse = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
    kl, agree = [], 0
    for t in range(z.shape[0]):
        lp_ref = ref_logits[t].astype(np.float64) - ref_lse[t]
        lp_run = z[t, ref_ids[t]] - lse[t]
        kl.append(float((np.exp(lp_ref) * (lp_ref - lp_run)).sum()))
        agree += int(np.argmax(z[t]) == ref_ids[t, 0])
    return float(np.mean(kl)), agree / z.shape[0]


def compact(out, name, z, k=128):
    """Store a [T, V] logit matrix compactly: per position the top-k ids (best first), their logits and
    the row's logsumexp (the reference set's format)."""
    m = z.max(axis=1, keepdims=True)
    out[name + "/lse"] = (m[:, 0] + np.log(np.exp(z - m).sum(axis=1))).astype(np.float32)
    ids = np.argsort(-z, axis=1, kind="stable")[:, :k].astype(np.int32)
    out[name + "/ids"] = ids
    out[name + "/logits"] = np.take_along_axis(z, ids, axis=1).astype(np.float32)


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("sequences", help="JSON object: name -> token ids")
    ap.add_argument("--llamacpp", help="compact llama.cpp logits (.npz) to compare with")
    ap.add_argument("--compact", help="write this pass's logits in compact form to this .npz")
    a = ap.parse_args()
    hp, W = load_gguf(a.model, np.float32)
    # float64 everywhere except the (tied) 262k-row embedding, kept float32 and upcast per product
    W = {k: v.astype(np.float64) if v.size < 50_000_000 else v for k, v in W.items()}
    seqs = json.load(open(a.sequences))
    npz = np.load(a.llamacpp) if a.llamacpp else None
    out = {}
    for name, ids in sorted(seqs.items()):
        z = forward(hp, W, ids)
        compact(out, name, z)
        if npz is not None:
            kl, top1 = _compare(z, npz[f"{name}/ids"], npz[f"{name}/logits"], npz[f"{name}/lse"])
            print(f"{name}: float64 reference vs llama.cpp: mean KL {kl:.5f}, top-1 {100 * top1:.1f}% over {len(ids)} positions")
    if a.compact:
        np.savez_compressed(a.compact, **out)


if __name__ == "__main__":
    main()
