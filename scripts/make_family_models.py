#!/usr/bin/env python3
"""Build the small test models of the model families and their Hugging Face references.

For each family (qwen2, qwen3, llama3, phi3) this script
1. builds a small Hugging Face checkpoint from a config: SmolLM2-135M-Instruct's real weights (dequantized
   from its GGUF by transformers) cut to a narrow width and two layers and re-dressed in the family's
   layout, plus the family's own tensors (q/k/v biases for qwen2, q/k norms for qwen3) drawn from a fixed
   seed, or its own RoPE (llama3: Llama 3.x frequency scaling; phi3: partial rotary, LongRoPE and a
   sliding window, with fused q/k/v and gate/up projections); its tokenizer is a 4096-token byte-level
   BPE cut from SmolLM2's (the first merges, which only use earlier tokens) with the family's
   pre-tokenizer (Qwen2's split and NFC normalizer and a ChatML template; Llama 3's split, whole-word
   tokens, BOS and its chat format), or for phi3 a SentencePiece vocabulary (Llama 2's kind: byte
   fallback, `▁` for spaces) made from the same merges, with Phi-3's added tokens and chat format;
2. makes a PEFT LoRA adapter on all the projections (phi3: its four fused and plain ones) with
   non-zero, seeded A and B;
3. converts the checkpoint with llama.cpp's own convert_hf_to_gguf.py (f32) and quantizes it with
   llama.cpp's quantizer (llama-cpp-python's llama_model_quantize) to Q8_0, Q4_0 and Q4_K_M;
4. computes the references: transformers fp32 loading each committed GGUF (dequantized) for the token
   sequences, without and with the adapter (PEFT), stored compact (top-128 ids and logits, logsumexp);
   and the ids the Hugging Face tokenizer gives a set of texts.

Run (needs torch, transformers, peft, gguf, tokenizers, sentencepiece; a llama.cpp source tree; a Python with
llama-cpp-python for the quantizer):

    python scripts/make_family_models.py --smollm2 models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --llama-cpp /path/to/llama.cpp --quantize-python /path/to/venv/bin/python [--family qwen2]

`--reference-only` recomputes the references from the committed GGUF and adapter files alone.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "data", "reference"))
from compact import compact  # noqa: E402

N_VOCAB = 4096
N_EMBD = 256
N_FF = 512
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
SEED = 16
TYPES = ["Q8_0", "Q4_0", "Q4_K_M"]
# llama.cpp's ftype numbers (llama.h)
FTYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}

FAMILIES = {
    # head size = width / heads; untied output head; rope base 1e6 (Qwen2.5's)
    "qwen2": dict(head_dim=64, tied=False, rope_theta=1e6, rms_eps=1e-6),
    # head size of its own (q is 512 wide for a 256-wide model); tied head
    "qwen3": dict(head_dim=128, tied=True, rope_theta=1e6, rms_eps=1e-6),
    # Llama 3.2's layout (tied head, base 5e5) and its RoPE frequency scaling, with an original context
    # of 32 positions (8192 in Llama 3.2) so that the scaling moves the frequencies the test sequences'
    # positions use: wavelengths over 32 are divided by 32, those under 8 kept, smoothed in between.
    "llama3": dict(head_dim=64, tied=True, rope_theta=5e5, rms_eps=1e-5,
                   rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=32)),
    # Phi-3 mini's layout (fused qkv_proj and gate_up_proj, separate head, base 1e4) with a partial
    # rotary (half of each head, as `partial_rotary_factor` allows), LongRoPE with an original context
    # of 32 positions (4096 in Phi-3 mini 128k) so that the test sequences (longer) take the long
    # factors and a shorter one the short factors, and a sliding window of 24 positions (2047 in
    # Phi-3 mini 4k) that the sequences exceed.
    "phi3": dict(head_dim=64, tied=False, rope_theta=1e4, rms_eps=1e-5, partial_rotary=0.5,
                 sliding_window=24,
                 rope_scaling=dict(rope_type="longrope", original_max_position_embeddings=32,
                                   # per rotated pair (16): the short factors near 1, the long ones
                                   # growing from 2 to 16 (Phi-3's grow from about 1 to tens), so that
                                   # they differ at every frequency, even over a short sequence
                                   short_factor=[round(1.0 + 0.05 * i, 4) for i in range(16)],
                                   long_factor=[round(2.0 ** (1 + 3 * i / 15), 4) for i in range(16)])),
}
# Seeds of the family tensors and adapters: SEED + this.
FAMILY_SEED = {"qwen2": 0, "qwen3": 1, "llama3": 2, "phi3": 3}

# Qwen2's pre-tokenizer split (tokenizer.json of the Qwen2/2.5/3 models).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3's (tokenizer.json of the Llama 3.x models): digits in runs of up to three.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3's specials (at the end of the vocabulary, as in Llama 3) and the SmolLM2 rows their
# embeddings take.
# Llama 3 has tokens of two and three digits (its split keeps runs of up to three digits together);
# SmolLM2 splits every digit. The Llama 3 test vocabulary takes all two-digit tokens and these
# three-digit ones in place of its last merges. Half the three-digit tokens have a merge that BPE
# never reaches (`1 23` while `12` merges first): only Llama 3's whole-token rule finds them.
LLAMA3_TRIPLES = ["123", "234", "345", "456", "567", "678", "789", "890", "000", "100", "202", "314",
                  "159", "718", "999", "365", "127", "001", "256", "512"]
LLAMA3_SPECIALS = [("<|begin_of_text|>", 0), ("<|end_of_text|>", 3), ("<|start_header_id|>", 1),
                   ("<|end_header_id|>", 4), ("<|eot_id|>", 2)]

# ChatML, with a default system turn when the conversation has none.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = 'You are a helpful assistant.' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
    "{%- for m in turns -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

TOKENIZE_TEXTS = [
    "Hello world", " Hello world", "Hello  world", "hello\nworld",
    "The quick brown fox jumps over the lazy dog.",
    "It's 3:45pm and I've got 1,234 apples.",
    "I'M SURE YOU'LL SEE WE'D THEY'RE IT'S", "don't   stop\r\n\r\nnow",
    "naïve café résumé", "Tokyo 東京 and Москва", "def add(a, b):\n    return a + b\n",
    "    indented\tline\t\twith tabs", "<|im_start|>user\nHi<|im_end|>\n", "emoji 🙂 test 🚀",
    "x = [1, 2, 3]; y = {'a': 1}", "URL: https://example.com/path?q=1&r=2",
    "12345678901234567890", "3.14159 and 2,718.28 or ٣٤٥ and ⅷ", "", " ", "\n\n\n", "A",
    "Don't stop—won't stop!", "trailing spaces   ", "  leading\n\n  \n x",
]

# Llama 3.2's chat format: a system turn with its knowledge and (fixed) current dates first.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim)"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Per family: the chat template, EOS and padding tokens, whether BOS is added, the converter's
# pre-tokenizer name, the end of an answer in the chat sequence, texts of its own to tokenize.
TOKENIZERS = {
    "qwen2": dict(template=CHAT_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>", bos=None, pre="qwen2",
                  turn_end="<|im_end|>\n", texts=[]),
    "llama3": dict(template=LLAMA3_TEMPLATE, eos="<|eot_id|>", pad="<|end_of_text|>",
                   bos="<|begin_of_text|>", pre="llama-bpe", turn_end="<|eot_id|>",
                   texts=["<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
                          "1234567 and 89, 1,000,000 ۱۲۳۴",
                          "2024-12-07 at 10:30, pi=3.14159, 65536 bytes; 123 vs 1234 vs 12345"]),
}
TOKENIZERS["qwen3"] = TOKENIZERS["qwen2"]
# Phi-3's chat format (no system turn unless given, `<|end|>` closing each turn, no BOS).
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
TOKENIZERS["phi3"] = dict(template=PHI3_TEMPLATE, eos="<|endoftext|>", pad="<|endoftext|>", bos=None,
                          pre=None, turn_end="<|end|>\n",
                          texts=["Hi<|end|>", "<|user|><|end|><|assistant|>", "Paris.<|end|><|endoftext|>",
                                 "  two  spaces and\ttab", "ÿ and ø and 한국어 and 🙂"])
# Phi-3's added tokens after the SentencePiece vocabulary (as its ids 32000+), and the SmolLM2 rows their
# embeddings take (its chat specials and two more of its specials).
PHI3_SPECIALS = [("<|endoftext|>", 0), ("<|assistant|>", 1), ("<|system|>", 3), ("<|end|>", 2),
                 ("<|user|>", 4)]
# The text of the sequence within the original context (for which LongRoPE takes the short factors).
SHORT_TEXT = "Once upon a time, in a small village by the sea"

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris. It is known for the Eiffel Tower."
PROSE = ("Once upon a time, in a small village by the sea, there lived an old fisherman who told "
         "stories to the children every evening.")
CODE = "def add(a, b):\n    # 1234 + 5678 = 6912\n    return a + b\n\nprint(add(2, 40))\n"


def smollm2_tokenizer(path):
    """Tokens and merges of the SmolLM2 GGUF."""
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields
    toks = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
    m = f["tokenizer.ggml.merges"]
    merges = [bytes(m.parts[i]).decode() for i in m.data]
    return toks, merges


def build_tokenizer(toks, merges, family):
    """A 4096-token BPE: SmolLM2's 256 byte tokens and its first merges whose result is kept (every such
    merge only joins earlier tokens), with the family's specials: SmolLM2's three chat specials first
    (Qwen), or Llama 3's five last (their embeddings from SmolLM2's special rows). Returns the tokenizer
    and, per new id, the SmolLM2 id whose embedding row it takes."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors
    llama = family == "llama3"
    n_byte = 256
    specials = [(t, old) for t, old in LLAMA3_SPECIALS] if llama else \
        [(toks[i], i) for i in range(3)]
    head = [] if llama else [old for _, old in specials]
    kept = head + list(range(17, 17 + n_byte))
    digits = [a + b for a in "0123456789" for b in "0123456789"] + LLAMA3_TRIPLES if llama else []
    n_regular = N_VOCAB - len(specials) - len(digits)
    kept += list(range(17 + n_byte, 17 + n_byte + n_regular - (len(kept) - len(head))))
    vocab = {toks[old]: new for new, old in enumerate(kept)}
    pairs = []
    for mg in merges:
        a, b = mg.split(" ")
        if a + b in vocab and a in vocab and b in vocab:
            pairs.append((a, b))
    if llama:
        # the digit tokens take the embedding rows of the SmolLM2 tokens after the kept ones
        vocab.update({d: len(kept) + i for i, d in enumerate(digits)})
        kept += list(range(kept[-1] + 1, kept[-1] + 1 + len(digits)))
        pairs += [(d[0], d[1]) for d in digits[:100]]
        pairs += [(d[:2], d[2]) if i % 2 == 0 else (d[0], d[1:]) for i, d in enumerate(LLAMA3_TRIPLES)]
        kept += [old for _, old in specials]
        vocab.update({t: N_VOCAB - len(specials) + i for i, (t, _) in enumerate(specials)})
    assert len(vocab) == N_VOCAB == len(kept)
    # Llama 3 takes a piece that is a whole token as that token, before any merge
    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False, ignore_merges=llama)
    tok = Tokenizer(bpe)
    if not llama:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT if llama else QWEN2_SPLIT), behavior="isolated",
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=llama, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in specials])
    if llama:
        bos = specials[0][0]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
    return tok, kept


