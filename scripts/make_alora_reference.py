#!/usr/bin/env python3
"""Make the aLoRA test adapter and its Hugging Face + PEFT fp32 reference logits.

Usage: make_alora_reference.py MODELS_DIR OUT_ROOT
  MODELS_DIR holds SmolLM2-135M-Instruct.Q4_1.gguf (transformers dequantizes it to fp32);
  OUT_ROOT is the project root: writes tests/data/adapters/alora-peft/ (PEFT save_pretrained),
  tests/data/reference/smollm2/alora_sequences.json, hf_alora.npz and hf_pirate1_alora1.npz.
Needs torch, transformers, peft, gguf, numpy. Deterministic (fixed seeds, CPU, fp32).

The adapter is not trained: A and B are seeded Gaussian matrices scaled so that it visibly changes the
distribution after the invocation (mean KL to the base is printed). PEFT applies an aLoRA to the
positions from the start of the *last* occurrence of `alora_invocation_tokens` in the forward pass's
input to its end (`calculate_alora_offsets`, `ALoraLinearVariant.forward`); before it, and everywhere
when the sequence does not occur, the base model alone.
"""
import json
import os
import sys

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.variants import calculate_alora_offsets
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "reference"))
from compact import compact  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# "<|im_start|>assistant\n": the adapter acts on the assistant's turn only.
INVOCATION = [1, 520, 9531, 198]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model(models):
    m = AutoModelForCausalLM.from_pretrained(models, gguf_file=GGUF, torch_dtype=torch.float32)
    return m.eval()


def make_adapter(models, out_dir):
    torch.manual_seed(18)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, alora_invocation_tokens=INVOCATION,
                     task_type="CAUSAL_LM", init_lora_weights=True, lora_dropout=0.0)
    pm = get_peft_model(base_model(models), cfg)
    g = torch.Generator().manual_seed(18)
    with torch.no_grad():
        for name, mod in pm.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5)
                b.copy_(torch.randn(b.shape, generator=g) * 0.08)
    pm.save_pretrained(out_dir)


def sequences(models, shared):
    tok = AutoTokenizer.from_pretrained(models, gguf_file=GGUF)
    enc = lambda s: tok.encode(s, add_special_tokens=False)
    chat = shared["chat_capital"]
    two_turns = chat + enc("<|im_start|>user\nAnd of Spain?<|im_end|>\n") + INVOCATION + enc("The capital of Spain is Madrid.")
    mid = shared["prose"][:30] + INVOCATION + shared["code"][:26]
    seqs = {"chat_capital": chat, "chat_two_turns": two_turns, "prose_invoked": mid, "prose": shared["prose"]}
    for name, ids in seqs.items():
        assert all(isinstance(i, int) for i in ids), name
    return seqs


def logits(pm, ids, offsets=None):
    x = torch.tensor([ids])
    with torch.no_grad():
        if offsets is None:
            return pm(x).logits[0].numpy()
        return pm(x, alora_offsets=offsets).logits[0].numpy()


def kl_rows(p_logits, q_logits):
    lp = torch.log_softmax(torch.tensor(p_logits, dtype=torch.float64), -1)
    lq = torch.log_softmax(torch.tensor(q_logits, dtype=torch.float64), -1)
    return (lp.exp() * (lp - lq)).sum(-1).numpy()


def main():
    models, root = sys.argv[1], sys.argv[2]
    data = os.path.join(root, "tests", "data")
    ad_dir = os.path.join(data, "adapters", "alora-peft")
    pirate = os.path.join(data, "adapters", "pirate-peft")
    ref_dir = os.path.join(data, "reference", "smollm2")
    shared = json.load(open(os.path.join(ref_dir, "sequences.json")))
    make_adapter(models, ad_dir)
    seqs = sequences(models, shared)
    json.dump(seqs, open(os.path.join(ref_dir, "alora_sequences.json"), "w"))

    base = base_model(models)
    base_logits = {n: logits(base, ids) for n, ids in seqs.items()}
    # Alone: PEFT computes the offsets itself from the input ids.
    alone = PeftModel.from_pretrained(base_model(models), ad_dir)
    res = {}
    for n, ids in seqs.items():
        l = logits(alone, ids)
        off = calculate_alora_offsets(alone.peft_config, "default", torch.tensor([ids]))[0]
        start = len(ids) - off if off is not None else len(ids)
        # Before the invocation: the base model's logits (same fp32 computation).
        assert np.array_equal(l[:start], base_logits[n][:start]), n
        kl = kl_rows(base_logits[n][start:], l[start:])
        print(f"alora {n}: invocation starts at {start} of {len(ids)}; KL(base||alora) after: "
              f"mean {kl.mean() if len(kl) else 0:.4f}")
        compact(res, n, l)
    np.savez_compressed(os.path.join(ref_dir, "hf_alora.npz"), **res)

    # Stacked with a plain LoRA (pirate, scale 1): both active, the aLoRA gated by the offsets PEFT
    # computes for it.
    st = PeftModel.from_pretrained(base_model(models), pirate, adapter_name="pirate")
    st.load_adapter(ad_dir, adapter_name="alora")
    st.base_model.set_adapter(["pirate", "alora"])
    res = {}
    for n, ids in seqs.items():
        off = calculate_alora_offsets(st.peft_config, "alora", torch.tensor([ids]))
        compact(res, n, logits(st, ids, off))
    np.savez_compressed(os.path.join(ref_dir, "hf_pirate1_alora1.npz"), **res)


if __name__ == "__main__":
    main()
