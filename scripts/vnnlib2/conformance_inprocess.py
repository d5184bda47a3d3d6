#!/usr/bin/env python
"""The vnnlib-satisfactory conformance cases, run in process (no process start per case).

The suite's generator writes the cases into the working directory (.vnnlib-satisfactory/), its
`partition_by_support` picks those our `supports` answers claim, and each runs through
`dtensor-verify verify` (`cli.main`). Prints one line a case and the totals, writes a CSV.

    cd /tmp/somewhere && PYTHONPATH=/path/to/repo python /path/to/repo/scripts/vnnlib2/conformance_inprocess.py \
        [--csv conformance.csv] [--timeout 60] [--only softmax,mul]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import io
import time
import warnings
from pathlib import Path


def cases():
    from vnntest.core.evaluator import partition_by_support
    from vnntest.core.generator import generate_all_tests
    from vnntest.models.test_case import TestCase

    from dtensor_verify.solver_cli import capability

    with contextlib.redirect_stdout(io.StringIO()):
        manifest = generate_all_tests(suite="full")
    all_cases = [TestCase.from_manifest_entry(e, Path.cwd() / ".vnnlib-satisfactory" / "tests" / e["category"])
                 for e in manifest]
    return partition_by_support(
        all_cases, set(capability("onnx-operators")), set(capability("multiple-network-theories")),
        set(capability("hidden-node-theories")),
        supported_io_theories=set(capability("multiple-input-output-theories")),
        supported_arithmetic_complexity_theories=set(capability("arithmetic-complexity-theories")))


def run_case(tc, timeout):
    from dtensor_verify.cli import main

    argv = ["verify", str(tc.vnnlib_path), "--timeout", str(timeout), "--device", "cpu", "--quiet"]
    for name, path in tc.onnx_paths.items():
        argv += ["--network", f"{name}={path}"]
    out, err = io.StringIO(), io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            main(argv)
        except SystemExit:
            pass
    verdict = (out.getvalue().splitlines() or ["error"])[0]
    expected = tc.expected.value
    result = "pass" if verdict == expected else ("WRONG" if verdict in ("sat", "unsat") else "suspect")
    return {"category": tc.category, "case": tc.name, "result": result, "verdict": verdict, "expected": expected,
            "seconds": f"{time.perf_counter() - t:.1f}",
            "reason": "" if result == "pass" else " ".join(err.getvalue().split())[-200:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default="conformance_inprocess.csv")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--only", default="", help="comma-separated categories")
    args = ap.parse_args()
    runnable, skipped = cases()
    only = {c for c in args.only.split(",") if c}
    rows = [run_case(tc, args.timeout) for tc in runnable if not only or tc.category in only]
    for r in rows:
        print(f"{r['category']:20s} {r['case']:22s} {r['result']:7s} got={r['verdict']:9s} exp={r['expected']:6s} "
              f"{r['seconds']:>6s}s {r['reason'][:120]}", flush=True)
    counts = collections.Counter(r["result"] for r in rows)
    print(f"total: {counts.get('pass', 0)} pass, {counts.get('WRONG', 0)} wrong, {counts.get('suspect', 0)} suspect, "
          f"{len(skipped)} skipped (not claimed)")
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["case"])
        w.writeheader()
        w.writerows(rows)
    print(f"CSV: {args.csv}")


if __name__ == "__main__":
    main()
