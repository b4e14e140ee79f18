"""Makes the PEFT `modules_to_save` test adapters and their Hugging Face reference logits.

Two adapters on SmolLM2-135M-Instruct (weights dequantized from the Q4_1 GGUF by transformers, fp32):
- `head-peft`: LoRA r=4, alpha=8 on q_proj, v_proj + `modules_to_save=["lm_head"]` (the tied head replaced);
- `embed-peft`: LoRA r=4, alpha=8 on down_proj + `modules_to_save=["embed_tokens"]` (the head stays tied to
  the original embedding, as PEFT does without `ensure_weight_tying`).
Every trainable value is a deterministic integer-hash pattern (`pattern` below, exact in f32), so the
49152x576 replacements need not be stored: tests/data/adapters/saved-modules/ keeps PEFT's
`adapter_config.json`, the safetensors header exactly as PEFT wrote it and the file's CRC-32 and length; the
Rust tests rebuild the file from the base GGUF and the same pattern and check the CRC.
Reference logits (compact top-128, tests/data/reference/compact.py) on tests/data/reference/smollm2/
sequences.json: each adapter alone and each stacked with pirate-peft (both at scale 1).

Usage: python scripts/make_saved_module_adapters.py MODEL_DIR OUT_DIR
  (MODEL_DIR holds SmolLM2-135M-Instruct.Q4_1.gguf; run from the repository root)
"""
import json, os, shutil, struct, sys, zlib

import numpy as np
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model

sys.path.insert(0, "tests/data/reference")
import compact  # noqa: E402

M64 = (1 << 64) - 1


def pattern(seed, n):
    """n values in [-1, 1), multiples of 2^-15: a splitmix-style hash of (seed, index)."""
    with np.errstate(over="ignore"):
        h = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h = h + np.uint64((seed * 0xD1B54A32D192ED03) & M64)
        h ^= h >> np.uint64(31)
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    k = (h >> np.uint64(48)).astype(np.int64) - 32768
    return k.astype(np.float32) * np.float32(2.0**-15)


# name suffix -> (seed, amplitude); a replacement is base + amplitude * pattern.
SPEC = {
    "lora_A": (1, 2.0**-4),
    "lora_B": (2, 2.0**-5),
    "lm_head": (3, 2.0**-5),
    "embed_tokens": (4, 2.0**-5),
}


def fill(peft_model, modules):
    """Sets every LoRA factor and replacement to its pattern (seed mixed with the layer index)."""
    for name, p in peft_model.named_parameters():
        if not p.requires_grad:
            continue
        key = next(k for k in SPEC if k in name)
        seed, amp = SPEC[key]
        layer = int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else 0
        proj = sum(ord(c) for c in name.split(".")[-4]) if "lora_" in name else 0
        v = pattern(seed * 1000003 + layer * 101 + proj, p.numel()).reshape(p.shape) * np.float32(amp)
        with torch.no_grad():
            if key in modules:
                p.copy_(p + torch.from_numpy(v))
            else:
                p.copy_(torch.from_numpy(v))


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, dtype=torch.float32)
    seqs = json.load(open("tests/data/reference/smollm2/sequences.json"))
    base_ref = np.load("tests/data/reference/smollm2/hf_base.npz")

    def logits(m):
        m.eval()
        with torch.no_grad():
            return {n: m(torch.tensor([ids])).logits[0].double().numpy() for n, ids in seqs.items()}

    base = load()
    bl = logits(base)
    print("base vs hf_base.npz:", compact.summarize({n: compact.compare(base_ref, n, l) for n, l in bl.items()}))
    meta = {}
    for name, modules, targets in [("head-peft", ["lm_head"], ["q_proj", "v_proj"]),
                                   ("embed-peft", ["embed_tokens"], ["down_proj"])]:
        torch.manual_seed(0)
        m = get_peft_model(load(), LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=modules))
        fill(m, modules)
        d = os.path.join("/tmp", "saved-modules-" + name)
        shutil.rmtree(d, ignore_errors=True)
        m.save_pretrained(d)
        raw = open(os.path.join(d, "adapter_model.safetensors"), "rb").read()
        (hlen,) = struct.unpack("<Q", raw[:8])
        os.makedirs(os.path.join(out, name), exist_ok=True)
        shutil.copy(os.path.join(d, "adapter_config.json"), os.path.join(out, name, "adapter_config.json"))
        open(os.path.join(out, name, "safetensors_header.json"), "wb").write(raw[8:8 + hlen])
        meta[name] = {"crc32": zlib.crc32(raw), "len": len(raw)}
        res, alone = {}, logits(m)
        for n, l in alone.items():
            compact.compact(res, n, l)
        np.savez_compressed(os.path.join(out, f"hf_{name}.npz"), **res)
        print(name, "vs base:", compact.summarize({n: compact.compare(res, n, bl[n]) for n in seqs}))
        # Stacked with pirate at scale 1 (PEFT uses the replacement of the one adapter that has it).
        pm = PeftModel.from_pretrained(load(), d, adapter_name="saved")
        pm.load_adapter("tests/data/adapters/pirate-peft", adapter_name="pirate")
        pm.base_model.set_adapter(["saved", "pirate"])
        res = {}
        for n, l in logits(pm).items():
            compact.compact(res, n, l)
        np.savez_compressed(os.path.join(out, f"hf_{name}_pirate.npz"), **res)
        print(name, "+ pirate vs alone:", compact.summarize({n: compact.compare(res, n, alone[n]) for n in seqs}))
    json.dump(meta, open(os.path.join(out, "files.json"), "w"), indent=1)
    print(meta)


if __name__ == "__main__":
    main()
