#!/usr/bin/env python3
"""The PyTorch + transformers peer of `scripts/gpu-check`.

What it measures, on the same GPU and with the same model shapes as tessera's
`random:<shape>` presets (random bf16 weights, nothing downloaded):

  copy_bandwidth_gb_s   best of 10 `dst.copy_(src)` of a 2 GiB bf16 tensor,
                        counted as 2 x bytes / time (read + write), in GB/s
                        (1e9). The HBM bound of the report is built on it.
  decode_tok_s          batch-1 greedy decode: a 128-token random prompt, then
                        128 / (time of generate(128 new) - time of generate(1 new)),
                        so prefill is taken out. Measured after a warm-up.
  throughput_tok_s      batch 64: 64 random prompts x 128 tokens, 128 new tokens
                        each; output tokens / total time of the one generate call.
  weight_bytes          bytes of the model's parameters (tied embeddings once).

The model is `LlamaForCausalLM` built from a `LlamaConfig` with the shapes of
core/src/model/random.rs (PRESETS below mirror it; keep them in step), with
`attn_implementation="sdpa"`, the default dynamic KV cache, eval + no_grad:
plain Hugging Face `generate`, the everyday PyTorch baseline (not vLLM).

Usage:  python3 scripts/gpu_peer.py --out DIR [--quick] [--shapes a,b]
        [--device cuda|cpu] [--prompt-tokens N] [--decode-tokens N] [--batch N]
        [--copy-gib G]
Writes DIR/peer.json after every shape, so a timeout keeps what was measured:
  {"gpu", "torch", "transformers", "copy_bandwidth_gb_s",
   "shapes": {shape: {"decode_tok_s", "throughput_tok_s", "weight_bytes"}}}
A shape that fails (out of memory, an API change) gets an "error" string and
the next shape still runs; the exit status is non-zero when anything failed.
"""

import argparse
import inspect
import json
import os
import sys
import time
import traceback

# The presets of core/src/model/random.rs (only the llama-architecture ones).
_LLAMA3_SCALING = {
    "rope_type": "llama3",
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
PRESETS = {
    # Small; for trying this script on a CPU, not part of the GPU check.
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, rope_scaling=None,
        max_position_embeddings=8192, tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(_LLAMA3_SCALING, factor=32.0),
        max_position_embeddings=131072, tie_word_embeddings=True,
    ),
    "llama-3.1-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(_LLAMA3_SCALING, factor=8.0),
        max_position_embeddings=131072, tie_word_embeddings=False,
    ),
}
GPU_SHAPES = ["llama-3.2-1b", "llama-3.1-8b"]


