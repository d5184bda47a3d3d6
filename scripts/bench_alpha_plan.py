"""Which intermediate start nodes alpha-CROWN optimises on the vit_2023 models at a given share of
an 80 GB device: before (per-row slopes only: `alpha_budget.fit_starts`) and after (shared slopes
where per-row ones do not fit: `alpha_budget.plan_starts`). No bound is computed: the plan comes
from the working-set estimate (docs/ALPHA_SPEED.md). Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_alpha_plan.py --out plan.csv [--models ibp_3_3_8,pgd_2_3_16]
        [--shares 1,2,4,8] [--device-gib 80]

`with_slopes`: start nodes with an optimisable op upstream (the others' bounds cannot move).
The rows of each start node are all its neurons (an upper bound: the pipeline sweeps only those
IBP leaves unstable, and every neuron of a node that feeds a softmax's Exp); 9 output rows, batch 1.
"""
from __future__ import annotations

import argparse
import csv
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "..", "shared", "benchmarks", "vit_2023")
FIELDS = ["model", "share", "budget_gb", "start_nodes", "with_slopes", "before_optimised", "before_with_slopes",
          "before_gb", "after_optimised",
          "after_per_row", "after_shared", "after_gb"]


def plan_rows(model: str, shares: list[int], device_bytes: int) -> list[dict]:
    import torch

    import dtensor_verify as dv
    from dtensor_verify.methods import alpha_budget

    g = dv.load(os.path.join(BENCH, "onnx", model + ".onnx.gz")).graph
    rows = {n: range(g[n].numel) for n in g.preactivation_nodes() if not g.affine_from_input(n)}
    out = []
    for share in shares:
        free = (lambda d, share=share: device_bytes // share)
        kept, before, budget = alpha_budget.fit_starts(g, rows, 9, 1, torch.device("cuda"), free_bytes=free)
        plan = alpha_budget.plan_starts(g, rows, 9, 1, torch.device("cuda"), free_bytes=free)
        useful = {c.name for c in alpha_budget.start_costs(g, rows, 9, 1) if c.slopes > 0}
        out.append({"model": model, "share": f"1/{share}", "budget_gb": round(budget / 1e9, 2),
                    "start_nodes": len(rows), "with_slopes": len(useful & set(rows)), "before_optimised": len(kept),
                    "before_with_slopes": len(useful & set(kept)), "before_gb": round(before / 1e9, 2),
                    "after_optimised": len(plan.names), "after_per_row": len(plan.names) - len(plan.shared),
                    "after_shared": len(plan.shared), "after_gb": round(plan.bytes / 1e9, 2)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="alpha_plan.csv")
    ap.add_argument("--models", default="ibp_3_3_8,pgd_2_3_16")
    ap.add_argument("--shares", default="1,2,4,8")
    ap.add_argument("--device-gib", type=float, default=80.0)
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        rows += plan_rows(model, [int(s) for s in args.shares.split(",")], int(args.device_gib * (1 << 30)))
    fmt = "{:<11} {:>5} {:>9} {:>6} {:>7} {:>12} {:>13} {:>9} {:>11} {:>7} {:>6} {:>8}"
    print(fmt.format("model", "share", "budget_GB", "starts", "slopes", "before: opt.", "(with slopes)",
                     "before_GB", "after: opt.", "per-row", "shared", "after_GB"))
    for r in rows:
        print(fmt.format(*(str(r[k]) for k in FIELDS)))
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}; device {args.device_gib:g} GiB, FRACTION 0.5 of each share")


if __name__ == "__main__":
    main()
