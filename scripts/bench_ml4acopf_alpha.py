#!/usr/bin/env python
"""alpha-CROWN's margin per step on one ml4acopf instance, for a few learning rates (issue 21).

The thermal-limit properties (`*_prop2`) stay open after CROWN (margin -122.6 on the 118-bus
linear-nonresidual model); this shows how far alpha-CROWN's optimisation alone takes the margin
(min over the disjunct's rows of lower(C y) - d; > 0 proves it) and how fast, per step:

    PYTHONPATH=. nice -n 10 python scripts/bench_ml4acopf_alpha.py \\
        --onnx ../shared/benchmarks/ml4acopf_2024/onnx/118_ieee_ml4acopf-linear-nonresidual.onnx.gz \\
        --vnnlib ../shared/benchmarks/ml4acopf_2024/vnnlib/118_ieee_prop2.vnnlib \\
        --iterations 60 --lr 0.1 0.5 --csv out.csv

Prints a table (lr, step, seconds, margin) every `--every` steps and writes every step as CSV, with
the conditions (threads, torch, device, load average).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _problem(onnx: str, vnnlib: str):
    import torch

    from dtensor_verify.cli_common import load_model
    from dtensor_verify.specs import read_vnnlib

    model = load_model(onnx, torch.device("cpu"))
    prop = read_vnnlib(vnnlib, n_inputs=model.n_inputs, n_outputs=model.n_outputs)
    region = prop.regions[0]
    disjunct = region.disjuncts[0]
    lo = torch.as_tensor(region.lower, dtype=torch.float32).reshape(1, -1)
    hi = torch.as_tensor(region.upper, dtype=torch.float32).reshape(1, -1)
    box = model.check_box(lo, hi)
    C = torch.as_tensor(disjunct.C, dtype=torch.float32).unsqueeze(0)
    d = torch.as_tensor(disjunct.d, dtype=torch.float32).unsqueeze(0)
    return model, box, C, d


def _trajectory(model, box, C, d, lr: float, iterations: int, warmup: int) -> list[dict]:
    from dtensor_verify.methods.alpha_crown import AlphaOptions, alpha_crown

    rows, t0 = [], time.perf_counter()

    def on_step(it, score):
        if score is not None:
            rows.append({"lr": lr, "step": it, "seconds": round(time.perf_counter() - t0, 3),
                         "score": float(score)})
        return False
    opts = AlphaOptions(iterations=iterations, lr=lr, warmup=warmup, patience=10 ** 6)
    res = alpha_crown(model.graph, box, C, model.layout, opts, want_upper=False, on_step=on_step,
                      stop_above=d)
    margin = float((res.lower - d).min())
    crown = float((res.crown_lower - d).min())
    rows.append({"lr": lr, "step": res.iterations, "seconds": round(time.perf_counter() - t0, 3),
                 "score": margin, "final": 1})
    for r in rows:
        r.setdefault("final", 0)
        r["crown_margin"] = crown
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--vnnlib", required=True)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--lr", type=float, nargs="+", default=[0.1])
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--csv", required=True, type=Path)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    model, box, C, d = _problem(args.onnx, args.vnnlib)
    rows = []
    for lr in args.lr:
        rows += _trajectory(model, box, C, d, lr, args.iterations, args.warmup)
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["lr", "step", "seconds", "score", "final", "crown_margin"])
        w.writeheader()
        w.writerows(rows)
    print(f"torch {torch.__version__}, threads 1, device cpu, load average {os.getloadavg()[0]:.2f}")
    print("score: the sum of the rows' best lower bounds of C y (per step); final: min of lower(C y) - d")
    print(f"{'lr':>6} {'step':>5} {'seconds':>8} {'value':>12}")
    for r in rows:
        if r["final"] or r["step"] % args.every == 0:
            tag = " (final margin)" if r["final"] else ""
            print(f"{r['lr']:>6g} {r['step']:>5} {r['seconds']:>8.1f} {r['score']:>12.4f}{tag}")
    print(f"CROWN margin: {rows[0]['crown_margin']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
