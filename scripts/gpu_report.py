#!/usr/bin/env python3
"""Assembles the results of `scripts/gpu-check` into one table and one verdict.

Usage:  python3 scripts/gpu_report.py OUT_DIR [--quick | --shapes a,b] [--device cuda]

Reads (each optional; a missing or broken file is a failed step, shown as
"failed" / "-", never a traceback):
  conformance.json             `tessera conformance --json`: {"device", "backend",
                               "checks": [{"layer", "name", "status": pass|fail|skip, ...}]}
  decode-<shape>.json          `tessera bench decode --json`: "read_bandwidth_gb_s" and
                               rows[dtype=bf16]: "decode_tok_s", "bytes_per_token",
                               "fraction_of_bound"
  throughput-<shape>.json      `tessera bench throughput --json`: "output_tokens_per_s"
  peer.json                    scripts/gpu_peer.py: "copy_bandwidth_gb_s",
                               shapes[shape]: "decode_tok_s", "throughput_tok_s"
  steps.tsv                    written by gpu-check: name, status, exit code, seconds, limit

The figures:
  tessera tok/s    decode b=1: tessera's batch-1 decode tokens/s (prefill excluded);
                   throughput b=64: output tokens/s of 64 prompts x (128 in, 128 out).
  peer tok/s       the same measured with PyTorch + transformers (HF generate, sdpa).
  tessera/peer     the ratio of the two (> 1: tessera is faster).
  % HBM bound      decode rows only: tessera tok/s x bytes read per token (tessera's
                   bytes_per_token: weights + KV cache) / the copy bandwidth torch
                   measured (2 x bytes / time of a 2 GiB device copy). 100% would be
                   reading every weight once per token at copy speed.
  tessera bw       tessera's own measured device read bandwidth (read_bandwidth_gb_s),
                   and tessera's own fraction of bound against it, for comparison.

Verdict ("pass" in OUT_DIR/gpu-check.json): conformance passed (its step exited 0
where steps.tsv tells, no check failed and there was at least one) AND the
llama-3.1-8b batch-1 decode reaches >= 75% of the HBM bound. With --quick (or
--shapes without llama-3.1-8b) the bandwidth part is reported but not judged. Exit status 0 on pass, 1 if not.
Standard library only.
"""

import argparse
import json
import os
import sys

SHAPES = ["llama-3.2-1b", "llama-3.1-8b"]
VERDICT_SHAPE = "llama-3.1-8b"
BOUND_FRACTION = 0.75


def load_json(path):
    """The parsed file, or (None, why) when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as e:
        return None, f"unreadable ({e})"


def num(x):
    """x as a float when it is a finite number, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


def fmt(x, spec="{:.1f}", missing="-"):
    return missing if x is None else spec.format(x)


def read_steps(out):
    """steps.tsv -> {name: {"status", "rc", "seconds", "limit_s"}} (empty when absent)."""
    steps = {}
    try:
        with open(os.path.join(out, "steps.tsv")) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 5 or parts[0] == "step":
                    continue
                name, status, rc, secs, limit = parts[:5]
                steps[name] = {
                    "status": status,
                    "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                    "seconds": num(float(secs)) if secs.replace(".", "", 1).isdigit() else None,
                    "limit_s": int(limit) if limit.isdigit() else None,
                }
    except OSError:
        pass
    return steps


def conformance_summary(out, steps):
    data, why = load_json(os.path.join(out, "conformance.json"))
    step = steps.get("conformance")
    s = {"passed": None, "failed": None, "skipped": None, "total": None,
         "by_layer": {}, "failed_checks": [], "exit_status": step["rc"] if step else None,
         "step_status": step["status"] if step else None, "pass": False, "note": None}
    if data is None or not isinstance(data.get("checks"), list):
        s["note"] = f"conformance.json {why or 'has no checks list'}"
        return s
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for c in data["checks"]:
        if not isinstance(c, dict):
            continue
        st = str(c.get("status", "")).lower()
        layer = str(c.get("layer", "?"))
        bucket = s["by_layer"].setdefault(layer, {"pass": 0, "fail": 0, "skip": 0})
        if st in counts:
            counts[st] += 1
            bucket[st] += 1
        else:  # an unknown status counts as a failure
            counts["fail"] += 1
            bucket["fail"] += 1
        if st != "pass" and st != "skip":
            s["failed_checks"].append(
                " ".join(str(c.get(k, "")) for k in ("layer", "name", "dtype", "group")).strip()
                + (f": {c['detail']}" if c.get("detail") else ""))
    s.update(passed=counts["pass"], failed=counts["fail"], skipped=counts["skip"],
             total=sum(counts.values()), device=data.get("device"), backend=data.get("backend"))
    exit_ok = step is None or step["rc"] == 0
    s["pass"] = exit_ok and counts["fail"] == 0 and counts["pass"] > 0
    if not exit_ok:
        s["note"] = f"conformance exited {step['status']} (rc {step['rc']})"
    return s