def log(msg):
    print(f"[peer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def llama_config(transformers, shape):
    """A LlamaConfig of the preset, for transformers 4.x (rope_theta +
    rope_scaling) and 5.x (rope_parameters) alike; no bos/eos/pad so that
    generation never stops early."""
    p = dict(PRESETS[shape])
    rope_theta = p.pop("rope_theta")
    rope_scaling = p.pop("rope_scaling")
    params = inspect.signature(transformers.LlamaConfig.__init__).parameters
    if "rope_parameters" in params:
        rope = {"rope_type": "default"} if rope_scaling is None else dict(rope_scaling)
        rope["rope_theta"] = rope_theta
        p["rope_parameters"] = rope
    else:
        p["rope_theta"] = rope_theta
        p["rope_scaling"] = rope_scaling
    cfg = transformers.LlamaConfig(
        **p,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=True,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def build_model(torch, transformers, shape, device):
    """Random bf16 weights created directly on the device (no CPU init)."""
    cfg = llama_config(transformers, shape)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = transformers.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("sdpa")
        except Exception:  # older/newer API: the config already says sdpa
            pass
    return model


def sync(torch, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(torch, device, gib):
    """Best of 10 dst.copy_(src) of a `gib` GiB bf16 tensor: 2 x bytes / time."""
    n = int(gib * (1 << 30)) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    sync(torch, device)
    best = float("inf")
    for _ in range(10):
        sync(torch, device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(torch, device)
        best = min(best, time.perf_counter() - t0)
    nbytes = n * 2
    del src, dst
    return 2.0 * nbytes / best / 1e9


def timed_generate(torch, model, gen_cfg_cls, ids, new_tokens, device):
    """Seconds for one greedy generate of exactly `new_tokens` tokens."""
    cfg = gen_cfg_cls(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
        use_cache=True,
    )
    mask = torch.ones_like(ids)
    sync(torch, device)
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    sync(torch, device)
    dt = time.perf_counter() - t0
    got = out.shape[1] - ids.shape[1]
    if got != new_tokens:
        raise RuntimeError(f"generate made {got} tokens, asked for {new_tokens}")
    return dt


def measure_shape(torch, transformers, shape, args, res, save):
    """Fills `res` and saves as it goes, so a failure or a timeout keeps what was
    measured before it."""
    device = args.device
    t_build = time.perf_counter()
    model = build_model(torch, transformers, shape, device)
    sync(torch, device)
    res["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    res["build_s"] = round(time.perf_counter() - t_build, 2)
    res["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    log(f"{shape}: built in {res['build_s']} s, {res['weight_bytes'] / 1e9:.2f} GB of bf16 weights")
    save()
    gen_cls = transformers.GenerationConfig
    g = torch.Generator(device=device).manual_seed(0)
    vocab = PRESETS[shape]["vocab_size"]
    P, N, B = args.prompt_tokens, args.decode_tokens, args.batch
    res.update(prompt_tokens=P, decode_tokens=N, batch=B)
    try:
        with torch.no_grad():
            # (a) batch-1 decode, prefill taken out by the 1-token run.
            ids1 = torch.randint(0, vocab, (1, P), generator=g, device=device)
            timed_generate(torch, model, gen_cls, ids1, min(8, N), device)  # warm-up
            t1 = min(timed_generate(torch, model, gen_cls, ids1, 1, device) for _ in range(3))
            tn = min(timed_generate(torch, model, gen_cls, ids1, N, device) for _ in range(2))
            res["decode_s"] = tn
            res["prefill_plus_1_s"] = t1
            res["decode_tok_s"] = N / (tn - t1) if tn > t1 else None
            log(f"{shape}: batch-1 decode {res['decode_tok_s'] or 0:.1f} tok/s "
                f"(generate({N}) {tn:.3f} s, generate(1) {t1:.3f} s)")
            save()
            # (b) batch-B throughput.
            idsb = torch.randint(0, vocab, (B, P), generator=g, device=device)
            timed_generate(torch, model, gen_cls, idsb[:, : min(P, 16)], 2, device)  # warm-up
            tb = timed_generate(torch, model, gen_cls, idsb, N, device)
            res["throughput_s"] = tb
            res["throughput_tok_s"] = B * N / tb
            log(f"{shape}: batch-{B} throughput {res['throughput_tok_s']:.1f} output tok/s ({tb:.2f} s)")
    finally:
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out")
    ap.add_argument("--quick", action="store_true", help="only llama-3.2-1b")
    ap.add_argument("--shapes", help="comma-separated presets (default: the GPU shapes)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--copy-gib", type=float, default=2.0)
    args = ap.parse_args()

    shapes = args.shapes.split(",") if args.shapes else (GPU_SHAPES[:1] if args.quick else GPU_SHAPES)
    for s in shapes:
        if s not in PRESETS:
            sys.exit(f"gpu_peer: unknown shape {s} (known: {', '.join(PRESETS)})")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "peer.json")
    result = {"gpu": None, "torch": None, "transformers": None,
              "copy_bandwidth_gb_s": None, "shapes": {}, "errors": []}

    def save():
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, path)

    try:
        import torch
        import transformers
    except Exception as e:  # no torch: the report shows the peer as failed
        result["errors"].append(f"import: {e}")
        save()
        log(f"cannot import torch/transformers: {e}")
        return 1
    result["torch"] = torch.__version__
    result["transformers"] = transformers.__version__
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            result["errors"].append("torch.cuda.is_available() is False")
            save()
            log("torch sees no CUDA device")
            return 1
        result["gpu"] = torch.cuda.get_device_name()
    else:
        result["gpu"] = f"({args.device})"
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, device {result['gpu']}")
    save()

    failed = False
    try:
        result["copy_gib"] = args.copy_gib
        result["copy_bandwidth_gb_s"] = copy_bandwidth(torch, args.device, args.copy_gib)
        log(f"copy bandwidth {result['copy_bandwidth_gb_s']:.1f} GB/s (read + write)")
    except Exception as e:
        failed = True
        result["errors"].append(f"copy bandwidth: {e}")
        log(f"copy bandwidth failed: {e}")
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    save()

    for shape in shapes:
        res = result["shapes"][shape] = {}
        try:
            measure_shape(torch, transformers, shape, args, res, save)
        except Exception as e:
            failed = True
            traceback.print_exc()
            res["error"] = f"{type(e).__name__}: {e}"
            result["errors"].append(f"{shape}: {type(e).__name__}: {e}")
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        save()
    log(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
