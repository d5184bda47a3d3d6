#!/usr/bin/env python
"""`tp`'s row slices per rank, timed: is "slice rows only without autograd" the right rule?

`placements/styles/tp.py RowSlicedWeights` runs a tp Linear step on ROW_SLICES_PER_RANK x P
slices of the rows (each slice's Partial A-matrix reduce-scattered before the next), so the
transient full-size Partial is 1/(16 P) of one; under autograd (alpha / beta steps) it runs
unsliced (SLICE_WITH_AUTOGRAD = False). This script bounds the same model under `--plan tp` with
1 and with 16 slices per rank, for CROWN (no autograd) and alpha-CROWN (autograd: 16 slices
forced through SLICE_WITH_AUTOGRAD), and records per rank the live-tensor peak
(`dtensor_verify.memory.measure`, deterministic) and the median wall time of `--repeats` calls
after a warm-up. Rank 0 appends one JSON line per cell to OUT/results.jsonl; `report` writes
OUT/tp_slices.csv and OUT/tp_slices.md.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        scripts/bench_memory_tp_slices.py run --out docs/memory/tp_slices --widths 1024
    python scripts/bench_memory_tp_slices.py report --out docs/memory/tp_slices

Models: `784 -> depth x width -> 10` ReLU MLPs (scripts/bench_memory.py wide_mlp), box radius
0.01 around a seeded point. (`tp` shards Linear layers only; a conv under `tp` is refused, so a
conv net such as TinyYOLO has no tp step to slice.)
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
SLICES = (1, 16)
MIB = 1024 * 1024


def _cell(template, box, method: str, slices: int, mesh, repeats: int, alpha_iters: int) -> dict:
    """One (method, slices) cell on this rank: peak bytes, median seconds, the lower bound."""
    import dtensor_verify as dv
    from dtensor_verify.memory import measure
    from placements import apply_plan
    from placements.styles.tp import RowSlicedWeights

    RowSlicedWeights.ROW_SLICES_PER_RANK = slices
    RowSlicedWeights.SLICE_WITH_AUTOGRAD = slices > 1
    alpha = dv.AlphaOptions(iterations=alpha_iters, patience=alpha_iters)
    m = copy.deepcopy(template)
    apply_plan(m, "tp", mesh)
    m.compute_bounds(*box, method, alpha_options=copy.deepcopy(alpha))          # warm-up
    with measure(m) as rep:
        r = m.compute_bounds(*box, method, alpha_options=copy.deepcopy(alpha))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m.compute_bounds(*box, method, alpha_options=copy.deepcopy(alpha))
        times.append(time.perf_counter() - t0)
    return {"peak_bytes": rep.peak_bytes, "seconds": statistics.median(times), "times": times,
            "lower": r.lower.detach().clone()}


def run(args) -> None:
    import torch.distributed as dist

    import dtensor_verify as dv
    from bench_memory import wide_mlp
    from placements import init_mesh

    torch.set_num_threads(1)
    mesh = init_mesh("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if mesh is not None else (0, 1)
    default = {"crown": 16, "alpha-crown": 1}           # what tp.py does today
    for width in [int(w) for w in args.widths.split(",")]:
        template = dv.load(wide_mlp(width, args.depth), (784,))
        gen = torch.Generator().manual_seed(1)
        centre = torch.rand(1, 784, generator=gen)
        box = (centre - 0.01, centre + 0.01)
        for method in args.methods.split(","):
            cells = {s: _cell(template, box, method, s, mesh, args.repeats, args.alpha_iters) for s in SLICES}
            mine = {s: {k: v for k, v in c.items() if k != "lower"} for s, c in cells.items()}
            diff = float((cells[1]["lower"] - cells[16]["lower"]).abs().max())
            everyone = [None] * world
            if world > 1:
                dist.all_gather_object(everyone, mine)
            else:
                everyone = [mine]
            if rank == 0:
                _append(args.out, width, args, method, world, everyone, diff, default[method])
    if mesh is not None:
        dist.destroy_process_group()


def _append(out: Path, width: int, args, method: str, world: int, everyone: list, diff: float, default: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as f:
        for s in SLICES:
            row = {"model": f"mlp{args.depth}x{width}", "method": method, "P": world, "slices_per_rank": s,
                   "default": s == default, "peak_mib_per_rank": max(e[s]["peak_bytes"] for e in everyone) / MIB,
                   "seconds": max(e[s]["seconds"] for e in everyone), "times_rank0": everyone[0][s]["times"],
                   "max_lower_diff_1_vs_16": diff, "alpha_iters": args.alpha_iters if method == "alpha-crown" else None,
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "load": " ".join(open("/proc/loadavg").read().split()[:3])}
            f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def report(args) -> None:
    rows = [json.loads(ln) for ln in open(args.out / "results.jsonl") if ln.strip()]
    keys = ["model", "method", "P", "slices_per_rank", "default", "peak_mib_per_rank", "seconds",
            "max_lower_diff_1_vs_16", "alpha_iters", "threads", "torch", "load"]
    with open(args.out / "tp_slices.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    base = {(r["model"], r["method"], r["P"]): r for r in rows if r["slices_per_rank"] == 1}
    lines = ["| model | method | P | slices per rank | today's rule | peak MiB/rank | peak vs 1 slice | "
             "median s | time vs 1 slice | max lower-bound diff 1 vs 16 | load |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        b = base[(r["model"], r["method"], r["P"])]
        lines.append(f"| {r['model']} | {r['method']} | {r['P']} | {r['slices_per_rank']} | "
                     f"{'yes' if r['default'] else ''} | {r['peak_mib_per_rank']:.2f} | "
                     f"{r['peak_mib_per_rank'] / b['peak_mib_per_rank']:.3f} | {r['seconds']:.3f} | "
                     f"{r['seconds'] / b['seconds']:.2f} | {r['max_lower_diff_1_vs_16']:.2g} | {r['load']} |")
    (args.out / "tp_slices.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=("run", "report"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--widths", default="1024")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--methods", default="crown,alpha-crown")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--alpha-iters", type=int, default=5)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run(args) if args.cmd == "run" else report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