def bf16_row(decode):
    """The bf16 row of a `bench decode` JSON (or its only row)."""
    rows = decode.get("rows") if isinstance(decode, dict) else None
    if not isinstance(rows, list):
        return {}
    rows = [r for r in rows if isinstance(r, dict)]
    for r in rows:
        if str(r.get("dtype", "")).lower() == "bf16":
            return r
    return rows[0] if len(rows) == 1 else {}


def build(out, shapes, quick, device):
    steps = read_steps(out)
    peer, peer_why = load_json(os.path.join(out, "peer.json"))
    peer = peer if isinstance(peer, dict) else {}
    copy_bw = num(peer.get("copy_bandwidth_gb_s"))
    peer_shapes = peer.get("shapes") if isinstance(peer.get("shapes"), dict) else {}
    shapes = list(shapes)
    # A shape measured by anyone (e.g. --shapes on a trial run) is shown too.
    for name in os.listdir(out) if os.path.isdir(out) else []:
        for prefix in ("decode-", "throughput-"):
            if name.startswith(prefix) and name.endswith(".json"):
                shape = name[len(prefix):-5]
                if shape not in shapes:
                    shapes.append(shape)
    for shape in peer_shapes:
        if shape not in shapes:
            shapes.append(shape)

    rows = []
    for shape in shapes:
        pshape = peer_shapes.get(shape) if isinstance(peer_shapes.get(shape), dict) else {}
        dec, dec_why = load_json(os.path.join(out, f"decode-{shape}.json"))
        r = bf16_row(dec)
        t = num(r.get("decode_tok_s"))
        bpt = num(r.get("bytes_per_token"))
        p = num(pshape.get("decode_tok_s"))
        frac = t * bpt / (copy_bw * 1e9) if t is not None and bpt and copy_bw else None
        rows.append({
            "shape": shape, "mode": "decode b=1",
            "tessera_tok_s": t, "peer_tok_s": p,
            "ratio": t / p if t is not None and p else None,
            "bytes_per_token": bpt,
            "fraction_of_hbm_bound": frac,
            "tessera_read_bandwidth_gb_s": num(dec.get("read_bandwidth_gb_s")) if isinstance(dec, dict) else None,
            "tessera_fraction_of_bound": num(r.get("fraction_of_bound")),
            "tessera_weight_bytes": num(r.get("weight_bytes")),
            "peer_weight_bytes": num(pshape.get("weight_bytes")),
            "tessera_status": "ok" if t is not None else f"failed (decode-{shape}.json {dec_why or 'has no bf16 decode_tok_s'})",
            "peer_status": "ok" if p is not None else "failed" + (f" ({pshape['error']})" if pshape.get("error") else ""),
        })
        tp, tp_why = load_json(os.path.join(out, f"throughput-{shape}.json"))
        t = num(tp.get("output_tokens_per_s")) if isinstance(tp, dict) else None
        p = num(pshape.get("throughput_tok_s"))
        rows.append({
            "shape": shape, "mode": "throughput b=64",
            "tessera_tok_s": t, "peer_tok_s": p,
            "ratio": t / p if t is not None and p else None,
            "bytes_per_token": None, "fraction_of_hbm_bound": None,
            "tessera_read_bandwidth_gb_s": None, "tessera_fraction_of_bound": None,
            "tessera_elapsed_s": num(tp.get("elapsed_s")) if isinstance(tp, dict) else None,
            "tessera_status": "ok" if t is not None else f"failed (throughput-{shape}.json {tp_why or 'has no output_tokens_per_s'})",
            "peer_status": "ok" if p is not None else "failed" + (f" ({pshape['error']})" if pshape.get("error") else ""),
        })

    conf = conformance_summary(out, steps)
    reasons = []
    if not conf["pass"]:
        reasons.append("conformance did not pass" + (f": {conf['note']}" if conf["note"] else ""))
    verdict_row = next((r for r in rows if r["shape"] == VERDICT_SHAPE and r["mode"] == "decode b=1"), None)
    if quick:
        bw_ok = None
        bw_note = f"not judged ({VERDICT_SHAPE} not in this run, e.g. --quick)"
    else:
        frac = verdict_row["fraction_of_hbm_bound"] if verdict_row else None
        bw_ok = frac is not None and frac >= BOUND_FRACTION
        if frac is None:
            bw_note = f"{VERDICT_SHAPE} batch-1 decode fraction of bound not measured"
            if copy_bw is None:
                bw_note += " (no torch copy bandwidth)"
        else:
            bw_note = f"{VERDICT_SHAPE} batch-1 decode at {frac:.0%} of the HBM bound (need {BOUND_FRACTION:.0%})"
        if not bw_ok:
            reasons.append(bw_note)
    peer_step = steps.get("peer")
    missing = [f"{r['shape']} {r['mode']}" for r in rows if r["peer_status"] != "ok"]
    if not peer:
        peer_status = f"failed (peer.json {peer_why or 'is not an object'})"
    elif peer.get("errors") or missing or (peer_step and peer_step["status"] != "ok"):
        why = [str(e) for e in peer.get("errors", [])]
        if peer_step and peer_step["status"] != "ok":
            why.insert(0, f"step {peer_step['status']} (rc {peer_step['rc']})")
        if missing:
            why.append("not measured: " + ", ".join(missing))
        peer_status = "failed: " + "; ".join(why)
    else:
        peer_status = "ok"
    failed_steps = [n for n, s in steps.items() if s["status"] != "ok" and n not in ("report", "verdict")]
    return {
        "pass": conf["pass"] and bw_ok is not False,
        "reasons": reasons,
        "bandwidth_criterion": bw_note,
        "bound_fraction_required": BOUND_FRACTION,
        "quick": quick,
        "device": device,
        "gpu": peer.get("gpu"),
        "torch": peer.get("torch"),
        "transformers": peer.get("transformers"),
        "copy_bandwidth_gb_s": copy_bw,
        "copy_gib": num(peer.get("copy_gib")),
        "peer_status": peer_status,
        "conformance": conf,
        "rows": rows,
        "steps": steps,
        "failed_steps": failed_steps,
    }


