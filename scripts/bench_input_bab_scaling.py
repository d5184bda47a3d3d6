#!/usr/bin/env python
"""Input branch and bound over ranks: time to verdict and sub-boxes per second, 1 process vs --mesh 2x1.

    scripts/bench_input_bab_scaling.py --out OUT [--timeout 60] [--bench DIR] [INSTANCE ...]

Each INSTANCE is `ONNX,VNNLIB` relative to --bench (default: acasxu_2023 instances whose one-
process run spends seconds in branch and bound). Every instance runs once on one process and
once under torchrun on 2 processes (`--mesh 2x1`, CPU gloo), one thread per rank, one after the
other, with `dtensor-verify run --bab-split input --json`. Time to verdict = the JSON's `seconds`
(the pipeline's own clock: attack, bounds, branch and bound); sub-boxes per second = sub-boxes
bounded by all workers / seconds in branch and bound. Prints a Markdown table with the 2-process /
1-process ratios and writes OUT/input_bab_scaling.csv and .md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = ROOT.parent.parent / "shared" / "benchmarks" / "acasxu_2023"
DEFAULT = ["onnx/ACASXU_run2a_1_1_batch_2000.onnx.gz,vnnlib/prop_1.vnnlib.gz",
           "onnx/ACASXU_run2a_4_4_batch_2000.onnx.gz,vnnlib/prop_1.vnnlib.gz",
           "onnx/ACASXU_run2a_3_1_batch_2000.onnx.gz,vnnlib/prop_3.vnnlib.gz"]


def run_one(bench: Path, onnx: str, vnnlib: str, procs: int, timeout: float, out: Path, tag: str) -> dict:
    res, js = out / f"{tag}.txt", out / f"{tag}.json"
    args = ["run", "--onnx", str(bench / onnx), "--vnnlib", str(bench / vnnlib), "--results", str(res),
            "--timeout", str(timeout), "--json", str(js), "--bab-split", "input", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if procs == 1:
        cmd = [sys.executable, "-m", "dtensor_verify", "--threads", "1", *args]
    else:
        cmd = [sys.executable, "-m", "dtensor_verify.launch", "--standalone", "--nproc-per-node", str(procs),
               "-m", "dtensor_verify", "--threads", "1", *args, "--mesh", f"{procs}x1"]
    subprocess.run(cmd, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=3 * timeout + 120)
    data = json.loads(js.read_text()) if js.exists() else {}
    bab = data.get("bounds", {}).get("bab", {})
    boxes = bab.get("domains_visited_all_workers", bab.get("domains_visited", 0)) or 0
    secs = bab.get("seconds") or 0.0
    return {"verdict": data.get("verdict", "error"), "seconds": data.get("seconds", float("nan")),
            "bab_seconds": secs, "subboxes": boxes, "subboxes_per_s": boxes / secs if secs else 0.0,
            "workers": bab.get("workers", ""),
            # before branch and bound: the attacks and the bound stages (alpha-CROWN spread over dp)
            "pre_bab_seconds": data.get("seconds", float("nan")) - secs,
            "alpha_seconds": data.get("bounds", {}).get("alpha-crown", {}).get("seconds", float("nan"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("instances", nargs="*", default=DEFAULT)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, inst in enumerate(args.instances):
        onnx, vnnlib = inst.split(",")
        one = run_one(args.bench, onnx, vnnlib, 1, args.timeout, args.out, f"i{i}_p1")
        two = run_one(args.bench, onnx, vnnlib, 2, args.timeout, args.out, f"i{i}_p2")
        name = f"{Path(onnx).name.split('.')[0]} {Path(vnnlib).name.split('.')[0]}"
        ratio_t = two["seconds"] / one["seconds"] if one["seconds"] else float("nan")
        ratio_b = two["subboxes_per_s"] / one["subboxes_per_s"] if one["subboxes_per_s"] else float("nan")
        rows.append({"instance": name, **{f"p1_{k}": v for k, v in one.items()},
                     **{f"p2_{k}": v for k, v in two.items()}, "time_ratio": ratio_t, "subbox_rate_ratio": ratio_b})
    with open(args.out / "input_bab_scaling.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| instance | 1 proc: verdict, s (BaB s) | 2x1: verdict, s (BaB s) | time 2x1/1 | sub-boxes/s 1 | 2x1 | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['instance']} | {r['p1_verdict']}, {r['p1_seconds']:.2f} ({r['p1_bab_seconds']:.2f}) | "
                     f"{r['p2_verdict']}, {r['p2_seconds']:.2f} ({r['p2_bab_seconds']:.2f}) | {r['time_ratio']:.2f} | "
                     f"{r['p1_subboxes_per_s']:.0f} | {r['p2_subboxes_per_s']:.0f} | {r['subbox_rate_ratio']:.2f} |")
    lines += ["", "| instance | before BaB s: 1 proc | 2x1 | ratio | alpha-CROWN s: 1 proc | 2x1 | ratio |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        pre = r["p2_pre_bab_seconds"] / r["p1_pre_bab_seconds"] if r["p1_pre_bab_seconds"] else float("nan")
        alpha = r["p2_alpha_seconds"] / r["p1_alpha_seconds"] if r["p1_alpha_seconds"] else float("nan")
        lines.append(f"| {r['instance']} | {r['p1_pre_bab_seconds']:.2f} | {r['p2_pre_bab_seconds']:.2f} | {pre:.2f} | "
                     f"{r['p1_alpha_seconds']:.3f} | {r['p2_alpha_seconds']:.3f} | {alpha:.2f} |")
    text = "\n".join(lines)
    (args.out / "input_bab_scaling.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
