#!/usr/bin/env python
"""ml4acopf before/after the ReLU lookup-table fusion (ops/lookup_table.py), side by side.

Runs `dtensor-verify benchmark` on the same instances list with two source trees (the
"before" tree: e.g. `git archive <commit> | tar -x -C DIR`; the "after" tree: this checkout),
one after the other in one run, one thread each, then prints one table (verdict, seconds,
decided_by, per tree) and writes it as CSV.

    PYTHONPATH=. python scripts/bench_ml4acopf_lookup.py --before-tree /tmp/before \\
        --instances bench/cpu/ml4acopf_118_linear.csv --timeout-scale 0.1 --csv out.csv
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent.parent / "shared" / "benchmarks" / "ml4acopf_2024"


def _run_tree(tree: Path, instances: str, scale: float, out: Path, bench_dir: Path, extra: list[str]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dtensor_verify", "--threads", "1", "benchmark", str(bench_dir),
           "--instances", instances, "--timeout-scale", str(scale), "--csv", str(out), "--quiet", *extra]
    subprocess.run(cmd, cwd=tree, env=env, check=False, stdout=subprocess.DEVNULL)
    with open(out) as fh:
        return list(csv.DictReader(fh))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before-tree", required=True, type=Path)
    ap.add_argument("--instances", required=True)
    ap.add_argument("--bench-dir", type=Path, default=BENCH)
    ap.add_argument("--timeout-scale", type=float, default=0.1)
    ap.add_argument("--csv", required=True, type=Path)
    ap.add_argument("--extra", default="", help="more benchmark arguments, space separated")
    args = ap.parse_args(argv)
    extra = args.extra.split()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tag, tree in (("before", args.before_tree.resolve()), ("after", ROOT)):
            for r in _run_tree(tree, os.path.abspath(args.instances), args.timeout_scale,
                               Path(tmp) / f"{tag}.csv", args.bench_dir, extra):
                key = (Path(r["onnx"]).name, Path(r["vnnlib"]).name)
                rows.setdefault(key, {})[tag] = r
    fields = ["onnx", "vnnlib", "before_verdict", "before_seconds", "before_decided_by",
              "after_verdict", "after_seconds", "after_decided_by"]
    table = []
    for (onnx, vnnlib), by in rows.items():
        b, a = by.get("before", {}), by.get("after", {})
        table.append({"onnx": onnx, "vnnlib": vnnlib,
                      "before_verdict": b.get("verdict", ""), "before_seconds": b.get("seconds", ""),
                      "before_decided_by": b.get("decided_by", ""), "after_verdict": a.get("verdict", ""),
                      "after_seconds": a.get("seconds", ""), "after_decided_by": a.get("decided_by", "")})
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(table)
    print(f"{'instance':58} {'before':>22} {'after':>22}")
    for r in table:
        name = f"{r['onnx']} {r['vnnlib']}".replace(".onnx", "").replace(".vnnlib", "").replace(".gz", "")
        before = f"{r['before_verdict']} {r['before_seconds']} {r['before_decided_by']}"
        after = f"{r['after_verdict']} {r['after_seconds']} {r['after_decided_by']}"
        print(f"{name:58} {before:>22} {after:>22}")
    for tag in ("before", "after"):
        print(f"{tag}: {sum(r[tag + '_verdict'] in ('unsat', 'sat') for r in table)} decided of {len(table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
