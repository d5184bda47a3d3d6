#!/usr/bin/env python3
"""Run the VNN-COMP 2026 VNN-LIB 2.0 benchmarks end to end through scripts/vnncomp/run_instance.sh.

    python scripts/vnnlib2/run_benchmarks_2026.py --csv out.csv [--timeout S] [--limit N] [--filter SUB]

For every row of `<bench>/instances.csv` under ../shared/benchmarks/vnncomp2026 it runs
run_instance.sh (the model list as VNN-COMP 2026 passes it), reads the results file, and for a
`sat` re-checks the written assignment independently: the values parsed back from the 2.0 text
format, the networks' outputs recomputed by onnxruntime from the written inputs (they must equal
the written outputs), and the query's own AST evaluated exactly. Prints a table, writes the CSV.
"""
from __future__ import annotations

import argparse
import ast
import csv
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO.parent / "shared" / "benchmarks" / "vnncomp2026"
sys.path.insert(0, str(REPO))


def parse_assignment(text: str) -> dict:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out, i = {}, 0
    while i < len(lines):
        name, _typ, shape = lines[i].split(" ", 2)
        dims = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
        n = int(np.prod(dims)) if dims else 1
        # exact: the text's own rational value (a pinned `real` input is written as its decimal)
        out[name] = np.array([Fraction(v.strip()) for v in lines[i + 1:i + 1 + n]], dtype=object).reshape(dims)
        i += 1 + n
    return out


def recheck(bench: Path, models: str, query_path: Path, body: str) -> str:
    """'yes' when the written assignment satisfies the query and the networks, else why not."""
    import onnxruntime as ort

    from dtensor_verify.model_loading import read_bytes
    from dtensor_verify.specs.vnnlib2 import holds, read_query

    q = read_query(query_path)
    values = parse_assignment(body)
    pairs = dict(ast.literal_eval(models)) if models.strip().startswith("[") else {q.networks[0].name: models}
    declared = {n.name: n for n in q.networks}
    for net in q.networks:
        target = net
        while target.equal_to:
            target = declared[target.equal_to]
        sess = ort.InferenceSession(read_bytes(bench / pairs[target.name]), providers=["CPUExecutionProvider"])
        feed = {}
        for d, info in zip(net.inputs, sess.get_inputs()):
            shape = [s if isinstance(s, int) and s > 0 else 1 for s in info.shape]
            feed[info.name] = np.array([float(v) for v in values[d.name].ravel()], np.float32).reshape(shape)
        for d, o in zip(net.outputs, sess.run(None, feed)):
            written = np.array([float(v) for v in values[d.name].ravel()])
            if not np.array_equal(np.asarray(o, np.float64).ravel(), written):
                return f"output {d.name} differs from onnxruntime"
    return "yes" if holds(q, values) else "the assignment does not satisfy the query"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--timeout", type=float, default=None, help="per instance (default: the instance's)")
    ap.add_argument("--limit", type=int, default=None, help="first N instances of each benchmark")
    ap.add_argument("--filter", default=None)
    ap.add_argument("--args", default="--device cpu --quiet", help="DTENSOR_VERIFY_ARGS for run_instance.sh")
    a = ap.parse_args()
    rows = []
    for bench in sorted(p for p in BENCH.iterdir() if (p / "instances.csv").is_file()):
        with open(bench / "instances.csv") as fh:
            instances = list(csv.reader(fh))[:a.limit]
        for models, query, tmo in instances:
            if a.filter and a.filter not in models + query + bench.name:
                continue
            timeout = a.timeout or float(tmo)
            results = Path(f"/tmp/vnnlib2_bench_{os.getpid()}.txt")
            env = dict(os.environ, DTENSOR_VERIFY_ARGS=a.args)
            t0 = time.perf_counter()
            proc = subprocess.run([str(REPO / "scripts/vnncomp/run_instance.sh"), "v1", bench.name, models, query,
                                   str(results), f"{timeout:g}"], cwd=bench, env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            text = results.read_text() if results.exists() else "error\n"
            verdict, _, body = text.partition("\n")
            confirmed = recheck(bench, models, bench / query, body) if verdict == "sat" else ""
            err = proc.stderr.strip().splitlines()[-1] if verdict == "error" and proc.stderr.strip() else ""
            rows.append({"benchmark": bench.name, "models": models, "query": query, "timeout": timeout,
                         "verdict": verdict, "seconds": round(dt, 2), "sat_confirmed": confirmed, "error": err})
            print(f"{bench.name:42s} {Path(query).name:26s} {verdict:8s} {dt:7.1f} s {confirmed} {err}", flush=True)
            results.unlink(missing_ok=True)
    with open(a.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["benchmark"])
        w.writeheader()
        w.writerows(rows)
    counts = {}
    for r in rows:
        counts[(r["benchmark"], r["verdict"])] = counts.get((r["benchmark"], r["verdict"]), 0) + 1
    print("\n| benchmark | verdict | count |\n| --- | --- | --- |")
    for (b, v), n in sorted(counts.items()):
        print(f"| {b} | {v} | {n} |")
    bad = [r for r in rows if r["verdict"] == "sat" and r["sat_confirmed"] != "yes"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
