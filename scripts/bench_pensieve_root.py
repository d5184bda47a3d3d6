"""nn4sys pensieve: CROWN's margin at the root with and without the ratio boxes
(`methods/ratio_bounds.py`: averages by normalised weights `V (p / sum p) + b` bounded by
Dinkelbach's sign test), per instance, in one process. Prints a table and writes CSV (instance,
margin without / with, CPU seconds of each CROWN call, proved without / with).

    python scripts/bench_pensieve_root.py --out OUT.csv [--match pensieve_big_parallel] [--limit N]

The margin is the lower bound of the property's best row minus its offset (> 0: proved, unsat).
"""
from __future__ import annotations

import argparse
import csv
import gzip  # noqa: F401 (the loaders read .gz themselves)
import importlib
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("BENCH_DIR", ROOT.parent / "shared" / "benchmarks")) / "nn4sys_2023"
FIELDS = ["onnx", "vnnlib", "margin_without", "margin_with", "cpu_without", "cpu_with", "proved_without",
          "proved_with"]


def instances(match: str, limit: int | None):
    rows = []
    with open(BENCH / "instances.csv") as fh:
        for onnx, vnnlib, _ in csv.reader(fh):
            if match in onnx:
                rows.append((onnx, vnnlib))
    return rows[:limit] if limit else rows


def _path(rel: str) -> Path:
    p = BENCH / rel
    return p if p.exists() else BENCH / (rel + ".gz")


def root_margin(model, prop, ratio: bool) -> tuple[float, float]:
    """(worst margin over regions and disjuncts of the best row, CPU seconds) of plain CROWN."""
    from dtensor_verify.margin import margin
    from dtensor_verify.methods.crown import crown

    crown_mod = importlib.import_module("dtensor_verify.methods.crown")
    real = crown_mod.ratio_sites
    if not ratio:
        crown_mod.ratio_sites = lambda *a, **k: {}
    t0, worst = time.process_time(), float("inf")
    try:
        for region in prop.regions:
            lo = torch.as_tensor(region.lower).float().reshape(1, *model.input_shape)
            hi = torch.as_tensor(region.upper).float().reshape(1, *model.input_shape)
            for dis in region.disjuncts:
                C, d = torch.as_tensor(dis.C).float(), torch.as_tensor(dis.d).float()
                lower, _, _ = crown(model.graph, (lo, hi), C.unsqueeze(0), want_upper=False)
                mask = torch.ones_like(d, dtype=torch.bool).unsqueeze(0)
                worst = min(worst, float(margin(lower, d.unsqueeze(0), mask)))
    finally:
        crown_mod.ratio_sites = real
    return worst, time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--match", default="pensieve_big_parallel")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import dtensor_verify as dv
    from dtensor_verify.specs import read_vnnlib

    rows, models = [], {}
    for onnx, vnnlib in instances(args.match, args.limit):
        model = models.get(onnx) or models.setdefault(onnx, dv.load(str(_path(onnx))))
        prop = read_vnnlib(str(_path(vnnlib)))
        m0, c0 = root_margin(model, prop, ratio=False)
        m1, c1 = root_margin(model, prop, ratio=True)
        rows.append(dict(onnx=Path(onnx).name, vnnlib=Path(vnnlib).name, margin_without=round(m0, 4),
                         margin_with=round(m1, 4), cpu_without=round(c0, 3), cpu_with=round(c1, 3),
                         proved_without=m0 > 0, proved_with=m1 > 0))
        print(" ".join(f"{k}={rows[-1][k]}" for k in FIELDS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    n = len(rows)
    print(f"\n| instances | proved by CROWN without | with | worst margin without | with | CPU s without | with |")
    print("|---|---|---|---|---|---|---|")
    if rows:
        print(f"| {n} | {sum(r['proved_without'] for r in rows)} | {sum(r['proved_with'] for r in rows)} "
              f"| {min(r['margin_without'] for r in rows)} | {min(r['margin_with'] for r in rows)} "
              f"| {sum(r['cpu_without'] for r in rows):.1f} | {sum(r['cpu_with'] for r in rows):.1f} |")
    print(f"(torch {torch.__version__}, 1 thread, CPU; load {os.getloadavg()[0]:.1f}; rows in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
