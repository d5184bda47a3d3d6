#!/usr/bin/env python
"""Branch and bound on every row of a disjunct against only the rows that can prove it
(`bab/focus_rows.py`), side by side in one run: each instance with `--bab-focus-rows off` and
with the default (3), the two runs of an instance at the same time (one thread each), so both see
the same load.

    scripts/bench_focus_rows.py [--bench-root ../shared/benchmarks] [--timeout 30] [--out DIR]
                                [--split relu] [--instances acasxu_2023:1_1:prop_3 ...]

The default instances are acasxu's conjunctions of 4 rows (prop_2, prop_3, prop_4: "Y_0 is
minimal / maximal") on a spread of its networks, split on their ReLUs (`--split relu`: input
splitting keeps every row). Prints a Markdown table (each side's verdict, seconds, domains bounded
and proved, worst margin at the end, first batch; the rows bounded; the ratio of seconds where both
decided) and writes OUT/focus_rows.csv and
OUT/focus_rows.md with the conditions (CPU, load, torch, commit).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_bab_ab import _run as run_side, b_over_a  # noqa: E402 (the sibling script's runner)
DEFAULT = [f"acasxu_2023:{net}:{prop}" for net in ("1_1", "1_5", "2_3", "3_4", "4_2", "5_7")
           for prop in ("prop_2", "prop_3", "prop_4")]


def _paths(bench_root: Path, spec: str) -> tuple[Path, Path]:
    bench, net, prop = spec.split(":")
    folder = bench_root / bench
    onnx = next((folder / "onnx").glob(f"*{net}_batch_2000.onnx*"), None) or next((folder / "onnx").glob(f"*{net}*.onnx*"))
    vnnlib = next((folder / "vnnlib").glob(f"{prop}.vnnlib*"))
    return onnx, vnnlib


def _run(onnx: Path, vnnlib: Path, timeout: float, split: str, focus: str) -> dict:
    return run_side(onnx, vnnlib, timeout, "cpu", ["--bab-split", split, "--bab-focus-rows", focus])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench-root", default=str(ROOT.parent / "shared" / "benchmarks"))
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--split", default="relu", choices=["relu", "auto"])
    ap.add_argument("--instances", nargs="+", default=DEFAULT, metavar="BENCH:NET:PROP")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_focus_rows"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.instances:
        onnx, vnnlib = _paths(Path(args.bench_root), spec)
        with ThreadPoolExecutor(2) as pool:
            off, on = pool.map(lambda f: _run(onnx, vnnlib, args.timeout, args.split, f), ["off", "3"])
        ratio = b_over_a(off, on)
        rows.append({"instance": spec, **{f"{side}_{k}": r[k] for side, r in (("off", off), ("on", on))
                                           for k in ("verdict", "seconds", "domains", "proved", "worst",
                                                     "first_batch")},
                     "on_rows": on["rows"], "on_over_off": ratio})
        print(rows[-1], flush=True)
    with open(out / "focus_rows.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fmt = (lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v)))
    side = ["verdict", "s", "domains", "proved", "worst margin", "first batch"]
    head = ["instance", *[f"off: {c}" for c in side], *[f"focus 3: {c}" for c in side], "rows bounded", "on / off"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v) for v in r.values()) + " |")
    import torch
    commit = os.environ.get("DTENSOR_VERIFY_COMMIT") or subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cond = (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} "
            f"at the end; torch {torch.__version__}; commit {commit}; one thread a run, the two runs of an "
            f"instance at once; --bab-split {args.split}, limit {args.timeout:g} s")
    text = "\n".join(lines) + "\n\n" + cond + "\n"
    (out / "focus_rows.md").write_text(text)
    print(text)
    if any(r["on_over_off"] == "CONTRADICTION" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
