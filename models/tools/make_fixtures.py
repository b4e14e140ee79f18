#!/usr/bin/env python3
"""Generate the tiny synthetic GGUF fixtures in models/fixtures/ and their expected logits.

Everything here is independent of edge-run's own code:
- GGUF files are written with gguf-py's GGUFWriter (llama.cpp's python package);
- Q4_0 / Q4_1 / Q8_0 / F16 weights are quantized with gguf-py's `gguf.quants.quantize`;
  K-quant blocks (Q4_K, Q5_K, Q6_K), for which gguf-py has no quantizer, are assembled here from
  random integers (with scales/mins chosen so that each sub-block is roughly zero-mean);
- every weight the reference uses is the result of gguf-py's `gguf.quants.dequantize` on the bytes
  written to the file, so the reference sees exactly the weights the runtime reads;
- the forward pass below is a plain float64 numpy transcription of llama.cpp's `llama` graph
  (RMSNorm, RoPE NORM mode on adjacent pairs with rope_freqs division, causal GQA softmax attention,
  SwiGLU FFN, tied or separate output head), and the LoRA side path is y = W x + s (alpha/r) B (A x);
- the `gemma3` fixture (tiny-gemma3*.gguf, its GGUF / PEFT adapters) takes its expected logits from
  gemma3_ref.py next to this script, a float64 transcription of the Gemma 3 definition;
- the tokenizer expectations come from small BPE / SentencePiece-style encoders written here.

Deterministic: fixed seeds; running it twice gives byte-identical files.
Usage: python3 models/tools/make_fixtures.py [OUT_DIR]   (default: models/fixtures next to this folder)
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import regex
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemma3_ref  # noqa: E402  (the float64 Gemma 3 forward pass, also usable on the real model)

QK_K = 256
N_TOKENS = 12
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------

BPE_CORPUS = (
    "the quick brown fox jumps over the lazy dog. hello world! the theory of the thing is that "
    "there are then three things: this, that and the other. hello there, hello again, world. "
    "in the end the answer is 42 and 7 and 1234. it is what it is, and that is that."
)
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_chars():
    """GPT-2's reversible byte -> printable character map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def merge_pair(symbols, pair):
    """`symbols` (a sequence of strings) with every non-overlapping occurrence of `pair`, left to right, joined into one."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def bpe_train(corpus, n_merges):
    bc = byte_chars()
    words = {}
    for w in GPT2_SPLIT.findall(corpus):
        key = tuple(bc[b] for b in w.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(n_merges):
        pairs = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new = {}
        for w, c in words.items():
            out = merge_pair(w, best)
            new[out] = new.get(out, 0) + c
        words = new
    return merges


def make_bpe_vocab():
    bc = byte_chars()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = bpe_train(BPE_CORPUS, 40)
    tokens = specials + [bc[b] for b in range(256)] + [a + b for a, b in merges]
    assert len(set(tokens)) == len(tokens)
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return dict(model="gpt2", tokens=tokens, types=types, merges=[f"{a} {b}" for a, b in merges], bos=1, eos=2)


def bpe_encode(vocab, text):
    """GPT-2 byte-level BPE: special tokens first, pre-split with the GPT-2 pattern, lowest-rank merge first."""
    bc = byte_chars()
    ids = {t: i for i, t in enumerate(vocab["tokens"])}
    rank = {tuple(m.split(" ")): r for r, m in enumerate(vocab["merges"])}
    specials = [t for t, ty in zip(vocab["tokens"], vocab["types"]) if ty == 3]
    out = []
    for part in regex.split("(" + "|".join(regex.escape(s) for s in specials) + ")", text):
        if part in specials:
            out.append(ids[part])
            continue
        for w in GPT2_SPLIT.findall(part):
            sym = [bc[b] for b in w.encode("utf-8")]
            while len(sym) > 1:
                cands = [(rank.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(sym, sym[1:]))]
                r, i = min(cands)
                if r == 1 << 30:
                    break
                sym = list(merge_pair(sym, (sym[i], sym[i + 1])))
            out.extend(ids[s] for s in sym)
    return out


SPM_PIECES = [
    "▁the", "▁hello", "▁world", "he", "ll", "lo", "or", "ld", "th", "▁t", "▁w", "▁h", "▁a", "an", "in",
    "er", "▁s", "on", "re", "at", "▁i", "is", "▁is", "▁it", "▁o", "ow", "▁b", "▁f", "▁q", "ui", "ck",
]


def make_spm_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    singles = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,!?'")
    for i, p in enumerate(SPM_PIECES):
        tokens.append(p)
        types.append(1)
        scores.append(-1.0 - i)  # earlier pieces merge first
    for i, c in enumerate(singles):
        tokens.append(c)
        types.append(1)
        scores.append(-100.0 - i)
    assert len(set(tokens)) == len(tokens)
    return dict(model="llama", tokens=tokens, types=types, scores=scores, bos=1, eos=2, unk=0)


def spm_encode(vocab, text):
    """SentencePiece-style merging as llama.cpp does for `llama` vocabs: '▁' for spaces, a leading '▁',
    repeatedly merge the adjacent pair whose concatenation is a token with the highest score (leftmost on
    ties), then unknown symbols fall back to <0xNN> byte tokens."""
    ids = {t: i for i, t in enumerate(vocab["tokens"])}
    scores = vocab["scores"]
    s = "▁" + text.replace(" ", "▁")
    sym = list(s)
    while True:
        best = None
        for i in range(len(sym) - 1):
            t = ids.get(sym[i] + sym[i + 1])
            if t is not None and vocab["types"][t] == 1 and (best is None or scores[t] > best[0]):
                best = (scores[t], i)
        if best is None:
            break
        i = best[1]
        sym[i : i + 2] = [sym[i] + sym[i + 1]]
    out = []
    for x in sym:
        if x in ids and vocab["types"][ids[x]] == 1:
            out.append(ids[x])
        else:
            out.extend(ids[f"<0x{b:02X}>"] for b in x.encode("utf-8"))
    return out


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def f16_bytes(v):
    return np.asarray(v, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def pack_k_scales(sc, m):
    """Pack 8 six-bit scales and 8 six-bit mins per block into the 12-byte K-quant layout."""
    n = sc.shape[0]
    out = np.zeros((n, 12), dtype=np.uint8)
    for j in range(4):
        out[:, j] = (sc[:, j] & 0x3F) | ((sc[:, j + 4] >> 4) << 6)
        out[:, j + 4] = (m[:, j] & 0x3F) | ((m[:, j + 4] >> 4) << 6)
        out[:, j + 8] = (sc[:, j + 4] & 0x0F) | ((m[:, j + 4] & 0x0F) << 4)
    return out


def random_k_blocks(rng, qtype, n_out, n_in, std):
    """Random, valid K-quant blocks for an [n_out, n_in] weight whose values have roughly `std`."""
    nb = n_out * n_in // QK_K
    if qtype in (T.Q4_K, T.Q5_K):
        bits = 4 if qtype == T.Q4_K else 5
        qmean, qstd = (2**bits - 1) / 2, (2**bits - 1) / 12**0.5 * (1 + 1 / 2**bits)
        dmin_ratio = 8.0 if bits == 4 else 16.0
        sc = rng.integers(8, 64, size=(nb, 8)).astype(np.uint8) if bits == 4 else rng.integers(8, 64, size=(nb, 8)).astype(np.uint8)
        # m·dmin ≈ sc·d·qmean keeps each sub-block close to zero mean
        m = np.clip(np.rint(sc.astype(np.float64) * qmean / dmin_ratio), 0, 63).astype(np.uint8)
        d = (std / (35.5 * qstd)) * np.exp(rng.normal(0, 0.2, size=nb))
        d16 = f16_bytes(d)
        dmin16 = f16_bytes(d.astype(np.float16).astype(np.float64) * dmin_ratio)
        scales = pack_k_scales(sc, m)
        got_sc, got_m = gguf.quants.Q4_K.get_scale_min(scales)
        assert (got_sc == sc).all() and (got_m == m).all(), "K scale packing"
        parts = [d16, dmin16, scales]
        if bits == 5:
            parts.append(rng.integers(0, 256, size=(nb, QK_K // 8), dtype=np.uint8))
        parts.append(rng.integers(0, 256, size=(nb, QK_K // 2), dtype=np.uint8))
        blocks = np.concatenate(parts, axis=1)
    elif qtype == T.Q6_K:
        ql = rng.integers(0, 256, size=(nb, QK_K // 2), dtype=np.uint8)
        qh = rng.integers(0, 256, size=(nb, QK_K // 4), dtype=np.uint8)
        sc = rng.integers(-127, 128, size=(nb, QK_K // 16)).astype(np.int8)
        d = (std / (73.0 * 18.5)) * np.exp(rng.normal(0, 0.2, size=nb))
        blocks = np.concatenate([ql, qh, sc.view(np.uint8), f16_bytes(d)], axis=1)
    else:
        raise ValueError(qtype)
    return blocks.reshape(n_out, -1)


def make_tensor(rng, qtype, n_out, n_in, std):
    """(bytes-or-array to write, float64 dequantized [n_out, n_in]) for one weight."""
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        data = random_k_blocks(rng, qtype, n_out, n_in, std)
    else:
        w = rng.normal(0.0, std, size=(n_out, n_in)).astype(np.float32)
        data = quantize(w, qtype)
    deq = dequantize(data, qtype).astype(np.float64).reshape(n_out, n_in)
    assert np.isfinite(deq).all()
    return data, deq


# --------------------------------------------------------------------------------------------------
# Reference forward pass (float64)
# --------------------------------------------------------------------------------------------------


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, base, rope_dim, freq_div):
    """NORM mode: rotate (x[2i], x[2i+1]) by pos * base^(-2i/rope_dim) / freq_div[i]. x: [T, H, hd]."""
    half = rope_dim // 2
    i = np.arange(half)
    theta = pos[:, None] * base ** (-2.0 * i / rope_dim) / freq_div[None, :]  # [T, half]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    y = x.copy()
    a, b = x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]
    y[..., 0:rope_dim:2] = a * c - b * s
    y[..., 1:rope_dim:2] = a * s + b * c
    return y


def forward(m, tokens, lora=None, lora_scale=1.0):
    hp, W = m["hp"], m["w"]
    E, H, KV, hd = hp["n_embd"], hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    eps, base, rd = hp["eps"], hp["rope_base"], hp["head_dim"]
    Tn = len(tokens)
    pos = np.arange(Tn, dtype=np.float64)
    freq_div = W.get("rope_freqs.weight", np.ones(rd // 2))

    def lin(name, x):
        return gemma3_ref.lora_linear(W, name, x, lora, lora_scale)

    x = W["token_embd.weight"][tokens]
    mask = np.triu(np.full((Tn, Tn), -np.inf), 1)
    for l in range(hp["n_layer"]):
        p = f"blk.{l}."
        h = rmsnorm(x, W[p + "attn_norm.weight"], eps)
        q = rope(lin(p + "attn_q.weight", h).reshape(Tn, H, hd), pos, base, rd, freq_div)
        k = rope(lin(p + "attn_k.weight", h).reshape(Tn, KV, hd), pos, base, rd, freq_div)
        v = lin(p + "attn_v.weight", h).reshape(Tn, KV, hd)
        att = np.zeros((Tn, H, hd))
        for hh in range(H):
            g = hh // (H // KV)
            s = q[:, hh] @ k[:, g].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            att[:, hh] = s @ v[:, g]
        x = x + lin(p + "attn_output.weight", att.reshape(Tn, H * hd))
        h = rmsnorm(x, W[p + "ffn_norm.weight"], eps)
        g = lin(p + "ffn_gate.weight", h)
        u = lin(p + "ffn_up.weight", h)
        x = x + lin(p + "ffn_down.weight", g / (1.0 + np.exp(-g)) * u)
    x = rmsnorm(x, W["output_norm.weight"], eps)
    head = W["output.weight"] if "output.weight" in W else W["token_embd.weight"]
    return x @ head.T


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


def model_writer(path, arch, name, n_ctx, n_embd, n_layer, n_ff, n_head, n_head_kv):
    """A GGUFWriter for a model file with its name and the shape metadata every architecture has, in this order."""
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name(name)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    return w


def write_gguf(w):
    """Write a GGUFWriter's header, metadata and tensors to its file and close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def lora_adapter_writer(path, name, arch, alpha):
    """A GGUFWriter for a llama.cpp LoRA adapter file, its general and adapter metadata set."""
    g = gguf.GGUFWriter(str(path), arch=arch)
    g.add_name(name)
    g.add_string("general.type", "adapter")
    g.add_string("adapter.type", "lora")
    g.add_float32("adapter.lora.alpha", alpha)
    return g


