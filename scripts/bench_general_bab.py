#!/usr/bin/env python
"""General branch and bound on the non-ReLU networks of ../shared/benchmarks: before (branch and
bound skipped, what main did on networks with sigmoid / tanh / sin / products) vs after (general
splits, or input splits when few inputs are perturbed), side by side, same limits.

    nice -n 10 python scripts/bench_general_bab.py --bench dist_shift_2023 ml4acopf_2024 \\
        --scale 0.1 --per-bench 4 --out /tmp/general_bab

For each benchmark, the instances whose network has a nonlinear op other than ReLU (the first
`--per-bench` of them, in instances.csv order; all with 0) are run twice with the same time limit
(VNN-COMP timeout x `--scale`): `verify_instance(..., bab=False)` (before) and with branch and
bound (after). Prints a Markdown table (per benchmark: instances, sat / unsat / other before and
after, the instances that branch and bound decided, seconds) and writes OUT/general_bab.csv (one
row per instance and side) and OUT/general_bab.md. The first instance of each benchmark is run once
first (5 s, not counted) so that neither side pays the first call's start-up. Conditions (threads, torch, device, load) are
printed with the table.
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
BENCH = ROOT.parent / "shared" / "benchmarks"
DEFAULT = ("dist_shift_2023", "ml4acopf_2024", "reach_prob_density", "nn4sys_2023", "linearizenn")


def _instances(folder: Path):
    from dtensor_verify.benchmark import read_instances

    csv_path = folder / "instances_staged.csv"
    csv_path = csv_path if csv_path.exists() else folder / "instances.csv"
    for inst in read_instances(csv_path):
        onnx, vnn = folder / inst.onnx, folder / inst.vnnlib
        onnx = onnx if onnx.exists() else Path(str(onnx) + ".gz")
        vnn = vnn if vnn.exists() else Path(str(vnn) + ".gz")
        yield onnx, vnn, inst.timeout


def _general(model) -> bool:
    from dtensor_verify.bab.split_kinds import has_general

    return has_general(model.graph)


def _run(model, onnx, vnn, limit, bab: bool, split: str = "auto") -> dict:
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance

    t0 = time.perf_counter()
    prop = read_vnnlib(str(vnn), n_inputs=model.n_inputs, n_outputs=model.n_outputs)
    from dtensor_verify.bab import BabOptions

    res = verify_instance(model, prop, str(onnx), limit, bab=bab, bab_options=BabOptions(split=split))
    stats = res.bounds.get("bab") or {}
    return {"verdict": res.verdict, "decided_by": res.decided_by or "", "seconds": time.perf_counter() - t0,
            "bab_split": stats.get("split", ""), "bab_domains": stats.get("domains_visited", ""),
            "bab_reason": stats.get("reason", "")}


def _bench_rows(name: str, args) -> list[dict]:
    from dtensor_verify.cli_common import load_model, one_line, user_errors

    rows, models, taken = [], {}, 0
    for onnx, vnn, timeout in _instances(BENCH / name):
        if args.per_bench and taken >= args.per_bench:
            break
        if str(onnx) not in models:
            try:
                models[str(onnx)] = load_model(str(onnx), None)
            except user_errors() as exc:
                models[str(onnx)] = one_line(exc)
        model = models[str(onnx)]
        if isinstance(model, str) or not _general(model):
            if isinstance(model, str):
                print(f"{name}: {onnx.name}: does not load ({model[:120]})", file=sys.stderr)
            continue
        taken += 1
        limit = timeout * args.scale
        if taken == 1:      # warm-up (first-call imports and compilation), not counted
            _run(model, onnx, vnn, min(limit, 5.0), False)
        for side, bab in (("before", False), ("after", True)):
            try:
                row = _run(model, onnx, vnn, limit, bab, args.split)
            except user_errors() as exc:
                row = {"verdict": "error", "decided_by": "", "seconds": 0.0, "bab_reason": one_line(exc)}
            row.update(benchmark=name, onnx=onnx.name, vnnlib=vnn.name, side=side, limit=limit)
            rows.append(row)
            print(f"{name} {onnx.name} {vnn.name} {side}: {row['verdict']} ({row['seconds']:.1f} s) "
                  f"{row.get('decided_by', '')} {row.get('bab_domains', '')} {row.get('bab_reason', '')}",
                  file=sys.stderr)
    return rows


def _table(rows: list[dict]) -> str:
    out = ["| benchmark | instances | before sat / unsat / other | after sat / unsat / other | decided by BaB "
           "| before s | after s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["benchmark"] for r in rows):
        mine = [r for r in rows if r["benchmark"] == name]
        cells = []
        for side in ("before", "after"):
            rs = [r for r in mine if r["side"] == side]
            sat = sum(r["verdict"] == "sat" for r in rs)
            unsat = sum(r["verdict"] == "unsat" for r in rs)
            cells.append((f"{sat} / {unsat} / {len(rs) - sat - unsat}", sum(r["seconds"] for r in rs)))
        by_bab = sum(r["side"] == "after" and r["decided_by"] == "bab" for r in mine)
        n = len(mine) // 2
        out.append(f"| {name} | {n} | {cells[0][0]} | {cells[1][0]} | {by_bab} | {cells[0][1]:.0f} | {cells[1][1]:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", nargs="+", default=list(DEFAULT))
    ap.add_argument("--scale", type=float, default=0.1, help="fraction of the VNN-COMP timeout")
    ap.add_argument("--per-bench", type=int, default=4, help="non-ReLU instances per benchmark (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", default="auto", help="the after side's BabOptions.split: auto | relu | input")
    ap.add_argument("--out", default="/tmp/general_bab")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.bench:
        rows += _bench_rows(name, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["benchmark", "onnx", "vnnlib", "side", "limit", "verdict", "decided_by", "seconds", "bab_split",
            "bab_domains", "bab_reason"]
    with open(out / "general_bab.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    cond = (f"torch {torch.__version__}, {args.threads} thread(s), cpu, scale {args.scale}, split {args.split}, "
            f"load {os.getloadavg()[0]:.1f}")
    table = _table(rows) + f"\n\n{cond}\n"
    (out / "general_bab.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
