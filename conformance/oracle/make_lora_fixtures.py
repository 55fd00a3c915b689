#!/usr/bin/env python3
"""Golden LoRA fixtures for tessera, made with Hugging Face PEFT on the tiny llama_gqa_rope3 model.

Writes conformance/fixtures/lora/:
  a/  adapter_config.json + adapter_model.safetensors   (r=8, alpha=16, q_proj and v_proj)
  b/  adapter_config.json + adapter_model.safetensors   (r=4, alpha=8, rsLoRA, all 7 projections)
  golden.safetensors  logits of 2 prompts at every position for base, a, b, a merged, b merged,
                      and 16 greedy tokens on prompt 0 for base, a and b.

Everything runs on the CPU in float32 with eager attention. PEFT initialises lora_B to zero (an
adapter that does nothing), so every lora_A and lora_B is overwritten with seeded random values.
The goldens are computed from the adapters as reloaded from disk (PeftModel.from_pretrained), so
they describe exactly the committed files. Greedy decoding is a manual loop: a full forward over
the whole sequence at each step, argmax of the last position, never stopping at EOS.

Run from anywhere:  HF_HUB_OFFLINE=1 python3 conformance/oracle/make_lora_fixtures.py
"""

import importlib.metadata as md
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Relative on purpose: PEFT records the base model path in adapter_config.json
# (base_model_name_or_path), and an absolute path would differ from machine to machine.
BASE_REL = "conformance/fixtures/tiny/llama_gqa_rope3"
OUT = ROOT / "conformance" / "fixtures" / "lora"

PROMPT_LENS = [11, 7]
PROMPT_SEED0 = 7001
GREEDY_STEPS = 16
# Same rule as make_fixtures.py: a greedy step whose top-2 logit gap is below this is an
# ambiguous argmax that another engine's float32 rounding could flip.
MIN_GAP = 1e-2
MERGE_NMSE_MAX = 1e-10
# Wanted range of NMSE(adapter logits, base logits): a clear change, not a different model.
NMSE_RANGE = (1e-3, 1e-1)

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name, LoraConfig kwargs, weight seed, B scale (see randomize_lora)
ADAPTERS = [
    ("a", dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), 8001, 0.06),
    ("b", dict(r=4, lora_alpha=8, use_rslora=True, target_modules=ALL_PROJ), 8002, 0.02),
]


def versions():
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": md.version("accelerate"),
        "safetensors": md.version("safetensors"),
    }