def add_random_lora(g, ref, rng, name, shape, rank, b_std):
    """Draw fp16 LoRA factors for the weight `name` of numpy shape (n_out, n_in): A [rank, n_in] with
    std 1/sqrt(n_in), then B [n_out, rank] with std `b_std`. Adds them to `g` as `name.lora_a/lora_b` and,
    in f64, to ref["t"][name]. Returns (A, B).
    ggml dims: lora_a [n_in, r], lora_b [r, n_out]  (numpy row-major shapes are the reverse)."""
    n_out, n_in = shape
    a = rng.normal(0, 1.0 / np.sqrt(n_in), size=(rank, n_in)).astype(np.float16)
    b = rng.normal(0, b_std, size=(n_out, rank)).astype(np.float16)
    g.add_tensor(name + ".lora_a", a)
    g.add_tensor(name + ".lora_b", b)
    ref["t"][name] = (a.astype(np.float64), b.astype(np.float64))
    return a, b


def write_peft_dir(pdir, tensors, base_model, rank, alpha, target_modules):
    """A PEFT LoRA directory: adapter_model.safetensors with `tensors` and its adapter_config.json."""
    from safetensors.numpy import save_file

    pdir.mkdir(exist_ok=True)
    save_file(tensors, str(pdir / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": target_modules,
    }
    (pdir / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def build_model(path, spec, vocab):
    rng = np.random.default_rng(spec["seed"])
    E, L, H, KV, FF = spec["n_embd"], spec["n_layer"], spec["n_head"], spec["n_head_kv"], spec["n_ff"]
    hd = E // H
    nv = len(vocab["tokens"])
    wt, et = spec["wtype"], spec.get("embd_type", spec["wtype"])
    hp = dict(n_embd=E, n_layer=L, n_head=H, n_head_kv=KV, head_dim=hd, n_ff=FF, eps=1e-5,
              rope_base=spec.get("rope_base", 10000.0), n_vocab=nv)

    w = model_writer(path, "llama", spec["name"], 256, E, L, FF, H, KV)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(hp["rope_base"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_vocab_size(nv)
    w.add_tokenizer_model(vocab["model"])
    if vocab["model"] == "gpt2":
        w.add_tokenizer_pre("gpt2")
        w.add_token_merges(vocab["merges"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    if "scores" in vocab:
        w.add_token_scores(vocab["scores"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    if "unk" in vocab:
        w.add_unk_token_id(vocab["unk"])
    if vocab["model"] == "llama":
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)
    else:
        w.add_add_bos_token(False)
        w.add_chat_template(CHATML)

    W = {}

    def put(name, data, deq):
        w.add_tensor(name, data, raw_dtype=None if data.dtype in (np.float32, np.float16) else spec_type_of[name])
        W[name] = deq

    spec_type_of = {}

    def linear(name, qtype, n_out, n_in, std):
        spec_type_of[name] = qtype
        data, deq = make_tensor(rng, qtype, n_out, n_in, std)
        put(name, data, deq)

    def norm(name, n):
        v = (1.0 + 0.1 * rng.normal(size=n)).astype(np.float32)
        put(name, v, v.astype(np.float64))

    linear("token_embd.weight", et, nv, E, 3.0 / np.sqrt(E))
    norm("output_norm.weight", E)
    if spec.get("untied"):
        linear("output.weight", spec["untied"], nv, E, 3.0 / np.sqrt(E))
    if spec.get("rope_freqs"):
        rf = np.linspace(1.0, 8.0, hd // 2).astype(np.float32)
        put("rope_freqs.weight", rf, rf.astype(np.float64))
    for l in range(L):
        p = f"blk.{l}."
        norm(p + "attn_norm.weight", E)
        linear(p + "attn_q.weight", wt, H * hd, E, 1.0 / np.sqrt(E))
        linear(p + "attn_k.weight", wt, KV * hd, E, 1.0 / np.sqrt(E))
        linear(p + "attn_v.weight", wt, KV * hd, E, 1.0 / np.sqrt(E))
        linear(p + "attn_output.weight", wt, E, H * hd, 0.7 / np.sqrt(H * hd))
        norm(p + "ffn_norm.weight", E)
        linear(p + "ffn_gate.weight", wt, FF, E, 1.0 / np.sqrt(E))
        linear(p + "ffn_up.weight", wt, FF, E, 1.0 / np.sqrt(E))
        linear(p + "ffn_down.weight", wt, E, FF, 0.7 / np.sqrt(FF))

    write_gguf(w)
    return dict(hp=hp, w=W)


def permute_qk(b, n_head):
    """llama.cpp converter's Q/K row permutation (HF rotate-half rows -> GGUF adjacent pairs)."""
    n_out = b.shape[0]
    return b.reshape(n_head, 2, n_out // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def unpermute_qk(b, n_head):
    n_out = b.shape[0]
    return b.reshape(n_head, n_out // n_head // 2, 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


LORA_TARGETS = {  # GGUF name -> (PEFT module, heads for the q/k permutation or None)
    "attn_q": ("self_attn.q_proj", "n_head"),
    "attn_k": ("self_attn.k_proj", "n_head_kv"),
    "attn_v": ("self_attn.v_proj", None),
    "ffn_down": ("mlp.down_proj", None),
}


def build_lora(out_dir, model, rank=4, alpha=8.0, seed=777):
    """The same adapter as a llama.cpp GGUF LoRA and as a PEFT directory. Returns the reference dict."""
    rng = np.random.default_rng(seed)
    hp, W = model["hp"], model["w"]
    ref = {"alpha": alpha, "t": {}}
    g = lora_adapter_writer(out_dir / "tiny-lora.gguf", "tiny-lora", "llama", alpha)
    peft = {}
    for l in range(hp["n_layer"]):
        for tgt, (module, heads) in LORA_TARGETS.items():
            name = f"blk.{l}.{tgt}.weight"
            a, b = add_random_lora(g, ref, rng, name, W[name].shape, rank, 0.5)
            hf_b = b if heads is None else unpermute_qk(b, hp[heads])
            if heads is not None:
                assert (permute_qk(hf_b, hp[heads]) == b).all()
            key = f"base_model.model.model.layers.{l}.{module}"
            peft[key + ".lora_A.weight"] = a.astype(np.float32)
            peft[key + ".lora_B.weight"] = hf_b.astype(np.float32)
    write_gguf(g)
    write_peft_dir(out_dir / "tiny-lora-peft", peft, "edge-run/tiny-q4_1 (synthetic)", rank, alpha,
                   ["q_proj", "k_proj", "v_proj", "down_proj"])
    return ref


# --------------------------------------------------------------------------------------------------
# Gemma 3 fixture
# --------------------------------------------------------------------------------------------------

GEMMA3 = dict(name="tiny-gemma3", seed=21, n_embd=128, n_layer=3, n_head=4, n_head_kv=2, head_dim=32, n_ff=256,
              window=5, pattern=2, rope_base=1000.0, rope_scaling=2.0, eps=1e-6, n_tokens=16)
# weight types per linear weight (Gemma 3 270M Q4_K_M mixes Q5_0, Q8_0, Q4_K and Q6_K the same way)
# (K-quants need rows of 256: only ffn_down, whose rows are n_ff long, can be one here; Q4_K in layers 0
# and 2, Q6_K in layer 1)
GEMMA3_TYPES = {"attn_q": T.Q5_0, "attn_k": T.Q5_0, "attn_v": T.Q8_0, "attn_output": T.Q5_0,
                "ffn_gate": T.Q5_0, "ffn_up": T.Q5_0, "ffn_down": T.Q4_K}


def build_gemma3(path, spec, vocab):
    """A tiny `gemma3` GGUF (n_embd 128, 4 heads / 2 KV heads): 3 layers (0 and 2 local with window 5, 1 global: sliding_window_pattern 2),
    head_dim 32 != n_embd/n_head (key_length), QK-norm, sandwich norms, tied Q8_0 embedding, global RoPE
    base 1000 with linear scaling x2, local base left to the default (10000)."""
    rng = np.random.default_rng(spec["seed"])
    E, L, H, KV, hd, FF = (spec[k] for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff"))
    nv = len(vocab["tokens"])
    w = model_writer(path, "gemma3", spec["name"], 1024, E, L, FF, H, KV)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(spec["rope_base"])
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(spec["rope_scaling"])
    w.add_layer_norm_rms_eps(spec["eps"])
    w.add_sliding_window(spec["window"])
    w.add_uint32("gemma3.attention.sliding_window_pattern", spec["pattern"])
    w.add_vocab_size(nv)
    w.add_tokenizer_model(vocab["model"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_scores(vocab["scores"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    w.add_unk_token_id(vocab["unk"])
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    W = {}

    def put(name, data, qtype=None):
        w.add_tensor(name, data, raw_dtype=qtype)

    def linear(name, qtype, n_out, n_in, std):
        data, deq = make_tensor(rng, qtype, n_out, n_in, std)
        put(name, data, None if data.dtype in (np.float32, np.float16) else qtype)
        W[name] = deq

    def norm(name, n, lo, hi):
        v = rng.uniform(lo, hi, size=n).astype(np.float32)  # as stored: Gemma's 1 + w already folded in
        put(name, v)
        W[name] = v.astype(np.float64)

    linear("token_embd.weight", T.Q8_0, nv, E, 3.0 / np.sqrt(E))
    norm("output_norm.weight", E, 0.8, 1.2)
    for l in range(L):
        p = f"blk.{l}."
        t = GEMMA3_TYPES
        norm(p + "attn_norm.weight", E, 0.8, 1.2)
        linear(p + "attn_q.weight", t["attn_q"], H * hd, E, 1.0 / np.sqrt(E))
        linear(p + "attn_k.weight", t["attn_k"], KV * hd, E, 1.0 / np.sqrt(E))
        linear(p + "attn_v.weight", t["attn_v"], KV * hd, E, 1.0 / np.sqrt(E))
        norm(p + "attn_q_norm.weight", hd, 0.5, 2.0)
        norm(p + "attn_k_norm.weight", hd, 0.5, 2.0)
        linear(p + "attn_output.weight", t["attn_output"], E, H * hd, 1.0 / np.sqrt(H * hd))
        norm(p + "post_attention_norm.weight", E, 0.2, 1.0)
        norm(p + "ffn_norm.weight", E, 0.8, 1.2)
        linear(p + "ffn_gate.weight", t["ffn_gate"], FF, E, 1.0 / np.sqrt(E))
        linear(p + "ffn_up.weight", t["ffn_up"], FF, E, 1.0 / np.sqrt(E))
        linear(p + "ffn_down.weight", T.Q6_K if l == 1 else t["ffn_down"], E, FF, 1.0 / np.sqrt(FF))
        norm(p + "post_ffw_norm.weight", E, 0.2, 1.0)
    write_gguf(w)
    hp = dict(n_embd=E, n_layer=L, n_head=H, n_head_kv=KV, head_dim=hd, eps=float(np.float32(spec["eps"])), rope_base=spec["rope_base"],
              rope_base_local=10000.0, rope_scale=1.0 / spec["rope_scaling"], window=spec["window"],
              local=gemma3_ref.local_layers(L, spec["pattern"]), softcap=0.0)
    assert hp["local"] == [True, False, True]
    return hp, W


GEMMA3_LORA_MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                       "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                       "ffn_down": "mlp.down_proj"}


def build_gemma3_lora(out_dir, W, n_layer, rank=4, alpha=8.0, seed=778):
    """One adapter on all seven linear weights of every layer, as a llama.cpp GGUF LoRA and as PEFT for
    Gemma3ForCausalLM (`model.layers.N`) and Gemma3ForConditionalGeneration (`model.language_model.layers.N`).
    Gemma's Q/K rows are NOT permuted (NeoX RoPE): PEFT's lora_B is the GGUF lora_b as is."""
    rng = np.random.default_rng(seed)
    ref = {"alpha": alpha, "t": {}}
    g = lora_adapter_writer(out_dir / "tiny-gemma3-lora.gguf", "tiny-gemma3-lora", "gemma3", alpha)
    peft = {"model.layers": {}, "model.language_model.layers": {}}
    for l in range(n_layer):
        for tgt, module in GEMMA3_LORA_MODULES.items():
            name = f"blk.{l}.{tgt}.weight"
            a, b = add_random_lora(g, ref, rng, name, W[name].shape, rank, 0.3)
            for prefix, d in peft.items():
                key = f"base_model.model.{prefix}.{l}.{module}"
                d[key + ".lora_A.weight"] = a  # fp16, as PEFT saves a half-precision adapter
                d[key + ".lora_B.weight"] = b
    write_gguf(g)
    for prefix, dname in (("model.layers", "tiny-gemma3-lora-peft"), ("model.language_model.layers", "tiny-gemma3-lora-peft-vlm")):
        write_peft_dir(out_dir / dname, peft[prefix], "edge-run/tiny-gemma3 (synthetic)", rank, alpha,
                       ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return ref


def make_gemma3(out, vocab):
    """tiny-gemma3.gguf, its adapters and expected logits; returns the manifest entry."""
    spec = GEMMA3
    path = out / f"{spec['name']}.gguf"
    hp, W = build_gemma3(path, spec, vocab)
    nv = len(vocab["tokens"])
    rng = np.random.default_rng(2000 + spec["seed"])
    toks = [vocab["bos"]] + [int(t) for t in rng.integers(3, nv, size=spec["n_tokens"] - 1)]
    z = gemma3_ref.forward(hp, W, toks)
    hp2, W2 = gemma3_ref.load_gguf(path)
    assert hp2 == hp, (hp2, hp)
    assert np.abs(z - gemma3_ref.forward(hp2, W2, toks)).max() <= 1e-9 * z.std(), "tiny-gemma3: reloaded file disagrees"
    # the window matters: the same model without it gives clearly different logits at late positions
    zfull = gemma3_ref.forward({**hp, "window": 1 << 30}, W, toks)
    assert np.abs(z - zfull)[spec["window"]:].max() > 0.1 * z.std()
    save_npy(out / f"{spec['name']}.logits.npy", z)
    lora = build_gemma3_lora(out, W, hp["n_layer"])
    zl = gemma3_ref.forward(hp, W, toks, lora, 1.0)
    save_npy(out / f"{spec['name']}.lora-s1.0.logits.npy", zl)
    std, margin = logit_stats(z)
    print(f"{path.name}: {path.stat().st_size} bytes, logit std {std:.3f}, min top-2 margin {margin:.4f}; "
          f"adapter max |logit change| {np.abs(zl - z).max():.3f}")
    return {
        "name": spec["name"], "file": path.name, "n_vocab": nv, "tokens": toks,
        "weight_types": {k: T(v).name for k, v in GEMMA3_TYPES.items()}, "token_embd_type": "Q8_0",
        **{k: spec[k] for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "window", "pattern",
                                "rope_base", "rope_scaling")},
        "local_layers": hp["local"], "expected": f"{spec['name']}.logits.npy", "logit_std": std, "min_top2_margin": margin,
        "adapter": {"gguf": "tiny-gemma3-lora.gguf", "peft": ["tiny-gemma3-lora-peft", "tiny-gemma3-lora-peft-vlm"],
                    "rank": 4, "alpha": 8.0, "scale": 1.0, "targets": [f"blk.N.{t}.weight" for t in GEMMA3_LORA_MODULES],
                    "expected": f"{spec['name']}.lora-s1.0.logits.npy", "logit_std": float(zl.std())},
    }


def reload(path):
    """Read a written fixture back with gguf-py's GGUFReader: hyper-parameters and dequantized weights."""
    r = gguf.GGUFReader(str(path))

    def kv(k):
        f = r.fields[k]
        return f.parts[f.data[0]][0]

    W = {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]  # ggml dims are innermost-first
        W[t.name] = dequantize(np.array(t.data), t.tensor_type).astype(np.float64).reshape(shape if len(shape) > 1 else -1)
    E, H = int(kv("llama.embedding_length")), int(kv("llama.attention.head_count"))
    hp = dict(n_embd=E, n_layer=int(kv("llama.block_count")), n_head=H, n_head_kv=int(kv("llama.attention.head_count_kv")),
              head_dim=E // H, eps=float(kv("llama.attention.layer_norm_rms_epsilon")), rope_base=float(kv("llama.rope.freq_base")))
    return dict(hp=hp, w=W)


def save_npy(path, arr):
    np.save(path, np.ascontiguousarray(arr, dtype="<f4"))


def logit_stats(z):
    srt = np.sort(z, axis=1)
    return float(z.std()), float((srt[:, -1] - srt[:, -2]).min())


BPE_TEXTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog.",
    "There are 1234 things, and that's it!",
    "<|im_start|>user\nhello there<|im_end|>\n",
    "tabs\tand  double  spaces\n\nnewlines ünïcödé ✓",
]
SPM_TEXTS = ["hello world", "the quick brown fox is it", "Hello, World! 42 ünï"]


def main():
    here = Path(__file__).resolve().parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "fixtures"
    out.mkdir(parents=True, exist_ok=True)
    bpe, spm = make_bpe_vocab(), make_spm_vocab()

    small = dict(n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)
    kq = dict(n_embd=256, n_layer=1, n_head=4, n_head_kv=2, n_ff=512)
    specs = [
        dict(name="tiny-q4_1", wtype=T.Q4_1, embd_type=T.Q8_0, seed=1, vocab=bpe, **small),
        dict(name="tiny-q4_0", wtype=T.Q4_0, seed=2, vocab=bpe, **small),
        dict(name="tiny-q8_0", wtype=T.Q8_0, seed=3, vocab=bpe, **small),
        dict(name="tiny-f16", wtype=T.F16, seed=4, vocab=bpe, **small),
        dict(name="tiny-f32", wtype=T.F32, seed=5, vocab=bpe, **{**small, "n_layer": 1}),
        dict(name="tiny-q4_k", wtype=T.Q4_K, seed=6, vocab=bpe, **kq),
        dict(name="tiny-q5_k", wtype=T.Q5_K, seed=7, vocab=bpe, **kq),
        dict(name="tiny-q6_k", wtype=T.Q6_K, seed=8, vocab=bpe, **kq),
        dict(name="tiny-untied", wtype=T.Q4_1, embd_type=T.Q8_0, untied=T.Q4_0, seed=9, vocab=bpe, **small),
        dict(name="tiny-rope-freqs", wtype=T.Q8_0, rope_freqs=True, rope_base=500000.0, seed=10, vocab=bpe, **small),
        dict(name="tiny-spm", wtype=T.Q4_0, embd_type=T.Q8_0, seed=11, vocab=spm, **small),
    ]
    manifest = {
        "generator": "models/tools/make_fixtures.py",
        "gguf_py_version": getattr(gguf, "__version__", None) or _pkg_version("gguf"),
        "numpy_version": np.__version__,
        "reference": "float64 numpy forward pass on gguf-py-dequantized weights (see make_fixtures.py)",
        "tolerance_notes": (
            "expected logits are exact float64 results on the stored weights, saved as float32. The runtime "
            "quantizes activations (Q8 blocks, or Q8 + residual with Q8x2) and computes in f32, so compare "
            "max|diff| / std(expected logits): about 1e-3 for Q8x2 and a few 1e-2 for Q8 are expected; "
            "argmax must agree where the expected top-2 margin is clearly above the error."
        ),
        "fixtures": [],
        "adapters": [],
    }
    models = {}
    for s in specs:
        vocab = s["vocab"]
        path = out / f"{s['name']}.gguf"
        m = build_model(path, s, vocab)
        models[s["name"]] = m
        nv = len(vocab["tokens"])
        rng = np.random.default_rng(1000 + s["seed"])
        toks = [vocab["bos"]] + [int(t) for t in rng.integers(3, nv, size=N_TOKENS - 1)]
        z = forward(m, toks)
        # the file as written (read back by gguf-py) must give the same logits as the in-memory weights
        z2 = forward(reload(path), toks)
        assert np.abs(z - z2).max() <= 1e-9 * z.std(), f"{path.name}: reloaded file disagrees"
        save_npy(out / f"{s['name']}.logits.npy", z)
        std, margin = logit_stats(z)
        texts = SPM_TEXTS if vocab["model"] == "llama" else BPE_TEXTS
        enc = spm_encode if vocab["model"] == "llama" else bpe_encode
        manifest["fixtures"].append({
            "name": s["name"],
            "file": path.name,
            "weight_type": T(s["wtype"]).name,
            "token_embd_type": T(s.get("embd_type", s["wtype"])).name,
            "output_type": T(s["untied"]).name if s.get("untied") else None,
            "rope_freqs": bool(s.get("rope_freqs")),
            "tokenizer": vocab["model"],
            "n_vocab": nv,
            "n_embd": s["n_embd"],
            "n_layer": s["n_layer"],
            "n_head": s["n_head"],
            "n_head_kv": s["n_head_kv"],
            "n_ff": s["n_ff"],
            "tokens": toks,
            "expected": f"{s['name']}.logits.npy",
            "logit_std": std,
            "min_top2_margin": margin,
            "tokenize": [{"text": t, "ids": enc(vocab, t)} for t in texts],
        })
        print(f"{path.name}: {path.stat().st_size} bytes, logit std {std:.3f}, min top-2 margin {margin:.4f}")

    base = models["tiny-q4_1"]
    lora = build_lora(out, base)
    toks = manifest["fixtures"][0]["tokens"]
    entry = {"base": "tiny-q4_1.gguf", "gguf": "tiny-lora.gguf", "peft": "tiny-lora-peft", "rank": 4, "alpha": 8.0,
             "targets": [f"blk.N.{t}.weight" for t in LORA_TARGETS], "tokens": toks, "expected": {}}
    for scale in (1.0, 0.5):
        z = forward(base, toks, lora, scale)
        f = f"tiny-q4_1.lora-s{scale}.logits.npy"
        save_npy(out / f, z)
        entry["expected"][str(scale)] = f
        d = np.abs(z - forward(base, toks)).max()
        print(f"adapter scale {scale}: max |logit change| {d:.3f}, std {z.std():.3f}")
    # the adapter only depends on shapes, so it also fits tiny-q8_0 (same hyper-parameters): a base whose
    # runtime error is small, for a tight check of the LoRA path
    other = next(f for f in manifest["fixtures"] if f["name"] == "tiny-q8_0")
    z = forward(models["tiny-q8_0"], other["tokens"], lora, 1.0)
    save_npy(out / "tiny-q8_0.lora-s1.0.logits.npy", z)
    entry["other_bases"] = [{"base": "tiny-q8_0.gguf", "scale": 1.0, "tokens": other["tokens"],
                             "expected": "tiny-q8_0.lora-s1.0.logits.npy"}]
    manifest["adapters"].append(entry)
    manifest["gemma3"] = make_gemma3(out, spm)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total fixture size: {total} bytes")
    assert total < 4 * 1024 * 1024


def _pkg_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