def bytes_to_unicode():
    """GPT-2's byte-level alphabet: byte → the character byte-level BPE writes it as."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_spm_tokenizer(toks, merges, hf_dir):
    """Phi-3's kind of tokenizer (Llama 2's SentencePiece BPE with byte fallback) on a 4096-token
    vocabulary from SmolLM2's: `<unk>`, `<s>`, `</s>`, the 256 byte tokens `<0xXX>`, the printable
    single characters, then the results of SmolLM2's first merges whose parts are kept (byte-level text
    turned into text, its spaces into `▁`; pieces with control characters or invalid UTF-8 left out),
    scored by merge order; then Phi-3's five added tokens. Writes `tokenizer.model` (what llama.cpp's
    converter reads) into `hf_dir` and returns the Hugging Face tokenizer (Phi-3's tokenizer.json form:
    `▁` prepended and spaces replaced, BPE with byte fallback and merges ordered by the result's score)
    and, per new id, the SmolLM2 id whose embedding row it takes."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    b2u = bytes_to_unicode()
    u2b = {c: b for b, c in b2u.items()}
    old_id = {t: i for i, t in enumerate(toks)}

    def text_of(t):
        try:
            raw = bytes(u2b[c] for c in t).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None
        if any(ord(c) < 32 or ord(c) == 127 for c in raw):
            return None
        return raw.replace(" ", "\u2581")

    n_spm = N_VOCAB - len(PHI3_SPECIALS)
    pieces = [("<unk>", 0.0, 2, 0), ("<s>", 0.0, 3, 1), ("</s>", 0.0, 3, 2)]
    # (SmolLM2 has no token for the bytes that never occur in UTF-8: their rows are other tokens')
    pieces += [(f"<0x{b:02X}>", 0.0, 6, old_id.get(b2u[b], 17 + b)) for b in range(256)]
    chars = [(text_of(b2u[b]), b2u[b]) for b in range(128)]
    pieces += [(c, -1e6, 1, old_id[t]) for c, t in chars if c is not None]
    have = {p[0] for p in pieces}
    for mg in merges:
        if len(pieces) == n_spm:
            break
        a, b = mg.split(" ")
        ta, tb, tr = text_of(a), text_of(b), text_of(a + b)
        if ta in have and tb in have and tr is not None and tr not in have:
            pieces.append((tr, -float(len(pieces)), 1, old_id[a + b]))
            have.add(tr)
    assert len(pieces) == n_spm, len(pieces)
    m = pb.ModelProto()
    for text, score, ty, _ in pieces:
        p = m.pieces.add()
        p.piece, p.score, p.type = text, score, ty
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = n_spm
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "tokenizer.model"), "wb") as f:
        f.write(m.SerializeToString())
    vocab = {text: i for i, (text, _, _, _) in enumerate(pieces)}
    score = {text: sc for text, sc, ty, _ in pieces if ty == 1}
    # every split of a merged piece into two pieces, by the merged piece's score, then the parts' ids
    pairs = []
    for text, sc, ty, _ in pieces:
        if ty == 1 and len(text) > 1:
            local = [(text[:k], text[k:]) for k in range(1, len(text)) if text[:k] in vocab and text[k:] in vocab]
            pairs += [(-sc, vocab[x], vocab[y], x, y) for x, y in local]
    pairs.sort()
    assert all(x + y in score for _, _, _, x, y in pairs)
    bpe = models.BPE(vocab=vocab, merges=[(x, y) for *_, x, y in pairs], unk_token="<unk>", fuse_unk=True,
                     byte_fallback=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in PHI3_SPECIALS])
    kept = [old for *_, old in pieces] + [old for _, old in PHI3_SPECIALS]
    assert tok.get_vocab_size() == N_VOCAB == len(kept)
    return tok, kept


