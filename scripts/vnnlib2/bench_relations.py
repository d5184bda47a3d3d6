#!/usr/bin/env python3
"""Time to a verdict on monotonic_acasxu_2026 with and without the relation pass.

    python scripts/vnnlib2/bench_relations.py --csv out.csv [--nets 5_4 4_1 ...] [--timeout 100]

Runs `dtensor-verify verify` in this one process (after a warm-up query, so imports and first-call
costs are not counted) on each network's instance, once as is and once with
`specs/vnnlib2_pairs.try_relations` replaced by a function that finds nothing (the pipeline
alone: attack, bounds, branch and bound). Prints a table and writes the CSV.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO.parent / "shared" / "benchmarks" / "vnncomp2026" / "monotonic_acasxu_2026"
sys.path.insert(0, str(REPO))

# the six networks whose instances timed out at 30 s before the relation pass
NETS = ("5_4", "4_1", "5_5", "1_4", "5_1", "4_3")


def verdict(net: str, timeout: float) -> tuple[str, float]:
    from dtensor_verify.cli import main

    onnx = BENCH / "onnx" / "original" / f"ACASXU_run2a_{net}_batch_2000.onnx"
    argv = ["--threads", "1", "verify", str(BENCH / "vnnlib" / "instance_0.fixed.vnnlib"), "--network",
            f"f={onnx}", "--device", "cpu", "--quiet", "--timeout", f"{timeout:g}"]
    out = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        main(argv)
    lines = out.getvalue().splitlines()
    return (lines[0] if lines else "none"), time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--nets", nargs="*", default=list(NETS))
    ap.add_argument("--timeout", type=float, default=100.0)
    a = ap.parse_args()
    from dtensor_verify.specs import vnnlib2_pairs

    verdict("2_2", a.timeout)                      # warm-up: imports, first-call costs
    rows = []
    real = vnnlib2_pairs.try_relations
    for mode in ("with", "without"):
        vnnlib2_pairs.try_relations = real if mode == "with" else (lambda *args, **kw: False)
        for net in a.nets:
            v, s = verdict(net, a.timeout)
            rows.append({"net": f"ACASXU_run2a_{net}", "relation_pass": mode, "verdict": v, "seconds": round(s, 2)})
            print(f"{rows[-1]['net']:<18} {mode:<8} {v:<10} {s:7.2f} s", flush=True)
    vnnlib2_pairs.try_relations = real
    with open(a.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\n| net | with the relation pass | without |\n| --- | --- | --- |")
    for net in a.nets:
        got = {r["relation_pass"]: r for r in rows if r["net"] == f"ACASXU_run2a_{net}"}
        print(f"| ACASXU_run2a_{net} | {got['with']['verdict']} {got['with']['seconds']:.1f} s "
              f"| {got['without']['verdict']} {got['without']['seconds']:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
