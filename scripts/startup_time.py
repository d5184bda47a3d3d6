#!/usr/bin/env python3
"""Start-up time of `dtensor-verify run` on one instance, process start to result file.

    .venv/bin/python scripts/startup_time.py [--repeats 7] [--csv out/startup.csv] [--onnx M --vnnlib S]

Each repeat launches, one after the other, `python -c "import torch"` (the floor no torch
program can go below) and `python -m dtensor_verify run ... --json J` (a fresh process, as under
VNN-COMP), and splits the command's wall time with the phase times it writes to J:

  start     launch -> the CLI's main() (interpreter, argument parsing; no torch yet)
  imports   torch, the engine, onnx2torch (torchvision deferred)
  load      ONNX -> torch.fx -> bound graph (incl. any load-time self-check)
  property  VNN-LIB parsing
  verify    the verdict pipeline (attack, CROWN, ...)
  write     the result file
  exit      JSON, interpreter shutdown (after the result file exists)

`to_result` (start .. write) is the figure the target is about: process start to result file.
`run_total` also holds the exit.

Prints min and median per column (the machine may be shared: the minimum is the least disturbed
run) and writes one CSV row per repeat. Default instance: mnist-net_256x2, prop_0_0.03 (unsat).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "mnist_fc"
PHASES = ["start", "imports", "load", "property", "verify", "write", "exit"]
COLUMNS = ["import_torch", "to_result", "run_total", *PHASES]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(var, None)
    return env


def _wall(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    launched = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return launched, time.perf_counter() - t0, proc


def one_repeat(args, work: Path) -> dict:
    env = _env()
    _, torch_s, proc = _wall([args.python, "-c", "import torch"], env)
    if proc.returncode != 0:
        sys.exit(f"python -c 'import torch' failed:\n{proc.stderr}")
    results, details = work / "result.txt", work / "run.json"
    cmd = [args.python, "-m", "dtensor_verify", *args.cli_args, "run", "--onnx", args.onnx, "--vnnlib",
           args.vnnlib, "--results", str(results), "--timeout", str(args.timeout), "--quiet", "--json",
           str(details)]
    launched, total, proc = _wall(cmd, env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    info = json.loads(details.read_text())
    phases = info["startup"]
    row = {"import_torch": torch_s, "run_total": total,
           "start": phases["main_entered_at"] - launched,
           **{p: phases.get(p, 0.0) for p in ("imports", "load", "property", "verify", "write")},
           "verdict": results.read_text().split("\n", 1)[0].strip()}
    row["load"] += phases.get("plan", 0.0)
    row["to_result"] = sum(row[p] for p in PHASES[:-1])
    row["exit"] = total - row["to_result"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--onnx", default=str(BENCH / "onnx" / "mnist-net_256x2.onnx.gz"))
    p.add_argument("--vnnlib", default=str(BENCH / "vnnlib" / "prop_0_0.03.vnnlib.gz"))
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    p.add_argument("--csv", default=None, help="per-repeat rows (default: out/startup_time.csv)")
    p.add_argument("--budget", type=float, default=3.0, help="target for the median to_result, s (default 3)")
    p.add_argument("cli_args", nargs="*", help="options before `run`, e.g. -- --threads 1")
    args = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="dv_startup_") as tmp:
        for i in range(args.repeats):
            rows.append(one_repeat(args, Path(tmp)))
            print(f"  repeat {i + 1}/{args.repeats}: run {rows[-1]['run_total']:.2f} s, import torch "
                  f"{rows[-1]['import_torch']:.2f} s, verdict {rows[-1]['verdict']}", file=sys.stderr)
    out = Path(args.csv) if args.csv else ROOT / "out" / "startup_time.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["repeat", *COLUMNS, "verdict"])
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow({"repeat": i + 1, "verdict": r["verdict"], **{c: f"{r[c]:.4f}" for c in COLUMNS}})

    cmd = f"python -m dtensor_verify {' '.join(args.cli_args)} run --onnx {Path(args.onnx).name} " \
          f"--vnnlib {Path(args.vnnlib).name} --results R --timeout {args.timeout:g}".replace("  ", " ")
    print(f"{cmd}  ({args.repeats} repeats, {os.cpu_count()} CPUs; seconds)")
    print("| | " + " | ".join(COLUMNS) + " |")
    print("| --- |" + " ---: |" * len(COLUMNS))
    for name, f in (("min", min), ("median", statistics.median)):
        print(f"| {name} | " + " | ".join(f"{f([r[c] for r in rows]):.2f}" for c in COLUMNS) + " |")
    median = statistics.median(r["to_result"] for r in rows)
    print(f"process start -> result file: median {median:.2f} s, min {min(r['to_result'] for r in rows):.2f} s "
          f"(target {args.budget:g} s for the median: {'met' if median <= args.budget else 'MISSED'}); "
          f"`python -c 'import torch'` alone (start to exit): median "
          f"{statistics.median(r['import_torch'] for r in rows):.2f} s; rows in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