def rows_from(mats, n_rows, n_cols):
    """The first n_rows × n_cols block of the matrices stacked by rows."""
    return torch.cat(mats, dim=0)[:n_rows, :n_cols].clone()


def build_model(family, src, kept):
    """The family's checkpoint: SmolLM2's first layers cut to the test size, plus the family's own tensors."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
    fam = FAMILIES[family]
    hd = fam["head_dim"]
    common = dict(vocab_size=N_VOCAB, hidden_size=N_EMBD, intermediate_size=N_FF,
                  num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV,
                  max_position_embeddings=4096, rms_norm_eps=fam["rms_eps"], rope_theta=fam["rope_theta"],
                  tie_word_embeddings=fam["tied"], bos_token_id=None, eos_token_id=2, pad_token_id=0,
                  use_sliding_window=False)
    if family == "qwen2":
        cfg, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif family == "llama3":
        specials = {t: N_VOCAB - len(LLAMA3_SPECIALS) + i for i, (t, _) in enumerate(LLAMA3_SPECIALS)}
        common.pop("use_sliding_window")
        common.update(bos_token_id=specials["<|begin_of_text|>"], eos_token_id=specials["<|eot_id|>"],
                      pad_token_id=specials["<|end_of_text|>"],
                      rope_parameters=dict(rope_theta=fam["rope_theta"], **fam["rope_scaling"]))
        cfg, cls = LlamaConfig(head_dim=hd, attention_bias=False, mlp_bias=False, **common), LlamaForCausalLM
    elif family == "phi3":
        from transformers import Phi3Config, Phi3ForCausalLM
        ids = {t: N_VOCAB - len(PHI3_SPECIALS) + i for i, (t, _) in enumerate(PHI3_SPECIALS)}
        common.pop("use_sliding_window")
        common.update(bos_token_id=1, eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                      rope_parameters=dict(rope_theta=fam["rope_theta"], partial_rotary_factor=fam["partial_rotary"],
                                           **fam["rope_scaling"]))
        cfg = Phi3Config(original_max_position_embeddings=fam["rope_scaling"]["original_max_position_embeddings"],
                         partial_rotary_factor=fam["partial_rotary"], sliding_window=fam["sliding_window"],
                         resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, **common)
        cls = Phi3ForCausalLM
    else:
        cfg, cls = Qwen3Config(head_dim=hd, attention_bias=False, **common), Qwen3ForCausalLM
    torch.manual_seed(SEED)
    model = cls(cfg).float().eval()
    g = torch.Generator().manual_seed(SEED + FAMILY_SEED[family])
    kept_t = torch.tensor(kept)
    E, F = N_EMBD, N_FF
    qd, kvd = N_HEAD * hd, N_HEAD_KV * hd
    sd = {}
    emb = src["model.embed_tokens.weight"][kept_t]
    sd["model.embed_tokens.weight"] = emb[:, :E].clone()
    if not fam["tied"]:
        # a head of its own: other columns of the real embedding
        sd["lm_head.weight"] = emb[:, E:2 * E].clone()
    # the final norm scaled up so that next-token distributions are peaked
    sd["model.norm.weight"] = src["model.norm.weight"][:E] * 2.0
    for i in range(N_LAYER):
        s = lambda n: src[f"model.layers.{i}.{n}.weight"]  # noqa: E731
        p = f"model.layers.{i}."
        q, k, v = s("self_attn.q_proj"), s("self_attn.k_proj"), s("self_attn.v_proj")
        sd[p + "input_layernorm.weight"] = s("input_layernorm")[:E].clone()
        sd[p + "post_attention_layernorm.weight"] = s("post_attention_layernorm")[:E].clone()
        proj = {"q_proj": rows_from([q, k], qd, E), "k_proj": rows_from([k, v, q], kvd, E),
                "v_proj": rows_from([v, k, q], kvd, E), "gate_proj": s("mlp.gate_proj")[:F, :E].clone(),
                "up_proj": s("mlp.up_proj")[:F, :E].clone()}
        if family == "phi3":
            # fused: q, k, v rows in one matrix, gate then up rows in another
            sd[p + "self_attn.qkv_proj.weight"] = torch.cat([proj["q_proj"], proj["k_proj"], proj["v_proj"]])
            sd[p + "mlp.gate_up_proj.weight"] = torch.cat([proj["gate_proj"], proj["up_proj"]])
        else:
            for n in ("q_proj", "k_proj", "v_proj"):
                sd[p + f"self_attn.{n}.weight"] = proj[n]
            for n in ("gate_proj", "up_proj"):
                sd[p + f"mlp.{n}.weight"] = proj[n]
        sd[p + "self_attn.o_proj.weight"] = s("self_attn.o_proj")[:E, :qd].clone()
        sd[p + "mlp.down_proj.weight"] = s("mlp.down_proj")[:E, :F].clone()
        if family == "qwen2":
            sd[p + "self_attn.q_proj.bias"] = torch.randn(qd, generator=g) * 0.5
            sd[p + "self_attn.k_proj.bias"] = torch.randn(kvd, generator=g) * 1.0
            sd[p + "self_attn.v_proj.bias"] = torch.randn(kvd, generator=g) * 0.1
        elif family == "qwen3":
            sd[p + "self_attn.q_norm.weight"] = 1.5 + 0.5 * torch.randn(hd, generator=g)
            sd[p + "self_attn.k_norm.weight"] = 1.5 + 0.5 * torch.randn(hd, generator=g)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (fam["tied"] and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if fam["tied"]:
        model.tie_weights()
    return model


def make_adapter(model, out_dir, family):
    """A PEFT LoRA (r=8, alpha=16) on all seven projections with seeded, non-zero A and B."""
    from peft import LoraConfig, get_peft_model
    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] if family == "phi3" else \
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=targets)
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(SEED + 100 + FAMILY_SEED[family])
    with torch.no_grad():
        for name, mod in pm.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5)
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)
    pm.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "adapter_config.json")
    c = json.load(open(cfg_path))
    c["base_model_name_or_path"] = f"{family}-test"
    c["target_modules"] = sorted(c["target_modules"])
    json.dump(c, open(cfg_path, "w"), indent=2, sort_keys=True)
    os.remove(os.path.join(out_dir, "README.md"))  # PEFT's model card template
    return pm.unload() if hasattr(pm, "unload") else model


def save_checkpoint(model, tok, hf_dir, family):
    from transformers import PreTrainedTokenizerFast
    model.save_pretrained(hf_dir, safe_serialization=True)
    t = TOKENIZERS[family]
    extra = {"bos_token": t["bos"]} if t["bos"] else {}
    if family == "phi3":
        extra = {"bos_token": "<s>", "unk_token": "<unk>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=t["eos"], pad_token=t["pad"], **extra)
    fast.chat_template = t["template"]
    fast.save_pretrained(hf_dir)
    # the converter reads rope_theta and rope_scaling (with the original context at the top level),
    # not transformers 5's rope_parameters; BOS for Llama 3, none for Qwen
    cp = os.path.join(hf_dir, "config.json")
    c = json.load(open(cp))
    c["rope_theta"] = FAMILIES[family]["rope_theta"]
    if "rope_scaling" in FAMILIES[family]:
        c["rope_scaling"] = dict(FAMILIES[family]["rope_scaling"])
        c["original_max_position_embeddings"] = c["rope_scaling"]["original_max_position_embeddings"]
    if "partial_rotary" in FAMILIES[family]:
        c["partial_rotary_factor"] = FAMILIES[family]["partial_rotary"]
    json.dump(c, open(cp, "w"), indent=2)
    tp = os.path.join(hf_dir, "tokenizer_config.json")
    c = json.load(open(tp))
    c["add_bos_token"] = bool(t["bos"])
    if family == "phi3":
        # the converter reads the class (a GPT-2 one would be Phi-4's byte-level vocabulary)
        c["tokenizer_class"] = "LlamaTokenizer"
    c["chat_template"] = t["template"]
    json.dump(c, open(tp, "w"), indent=2)
    return fast


def convert(hf_dir, out_path, llama_cpp, pre):
    """llama.cpp's convert_hf_to_gguf.py with its own gguf-py. Our cut vocabulary has no hash in the
    converter's table of known pre-tokenizers; it is told the one the tokenizer uses (`pre`). The
    converter imports `mistral_common` for Mistral's own tokenizers only: stand-ins are enough here.
    It reads the hyper-parameters through transformers' AutoConfig, whose version 5 moves `rope_theta`
    into `rope_parameters` (which this converter does not know): it is given config.json as written,
    as its own fallback does."""
    code = (
        "import sys, types\n"
        "import transformers  # before the stand-ins: it probes for the real package\n"
        "for n, names in [('base', ['TokenizerVersion']), ('multimodal', ['DATASET_MEAN', 'DATASET_STD']),\n"
        "                 ('tekken', ['Tekkenizer']), ('sentencepiece', ['SentencePieceTokenizer'])]:\n"
        "    parts = ['mistral_common', 'tokens', 'tokenizers', n]\n"
        "    for i in range(1, len(parts) + 1):\n"
        "        sys.modules.setdefault('.'.join(parts[:i]), types.ModuleType('.'.join(parts[:i])))\n"
        "    for a in names:\n"
        "        setattr(sys.modules['.'.join(parts)], a, None)\n"
        f"sys.path.insert(0, {os.path.join(llama_cpp, 'gguf-py')!r})\n"
        f"sys.path.insert(0, {llama_cpp!r})\n"
        "import convert_hf_to_gguf as c\n"
        f"c.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}\n"
        "import json\n"
        "c.ModelBase.load_hparams = staticmethod(\n"
        "    lambda d, is_mistral_format=False: json.load(open(d / 'config.json', encoding='utf-8')))\n"
        f"sys.argv = ['convert_hf_to_gguf.py', {hf_dir!r}, '--outtype', 'f32', '--outfile', {out_path!r}]\n"
        "c.main()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def quantize(src, dst, ty, qpy):
    code = (
        "import sys, llama_cpp\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        f"p.ftype = {FTYPES[ty]}\n"
        "p.nthread = 2\n"
        f"r = llama_cpp.llama_model_quantize({src.encode()!r}, {dst.encode()!r}, p)\n"
        "sys.exit(r)\n"
    )
    subprocess.run([qpy, "-c", code], check=True)


def hf_from_gguf(gguf_dir, gguf_name, hf_config):
    """transformers fp32 on the dequantized GGUF. The config is the checkpoint's (transformers' GGUF
    metadata mapping has no head size for qwen3); every weight comes from the GGUF."""
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, config=hf_config,
                                             dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    return m.eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def sequences(fast, family):
    """The chat prompt (the template prints BOS where the family has one) with an answer, and prose and
    code as the family's tokenizer encodes text (BOS first for Llama 3)."""
    chat = fast.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    enc = lambda t, special: fast.encode(t, add_special_tokens=special)  # noqa: E731
    bos = TOKENIZERS[family]["bos"] is not None
    return {
        "chat": enc(chat + ANSWER + TOKENIZERS[family]["turn_end"], False),
        "prose": enc(PROSE, bos),
        "code": enc(CODE, bos),
    }


