#!/usr/bin/env python
"""Bytes one branch-and-bound child takes while it is bounded: the batch rule's estimate
(`bab/budget.bytes_per_domain`) next to what one beta-CROWN call on a batch of children holds at its
peak (the CPU live-tensor meter, `memory.measure`), for batches of a few sizes.

    scripts/bench_bab_domain_bytes.py --onnx M --vnnlib P [--batches 1 2 4] [--iterations 2] [--csv OUT]

The root's intermediate bounds are IBP's (a quick stand-in for CROWN's: looser, so at least as many
unstable neurons and so at least as many bytes in the sweeps as a real run); the children are copies
of the root (their number is what the memory follows, not their splits). The measured bytes per child
are the slope of the peak over the batch (the difference between the largest and the smallest batch,
divided by the difference in children), which leaves out what a batch of any size holds (weights,
one-off buffers). Writes the table to stdout and, with --csv, one row per batch size.

Why: on a shared GPU, TinyYOLO's branch and bound ran batches of 1-3 parents (docs/BENCHMARKS.md,
session 7). The estimate, about 98 MB a child there, sets the batch on the device.
"""
from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--vnnlib", required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--iterations", type=int, default=2, help="beta-CROWN steps per call")
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import dtensor_verify as dv
    from dtensor_verify.bab.budget import bytes_per_domain
    from dtensor_verify.bab.problem import BabProblem
    from dtensor_verify.bab.roots import RootState, make_roots
    from dtensor_verify.memory import measure
    from dtensor_verify.methods.beta_crown import BetaOptions, beta_crown
    from dtensor_verify.methods.ibp import ibp
    from dtensor_verify.specs import read_vnnlib

    model = dv.load(args.onnx)
    prop = read_vnnlib(args.vnnlib, n_inputs=model.n_inputs, n_outputs=model.n_outputs)
    region = prop.regions[0]
    disjunct = region.disjuncts[0]
    lo = torch.as_tensor(region.lower, dtype=torch.float32).reshape(1, *model.input_shape)
    hi = torch.as_tensor(region.upper, dtype=torch.float32).reshape(1, *model.input_shape)
    C = torch.as_tensor(disjunct.C, dtype=torch.float32).unsqueeze(0)
    d = torch.as_tensor(disjunct.d, dtype=torch.float32).unsqueeze(0)
    mask = torch.ones(d.shape, dtype=torch.bool)
    problem = BabProblem(model.graph, model.layout, model.forward, C, d, mask, lo, hi)
    t = time.perf_counter()
    with torch.no_grad():
        bounds = ibp(model.graph, (lo, hi))
    pre = model.graph.preactivation_nodes()
    roots = make_roots(problem, [0], [RootState({n: (bounds[n][0][0], bounds[n][1][0]) for n in pre})],
                       [torch.full((C.shape[1],), -1.0)])
    print(f"# {Path(args.onnx).name} {Path(args.vnnlib).name}: K = {C.shape[1]} rows, IBP root in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    estimate = bytes_per_domain(problem)
    rows = []
    for n in args.batches:
        kids = roots.index(torch.zeros(n, dtype=torch.long))
        opts = BetaOptions(iterations=args.iterations)
        t = time.perf_counter()
        with measure(model, torch.device("cpu")) as rep:
            beta_crown(problem.graph, problem.bounds_of(kids), C[kids.pair], d[kids.pair], mask[kids.pair],
                       kids.alphas, kids.betas, kids.signs, problem.layout, opts)
        rows.append({"children": n, "peak_bytes": rep.peak_bytes - rep.baseline_bytes,
                     "seconds": round(time.perf_counter() - t, 2), "estimate_per_child": estimate})
        print(f"  batch {n}: peak {rows[-1]['peak_bytes'] / 2**20:.1f} MiB above the baseline, "
              f"{rows[-1]['seconds']} s", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        per_child = (b["peak_bytes"] - a["peak_bytes"]) / (b["children"] - a["children"])
    else:
        per_child = rows[0]["peak_bytes"] / rows[0]["children"]
    print()
    print("| children | peak MiB above baseline | seconds |")
    print("|---:|---:|---:|")
    for r in rows:
        print(f"| {r['children']} | {r['peak_bytes'] / 2**20:.1f} | {r['seconds']} |")
    print()
    print(f"measured per child (slope): {per_child / 2**20:.1f} MiB; estimate (bytes_per_domain): "
          f"{estimate / 2**20:.1f} MiB; estimate / measured = {estimate / max(per_child, 1):.2f}")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}, CPU, one thread, "
          f"{args.iterations} beta-CROWN step(s) a call; `{' '.join(sys.argv)}`")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[*rows[0], "measured_per_child"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, "measured_per_child": int(per_child)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