def load_base():
    return LlamaForCausalLM.from_pretrained(
        BASE_REL, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def forward_logits(model, ids):
    out = model(input_ids=ids.unsqueeze(0), use_cache=False)
    return out.logits[0].to(torch.float32)


def greedy(model, prompt_ids, steps):
    seq = prompt_ids.clone()
    toks, gaps = [], []
    for _ in range(steps):
        row = forward_logits(model, seq)[-1]
        top = torch.topk(row, 2).values
        gaps.append(float(top[0] - top[1]))
        tok = int(torch.argmax(row))
        toks.append(tok)
        seq = torch.cat([seq, torch.tensor([tok], dtype=torch.int64)])
    return torch.tensor(toks, dtype=torch.int64), gaps


def nmse(x, ref):
    x, ref = x.to(torch.float64), ref.to(torch.float64)
    return float(((x - ref) ** 2).sum() / (ref**2).sum())


def randomize_lora(model, seed, b_scale):
    """A ~ N(0, 1/in), B ~ N(0, b_scale^2 / r): B·A has entries of std b_scale/sqrt(in), i.e.
    b_scale relative to the base weights (N(0, 1/in)), before PEFT's scaling factor."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    for name, p in sorted(model.named_parameters()):
        if ".lora_A." in name:
            new = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1])
        elif ".lora_B." in name:
            new = torch.randn(p.shape, generator=g) * b_scale / math.sqrt(p.shape[1])
        else:
            continue
        with torch.no_grad():
            p.copy_(new)
        n += 1
    return n


def make_adapter(name, kwargs, seed, b_scale):
    out_dir = OUT / name
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **kwargs)
    model = get_peft_model(load_base(), cfg).eval()
    n = randomize_lora(model, seed, b_scale)
    model.save_pretrained(out_dir, safe_serialization=True)
    # PEFT also writes a model card; the fixture needs only the two files.
    card = out_dir / "README.md"
    if card.exists():
        card.unlink()
    # target_modules is a set inside PEFT, so its order in the JSON follows Python's string
    # hashing and changes from run to run; sort it so reruns are byte-identical.
    cpath = out_dir / "adapter_config.json"
    doc = json.loads(cpath.read_text())
    if isinstance(doc.get("target_modules"), list):
        doc["target_modules"] = sorted(doc["target_modules"])
    cpath.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    with safe_open(out_dir / "adapter_model.safetensors", "pt") as f:
        names = sorted(f.keys())
        dtypes = sorted({str(f.get_tensor(k).dtype) for k in names})
    print(f"== adapter {name}: {n} LoRA matrices randomized (seed {seed}, B scale {b_scale})")
    print(f"  {len(names)} tensors, dtypes {dtypes}, e.g. {names[0]}")
    for k in names:
        with safe_open(out_dir / "adapter_model.safetensors", "pt") as f:
            print(f"    {k} {tuple(f.get_tensor(k).shape)}")
    assert dtypes == ["torch.float32"], dtypes
    return names


def load_adapter(name, merged):
    model = PeftModel.from_pretrained(load_base(), str(OUT / name)).eval()
    if merged:
        model = model.merge_and_unload().eval()
    return model


def main():
    os.chdir(ROOT)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    print("versions:", json.dumps(versions()))

    tensor_names = {}
    scalings = {}
    for name, kwargs, seed, b_scale in ADAPTERS:
        tensor_names[name] = make_adapter(name, kwargs, seed, b_scale)
        r, alpha = kwargs["r"], kwargs["lora_alpha"]
        scalings[name] = alpha / math.sqrt(r) if kwargs.get("use_rslora") else alpha / r

    base = load_base()
    models = {"base": base}
    for name, *_ in ADAPTERS:
        models[name] = load_adapter(name, merged=False)
        models[f"{name}_merged"] = load_adapter(name, merged=True)
        # the reloaded PEFT model must use the scaling we expect
        lay = models[name].base_model.model.model.layers[0].self_attn.q_proj
        got = lay.scaling["default"]
        assert abs(got - scalings[name]) < 1e-12, (name, got, scalings[name])

    # prompts: seeded; prompt 0's seed advances until every greedy step (base, a, b) has a
    # top-2 gap >= MIN_GAP.
    tensors = {}
    metrics = {}
    seed = PROMPT_SEED0
    while True:
        g = torch.Generator().manual_seed(seed)
        p0 = torch.randint(0, base.config.vocab_size, (PROMPT_LENS[0],), generator=g)
        greedy_out = {k: greedy(models[k], p0, GREEDY_STEPS) for k in ("base", "a", "b")}
        min_gap = min(min(gaps) for _, gaps in greedy_out.values())
        # each adapter must change prompt 0's greedy tokens, or the greedy goldens cannot tell
        # an engine that ignores the adapter from one that applies it
        base_toks = greedy_out["base"][0]
        changed = all(not torch.equal(greedy_out[k][0], base_toks) for k in ("a", "b"))
        if min_gap >= MIN_GAP and changed:
            break
        print(
            f"  prompt seed {seed}: min top-2 gap {min_gap:.3g} (want >= {MIN_GAP}), "
            f"greedy changed by both adapters: {changed}; next seed"
        )
        seed += 1
    prompt_seed0 = seed
    g = torch.Generator().manual_seed(prompt_seed0 + 1000)
    p1 = torch.randint(0, base.config.vocab_size, (PROMPT_LENS[1],), generator=g)
    prompts = [p0.to(torch.int64), p1.to(torch.int64)]

    for i, ids in enumerate(prompts):
        tensors[f"p{i}.input_ids"] = ids.contiguous()
        logits = {k: forward_logits(m, ids) for k, m in models.items()}
        for k, v in logits.items():
            tensors[f"p{i}.logits.{k}"] = v.contiguous()
        for name, *_ in ADAPTERS:
            e_base = nmse(logits[name], logits["base"])
            e_merge = nmse(logits[f"{name}_merged"], logits[name])
            metrics[f"p{i}.nmse.{name}_vs_base"] = e_base
            metrics[f"p{i}.nmse.{name}_merged_vs_{name}"] = e_merge
            print(f"  p{i} {name}: NMSE vs base {e_base:.3e}; merged vs unmerged {e_merge:.3e}")
            if e_merge >= MERGE_NMSE_MAX:
                sys.exit(f"p{i} adapter {name}: merged vs unmerged NMSE {e_merge:.3e} >= {MERGE_NMSE_MAX}")
            lo, hi = NMSE_RANGE
            if not lo <= e_base <= hi:
                sys.exit(f"p{i} adapter {name}: NMSE vs base {e_base:.3e} outside [{lo}, {hi}]")

    for k, (toks, gaps) in greedy_out.items():
        tensors[f"p0.greedy.{k}"] = toks.contiguous()
        metrics[f"p0.greedy.{k}.min_top2_gap"] = min(gaps)
        print(f"  p0 greedy {k}: {toks.tolist()} (min top-2 gap {min(gaps):.4f})")
    # the prompt-0 logits and the first greedy step are the same forward
    for k in ("base", "a", "b"):
        assert int(tensors[f"p0.greedy.{k}"][0]) == int(torch.argmax(tensors[f"p0.logits.{k}"][-1]))
    assert not torch.equal(tensors["p0.greedy.a"], tensors["p0.greedy.base"])
    assert not torch.equal(tensors["p0.greedy.b"], tensors["p0.greedy.base"])

    meta = {
        "base_model": BASE_REL,
        "adapters": {
            name: {
                "config": {k: v for k, v in kwargs.items()},
                "weight_seed": wseed,
                "b_scale": b_scale,
                "scaling": scalings[name],
                "tensors": tensor_names[name],
            }
            for name, kwargs, wseed, b_scale in ADAPTERS
        },
        "prompt_seeds": [prompt_seed0, prompt_seed0 + 1000],
        "greedy_steps": GREEDY_STEPS,
        "metrics": metrics,
        "note": "pI.logits.X: one forward over pI.input_ids (X = base, a, b, a_merged, b_merged; "
        "merged = merge_and_unload); p0.greedy.X: manual greedy loop, full forward per step, "
        "no EOS stop",
        "versions": versions(),
    }
    save_file(
        tensors,
        str(OUT / "golden.safetensors"),
        metadata={"golden": json.dumps(meta, sort_keys=True)},
    )
    print("== files")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(ROOT)}  {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