def short_sequences(fast, family):
    """For LongRoPE: a sequence within the original context (transformers takes the short factors for
    it; a runtime whose context is the original one too), and the original context."""
    if "rope_scaling" not in FAMILIES[family] or FAMILIES[family]["rope_scaling"]["rope_type"] != "longrope":
        return {}, 0
    orig = FAMILIES[family]["rope_scaling"]["original_max_position_embeddings"]
    ids = fast.encode(SHORT_TEXT, add_special_tokens=TOKENIZERS[family]["bos"] is not None)
    assert len(ids) <= orig, len(ids)
    return {"short": ids}, orig


def references(fam_dir, family, hf_config):
    from peft import PeftModel
    seqs = json.load(open(os.path.join(fam_dir, "sequences.json")))
    short = os.path.join(fam_dir, "sequences-short.json")
    if os.path.exists(short):
        # in the same files; a sequence this short takes LongRoPE's short factors
        seqs.update(json.load(open(short)))
    adapter = os.path.join(fam_dir, "adapter-peft")
    summary = {}
    for ty in TYPES:
        name = f"{family}-{ty}.gguf"
        base = hf_from_gguf(fam_dir, name, hf_config)
        res = {}
        for s, ids in seqs.items():
            compact(res, s, logits_of(base, ids))
        np.savez_compressed(os.path.join(fam_dir, f"hf-{ty}-base.npz"), **res)
        rb = {s: logits_of(base, ids) for s, ids in seqs.items()}
        pm = PeftModel.from_pretrained(base, adapter).eval()
        res = {}
        kl = []
        for s, ids in seqs.items():
            la = logits_of(pm, ids)
            compact(res, s, la)
            lpa = la - np.logaddexp.reduce(la, axis=1, keepdims=True)
            lpb = rb[s] - np.logaddexp.reduce(rb[s], axis=1, keepdims=True)
            kl.append((np.exp(lpb) * (lpb - lpa)).sum(axis=1).mean())
        np.savez_compressed(os.path.join(fam_dir, f"hf-{ty}-adapter.npz"), **res)
        ent = np.mean([-(np.exp(lp) * lp).sum(axis=1).mean() for lp in
                       (l - np.logaddexp.reduce(l, axis=1, keepdims=True) for l in rb.values())])
        summary[ty] = {"base_entropy_nats": float(ent), "kl_base_to_adapter": float(np.mean(kl))}
    return summary