def print_table(rep):
    head = ["shape", "mode", "tessera tok/s", "peer tok/s", "tessera/peer",
            "% HBM bound", "tessera bw GB/s", "tessera % own bound"]
    lines = []
    for r in rep["rows"]:
        lines.append([
            r["shape"], r["mode"],
            fmt(r["tessera_tok_s"], missing="failed"),
            fmt(r["peer_tok_s"], missing="failed"),
            fmt(r["ratio"], "{:.2f}x"),
            fmt(r["fraction_of_hbm_bound"], "{:.0%}") if r["mode"].startswith("decode") else "",
            fmt(r["tessera_read_bandwidth_gb_s"], "{:.0f}") if r["mode"].startswith("decode") else "",
            fmt(r["tessera_fraction_of_bound"], "{:.0%}") if r["mode"].startswith("decode") else "",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    print("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    for line in lines:
        print("  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w)
                        for i, (x, w) in enumerate(zip(line, widths))))
    print()
    bw = rep["copy_bandwidth_gb_s"]
    print(f"gpu: {rep['gpu'] or '-'}; torch {rep['torch'] or '-'}, transformers {rep['transformers'] or '-'}")
    gib = rep.get("copy_gib") or 2
    print(f"HBM bound = torch copy bandwidth {fmt(bw, '{:.0f}')} GB/s (2 x {gib:g} GiB / best of 10 copies); "
          f"peer: {rep['peer_status']}")
    for r in rep["rows"]:
        for who in ("tessera",):
            if r[f"{who}_status"] != "ok":
                print(f"  {r['shape']} {r['mode']}: {who} {r[f'{who}_status']}")
    c = rep["conformance"]
    if c["total"] is None:
        print(f"conformance: failed ({c['note']})")
    else:
        layers = ", ".join(f"{k} {v['pass']}/{v['fail']}/{v['skip']}" for k, v in sorted(c["by_layer"].items()))
        print(f"conformance: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
              f"({c['total']} checks; pass/fail/skip by layer: {layers}; "
              f"exit status {fmt(c['exit_status'], '{:.0f}')}) -> {'PASS' if c['pass'] else 'FAIL'}")
        for name in c["failed_checks"][:20]:
            print(f"  FAIL {name}")
        if len(c["failed_checks"]) > 20:
            print(f"  ... and {len(c['failed_checks']) - 20} more")
    if rep["failed_steps"]:
        print("failed steps: " + ", ".join(
            f"{n} ({rep['steps'][n]['status']})" for n in rep["failed_steps"]))
    print(f"bandwidth: {rep['bandwidth_criterion']}")
    print(f"verdict: {'PASS' if rep['pass'] else 'FAIL'}"
          + ("" if rep["pass"] else " - " + "; ".join(rep["reasons"])))


def main(argv):
    ap = argparse.ArgumentParser(description="Assembles the results of scripts/gpu-check.")
    ap.add_argument("out", help="the gpu-check output folder ($OUT)")
    ap.add_argument("--quick", action="store_true", help="only llama-3.2-1b was run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", help="comma-separated presets that were run (default: both, or 1B with --quick)")
    a = ap.parse_args(argv)
    out, device = a.out, a.device
    shapes = [s for s in a.shapes.split(",") if s] if a.shapes else (SHAPES[:1] if a.quick else list(SHAPES))
    quick = VERDICT_SHAPE not in shapes
    rep = None
    try:
        rep = build(out, shapes, quick, device)
        print_table(rep)
    except Exception as e:  # a bug here must still leave a verdict behind
        why = f"gpu_report.py error: {type(e).__name__}: {e}"
        print(f"gpu_report: could not assemble the report: {why}")
        if rep is None:
            rep = {"pass": False, "reasons": [why], "quick": quick, "device": device}
        else:
            rep["report_error"] = why
    try:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu-check.json"), "w") as f:
            json.dump(rep, f, indent=2)
        print(f"wrote {os.path.join(out, 'gpu-check.json')}")
    except OSError as e:
        print(f"gpu_report: cannot write gpu-check.json: {e}")
        return 1
    return 0 if rep["pass"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
