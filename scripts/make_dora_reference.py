#!/usr/bin/env python3
"""Make the DoRA test adapters and their Hugging Face + PEFT fp32 reference logits.

Usage: make_dora_reference.py MODEL.gguf OUT_ROOT [CHECK_DIR]

- Loads SmolLM2-135M-Instruct from the project's Q4_1 GGUF with transformers (`gguf_file=`, which
  dequantizes every tensor to fp32), i.e. the same weights the project's other HF references use.
- If CHECK_DIR holds `hf_base.npz` / `hf_pirate.npz` (the existing references) it first checks that this
  pipeline reproduces them (metrics of `tests/data/reference/compact.py`), and stops if it does not.
- Makes two DoRA adapters with PEFT (`use_dora=True`), seeded: B drawn at random so that the delta is
  about 6% of each row's norm, and the magnitude vector moved away from its initial value (the row norms
  of W0 + s·B·A) by a random factor exp(0.05·N(0,1)) per row, so that neither the norm nor the magnitude
  is a no-op. Saved with `save_pretrained` (adapter_config.json + adapter_model.safetensors):
  - `dora-all/`: r=8, lora_alpha=16, q,k,v,o,gate,up,down;
  - `dora-rs/`: r=16, lora_alpha=16, use_rslora, rank_pattern {"down_proj": 4}, on q,v,down.
- Writes compact reference logits (top-128, compact.py) of every sequence in `sequences.json` for:
  `hf_dora_all` (alone), `hf_dora_rs` (alone), `hf_dora_all_pirate` (dora-all 1.0 then pirate 1.0, PEFT's
  stacking: several active adapters applied in order), `hf_pirate_dora_all05` (pirate 1.0 then dora-all
  at scale 0.5, set with PEFT's `set_scale`).
"""
import json
import os
import sys

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests/data/reference"))
from compact import compact, compare, summarize  # noqa: E402

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_base(gguf):
    m = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(gguf)), gguf_file=os.path.basename(gguf), dtype=torch.float32
    )
    return m.eval()


@torch.no_grad()
def logits_of(model, seqs):
    return {n: model(torch.tensor([ids])).logits[0].double().numpy() for n, ids in seqs.items()}


def metrics(ref, out):
    return summarize({n: compare(ref, n, l) for n, l in out.items()})


def save_compact(path, out):
    res = {}
    for n, l in out.items():
        compact(res, n, l)
    np.savez_compressed(path, **res)


@torch.no_grad()
def perturb(model, adapter, seed):
    """B at random (delta ≈ 6% of the row norm), magnitude = the new row norms × exp(0.05·N(0,1))."""
    g = torch.Generator().manual_seed(seed)
    for name, mod in model.named_modules():
        if not hasattr(mod, "lora_B") or adapter not in mod.lora_B:
            continue
        w0 = mod.get_base_layer().weight
        a, b = mod.lora_A[adapter].weight, mod.lora_B[adapter].weight
        s = mod.scaling[adapter]
        b.copy_(torch.randn(b.shape, generator=g))
        delta = s * (b @ a)
        k = 0.06 * w0.norm(dim=1).mean() / delta.norm(dim=1).mean()
        b.mul_(k)
        norm = (w0 + s * (b @ a)).norm(dim=1)
        mag = mod.lora_magnitude_vector[adapter].weight
        mag.copy_(norm * torch.exp(0.05 * torch.randn(norm.shape, generator=g)))


def make(base, out_dir, cfg, seed):
    model = get_peft_model(base, cfg, adapter_name="default")
    perturb(model, "default", seed)
    model.save_pretrained(out_dir)
    return model.unload()  # the base model back, without the wrappers


def main():
    gguf, out_root = sys.argv[1], sys.argv[2]
    check = sys.argv[3] if len(sys.argv) > 3 else None
    torch.manual_seed(0)
    ref_dir = os.path.join(out_root, "reference/smollm2")
    ad_dir = os.path.join(out_root, "adapters")
    seqs = json.load(open(os.path.join(ref_dir, "sequences.json")))
    base = load_base(gguf)
    if check:
        got = metrics(np.load(os.path.join(check, "hf_base.npz")), logits_of(base, seqs))
        print("base vs hf_base.npz:", json.dumps(got))
        assert got["kl_mean"] < 1e-5 and got["top1"] == 1.0, "the base model does not reproduce hf_base"
        pm = PeftModel.from_pretrained(base, os.path.join(ad_dir, "pirate-peft")).eval()
        got = metrics(np.load(os.path.join(check, "hf_pirate.npz")), logits_of(pm, seqs))
        print("pirate vs hf_pirate.npz:", json.dumps(got))
        assert got["kl_mean"] < 1e-5 and got["top1"] == 1.0, "pirate does not reproduce hf_pirate"
        base = pm.unload()
    base_logits = logits_of(base, seqs)

    cfg_all = LoraConfig(r=8, lora_alpha=16, target_modules=ALL7, use_dora=True, lora_dropout=0.0)
    cfg_rs = LoraConfig(
        r=16, lora_alpha=16, use_rslora=True, rank_pattern={"down_proj": 4},
        target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True, lora_dropout=0.0,
    )
    base = make(base, os.path.join(ad_dir, "dora-all"), cfg_all, 1)
    base = make(base, os.path.join(ad_dir, "dora-rs"), cfg_rs, 2)

    model = PeftModel.from_pretrained(base, os.path.join(ad_dir, "dora-all"), adapter_name="dora_all")
    model.load_adapter(os.path.join(ad_dir, "dora-rs"), adapter_name="dora_rs")
    model.load_adapter(os.path.join(ad_dir, "pirate-peft"), adapter_name="pirate")
    model.eval()
    lora = model.base_model

    def run(name, active, scales):
        lora.set_adapter(active)
        for mod in model.modules():
            if hasattr(mod, "set_scale") and hasattr(mod, "scaling"):
                for ad in mod.scaling:
                    mod.set_scale(ad, scales.get(ad, 1.0))
        out = logits_of(model, seqs)
        save_compact(os.path.join(ref_dir, name + ".npz"), out)
        ref = np.load(os.path.join(ref_dir, name + ".npz"))
        print(name, "active", active, "scales", scales,
              "| base vs it:", json.dumps(metrics(ref, base_logits)))
        return out

    run("hf_dora_all", ["dora_all"], {})
    run("hf_dora_rs", ["dora_rs"], {})
    run("hf_dora_all_pirate", ["dora_all", "pirate"], {})
    run("hf_pirate_dora_all05", ["pirate", "dora_all"], {"dora_all": 0.5})
    # The same factors without DoRA (magnitude and norm ignored) must be far from the DoRA reference.
    for mod in model.modules():
        if hasattr(mod, "lora_variant"):
            mod.lora_variant.pop("dora_all", None)
    lora.set_adapter(["dora_all"])
    for mod in model.modules():
        if hasattr(mod, "set_scale") and hasattr(mod, "scaling") and "dora_all" in mod.scaling:
            mod.set_scale("dora_all", 1.0)
    plain = logits_of(model, seqs)
    print("dora-all as plain LoRA vs hf_dora_all:",
          json.dumps(metrics(np.load(os.path.join(ref_dir, "hf_dora_all.npz")), plain)))


if __name__ == "__main__":
    main()