def rope_scaling_effect(model, seqs):
    """How far the same weights without the RoPE frequency scaling are from the model (mean KL over the
    sequences): the references can tell a runtime that ignores the scaling."""
    import copy
    rp = model.config.rope_parameters
    kept = {k: rp[k] for k in ("rope_theta", "partial_rotary_factor") if k in rp}
    variants = [("without the RoPE scaling", dict(rope_parameters={"rope_type": "default", **kept}))]
    if rp["rope_type"] == "longrope":
        # the short factors where the long ones apply, and no sliding window
        variants += [("with the short factors", dict(rope_parameters={**rp, "long_factor": rp["short_factor"]})),
                     ("without the sliding window", dict(sliding_window=None))]
    for what, change in variants:
        plain = copy.deepcopy(model.config)
        for k, v in change.items():
            setattr(plain, k, v)
        other = type(model)(plain).float().eval()
        other.load_state_dict(model.state_dict())
        kl = []
        for ids in seqs.values():
            lp = torch.log_softmax(torch.tensor(logits_of(model, ids)), -1)
            lq = torch.log_softmax(torch.tensor(logits_of(other, ids)), -1)
            kl.append(float((lp.exp() * (lp - lq)).sum(-1).mean()))
        print(f"{what}: mean KL {np.mean(kl):.3f} from the model")
        assert np.mean(kl) > 0.01, kl


