#!/usr/bin/env python3
"""Build the small test models of the Qwen families and their Hugging Face references.

For each family (qwen2, qwen3) this script
1. builds a small Hugging Face checkpoint from a config: SmolLM2-135M-Instruct's real weights (dequantized
   from its GGUF by transformers) cut to a narrow width and two layers and re-dressed in the family's
   layout, plus the family's own tensors (q/k/v biases for qwen2, q/k norms for qwen3) drawn from a fixed
   seed; its tokenizer is a 4096-token byte-level BPE cut from SmolLM2's (the first merges, which only
   use earlier tokens) with Qwen2's pre-tokenizer split and NFC normalizer and a ChatML template;
2. makes a PEFT LoRA adapter on all seven projections with non-zero, seeded A and B;
3. converts the checkpoint with llama.cpp's own convert_hf_to_gguf.py (f32) and quantizes it with
   llama.cpp's quantizer (llama-cpp-python's llama_model_quantize) to Q8_0, Q4_0 and Q4_K_M;
4. computes the references: transformers fp32 loading each committed GGUF (dequantized) for the token
   sequences, without and with the adapter (PEFT), stored compact (top-128 ids and logits, logsumexp);
   and the ids the Hugging Face tokenizer gives a set of texts.

Run (needs torch, transformers, peft, gguf, tokenizers; a llama.cpp source tree; a Python with
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
}

# Qwen2's pre-tokenizer split (tokenizer.json of the Qwen2/2.5/3 models).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

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


def build_tokenizer(toks, merges):
    """A 4096-token BPE: SmolLM2's three chat specials, its 256 byte tokens and its first merges whose
    result is kept (every such merge only joins earlier tokens). Returns the tokenizer and the kept ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    n_special, n_byte = 3, 256
    kept = list(range(n_special)) + list(range(17, 17 + n_byte))
    kept += list(range(17 + n_byte, 17 + n_byte + N_VOCAB - len(kept)))
    vocab = {toks[old]: new for new, old in enumerate(kept)}
    assert len(vocab) == N_VOCAB
    pairs = []
    for mg in merges:
        a, b = mg.split(" ")
        if a + b in vocab and a in vocab and b in vocab:
            pairs.append((a, b))
    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    return tok, kept


def rows_from(mats, n_rows, n_cols):
    """The first n_rows × n_cols block of the matrices stacked by rows."""
    return torch.cat(mats, dim=0)[:n_rows, :n_cols].clone()


def build_model(family, src, kept):
    """The family's checkpoint: SmolLM2's first layers cut to the test size, plus the family's own tensors."""
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
    else:
        cfg, cls = Qwen3Config(head_dim=hd, attention_bias=False, **common), Qwen3ForCausalLM
    torch.manual_seed(SEED)
    model = cls(cfg).float().eval()
    g = torch.Generator().manual_seed(SEED + (1 if family == "qwen3" else 0))
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
        sd[p + "self_attn.q_proj.weight"] = rows_from([q, k], qd, E)
        sd[p + "self_attn.k_proj.weight"] = rows_from([k, v, q], kvd, E)
        sd[p + "self_attn.v_proj.weight"] = rows_from([v, k, q], kvd, E)
        sd[p + "self_attn.o_proj.weight"] = s("self_attn.o_proj")[:E, :qd].clone()
        sd[p + "mlp.gate_proj.weight"] = s("mlp.gate_proj")[:F, :E].clone()
        sd[p + "mlp.up_proj.weight"] = s("mlp.up_proj")[:F, :E].clone()
        sd[p + "mlp.down_proj.weight"] = s("mlp.down_proj")[:E, :F].clone()
        if family == "qwen2":
            sd[p + "self_attn.q_proj.bias"] = torch.randn(qd, generator=g) * 0.5
            sd[p + "self_attn.k_proj.bias"] = torch.randn(kvd, generator=g) * 1.0
            sd[p + "self_attn.v_proj.bias"] = torch.randn(kvd, generator=g) * 0.1
        else:
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
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                     "down_proj"])
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(SEED + 100 + (1 if family == "qwen3" else 0))
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
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(hf_dir)
    # the converter reads rope_theta (not transformers 5's rope_parameters); no BOS, as Qwen
    cp = os.path.join(hf_dir, "config.json")
    c = json.load(open(cp))
    c["rope_theta"] = FAMILIES[family]["rope_theta"]
    json.dump(c, open(cp, "w"), indent=2)
    tp = os.path.join(hf_dir, "tokenizer_config.json")
    c = json.load(open(tp))
    c["add_bos_token"] = False
    c["chat_template"] = CHAT_TEMPLATE
    json.dump(c, open(tp, "w"), indent=2)
    return fast


def convert(hf_dir, out_path, llama_cpp):
    """llama.cpp's convert_hf_to_gguf.py with its own gguf-py. Our cut vocabulary has no hash in the
    converter's table of known pre-tokenizers; it is told the one the tokenizer uses (`qwen2`). The
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
        "c.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'\n"
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


def sequences(fast):
    chat = fast.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    enc = lambda t: fast.encode(t, add_special_tokens=False)  # noqa: E731
    return {
        "chat": enc(chat + ANSWER + "<|im_end|>\n"),
        "prose": enc(PROSE),
        "code": enc(CODE),
    }


def references(fam_dir, family, hf_config):
    from peft import PeftModel
    seqs = json.load(open(os.path.join(fam_dir, "sequences.json")))
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


def build_family(family, args, work):
    from transformers import AutoModelForCausalLM
    fam_dir = os.path.join(args.out, family)
    os.makedirs(fam_dir, exist_ok=True)
    sdir, sname = os.path.split(os.path.abspath(args.smollm2))
    src = AutoModelForCausalLM.from_pretrained(sdir, gguf_file=sname, dtype=torch.float32).state_dict()
    toks, merges = smollm2_tokenizer(args.smollm2)
    tok, kept = build_tokenizer(toks, merges)
    model = build_model(family, src, kept)
    hf_dir = os.path.join(work, family + "-hf")
    fast = save_checkpoint(model, tok, hf_dir, family)
    adapter_dir = os.path.join(fam_dir, "adapter-peft")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    model = make_adapter(model, adapter_dir, family)
    f32 = os.path.join(work, f"{family}-F32.gguf")
    convert(hf_dir, f32, args.llama_cpp)
    for ty in TYPES:
        quantize(f32, os.path.join(fam_dir, f"{family}-{ty}.gguf"), ty, args.quantize_python)
    shutil.copy(os.path.join(hf_dir, "config.json"), os.path.join(fam_dir, "config.json"))
    # the HF model and its GGUF (f32) agree: the converter and transformers' loader keep the family
    seqs = sequences(fast)
    json.dump(seqs, open(os.path.join(fam_dir, "sequences.json"), "w"))
    from transformers import AutoConfig
    hf_config = AutoConfig.from_pretrained(hf_dir)
    back = hf_from_gguf(work, os.path.basename(f32), hf_config)
    d = max(float(np.abs(logits_of(model, ids) - logits_of(back, ids)).max()) for ids in seqs.values())
    print(f"{family}: HF checkpoint vs transformers on its f32 GGUF: max |Δlogit| {d:.2e}")
    assert d < 1e-3, d
    toks_ref = [{"text": t, "ids": fast.encode(t, add_special_tokens=False)} for t in TOKENIZE_TEXTS]
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