def build_family(family, args, work):
    from transformers import AutoModelForCausalLM
    fam_dir = os.path.join(args.out, family)
    os.makedirs(fam_dir, exist_ok=True)
    sdir, sname = os.path.split(os.path.abspath(args.smollm2))
    src = AutoModelForCausalLM.from_pretrained(sdir, gguf_file=sname, dtype=torch.float32).state_dict()
    toks, merges = smollm2_tokenizer(args.smollm2)
    hf_dir = os.path.join(work, family + "-hf")
    if family == "phi3":
        tok, kept = build_spm_tokenizer(toks, merges, hf_dir)
    else:
        tok, kept = build_tokenizer(toks, merges, family)
    model = build_model(family, src, kept)
    fast = save_checkpoint(model, tok, hf_dir, family)
    adapter_dir = os.path.join(fam_dir, "adapter-peft")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    model = make_adapter(model, adapter_dir, family)
    f32 = os.path.join(work, f"{family}-F32.gguf")
    convert(hf_dir, f32, args.llama_cpp, TOKENIZERS[family]["pre"])
    for ty in TYPES:
        quantize(f32, os.path.join(fam_dir, f"{family}-{ty}.gguf"), ty, args.quantize_python)
    shutil.copy(os.path.join(hf_dir, "config.json"), os.path.join(fam_dir, "config.json"))
    # the HF model and its GGUF (f32) agree: the converter and transformers' loader keep the family
    seqs = sequences(fast, family)
    json.dump(seqs, open(os.path.join(fam_dir, "sequences.json"), "w"))
    short, orig = short_sequences(fast, family)
    if short:
        assert all(len(ids) > orig for ids in seqs.values()), [len(i) for i in seqs.values()]
        json.dump(short, open(os.path.join(fam_dir, "sequences-short.json"), "w"))
    from transformers import AutoConfig
    hf_config = AutoConfig.from_pretrained(hf_dir)
    back = hf_from_gguf(work, os.path.basename(f32), hf_config)
    d = max(float(np.abs(logits_of(model, ids) - logits_of(back, ids)).max()) for ids in seqs.values())
    d = max([d] + [float(np.abs(logits_of(model, ids) - logits_of(back, ids)).max()) for ids in short.values()])
    print(f"{family}: HF checkpoint vs transformers on its f32 GGUF: max |Δlogit| {d:.2e}")
    assert d < 1e-3, d
    if "rope_scaling" in FAMILIES[family]:
        rope_scaling_effect(model, seqs)
    texts = TOKENIZE_TEXTS + TOKENIZERS[family]["texts"]
    toks_ref = [{"text": t, "ids": fast.encode(t, add_special_tokens=False)} for t in texts]
    json.dump(toks_ref, open(os.path.join(fam_dir, "tokenize.json"), "w"), ensure_ascii=False, indent=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm2", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--llama-cpp", help="llama.cpp source tree (convert_hf_to_gguf.py, gguf-py)")
    ap.add_argument("--quantize-python", help="a Python with llama-cpp-python installed")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "families"))
    ap.add_argument("--family", choices=sorted(FAMILIES), action="append")
    ap.add_argument("--reference-only", action="store_true")
    args = ap.parse_args()
    from transformers import AutoConfig
    for family in args.family or sorted(FAMILIES):
        fam_dir = os.path.join(args.out, family)
        if not args.reference_only:
            with tempfile.TemporaryDirectory() as work:
                build_family(family, args, work)
        hf_config = AutoConfig.from_pretrained(fam_dir)
        summary = references(fam_dir, family, hf_config)
        print(family, json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
