#!/usr/bin/env python
"""Every benchmark on this CPU at one tenth of its VNN-COMP limits: what is decided and where the time goes.

    scripts/bench_cpu_tenth.py --out OUT [--bench-root ../shared/benchmarks] [--per-bench 4] [--jobs 2]
                               [--scale 0.1] [BENCH ...]

For each benchmark folder (default: every one with an instances.csv except `test` and `vnncomp2026`),
`--per-bench` instances spread evenly over its instances.csv (those whose files are here) run through
`dtensor-verify --threads 1 benchmark --timeout-scale SCALE --device cpu` (one process per benchmark,
`--jobs` benchmarks at once). The benchmark CSV's `phases` column (each pipeline stage that ended, with
its seconds) and a timeout's stage ("time limit ... reached (in bab)") give where the time went: a
timeout's unfinished stage is charged the rest of its limit. Writes OUT/<bench>.csv (the rows),
OUT/cpu_tenth.csv (one row per benchmark) and OUT/cpu_tenth.md (the table and the conditions).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"test", "vnncomp2026"}


def present(bench: Path, rel: str) -> bool:
    p = bench / rel.strip()
    return p.exists() or Path(str(p) + ".gz").exists()


def pick(bench: Path, n: int) -> list[list[str]]:
    """n instances spread evenly over the benchmark's instances.csv (those whose files are here)."""
    with open(bench / "instances.csv") as fh:
        rows = [r for r in csv.reader(fh) if len(r) >= 3 and present(bench, r[0]) and present(bench, r[1])]
    if len(rows) <= n:
        return rows
    return [rows[round(i * (len(rows) - 1) / (n - 1))] for i in range(n)] if n > 1 else rows[:1]


def run_bench(bench: Path, rows: list[list[str]], out: Path, scale: float) -> tuple[str, float]:
    listing = out / f"{bench.name}.instances.csv"
    with open(listing, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "dtensor_verify", "--threads", "1", "benchmark", str(bench), "--instances",
           str(listing), "--timeout-scale", str(scale), "--csv", str(out / f"{bench.name}.csv"), "--quiet",
           "--device", "cpu"]
    t = time.perf_counter()
    limit = sum(float(r[2]) for r in rows) * scale * 1.5 + 300
    with open(out / f"{bench.name}.log", "w") as log:
        try:
            subprocess.run(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
        except subprocess.TimeoutExpired:
            log.write(f"\nbench_cpu_tenth: killed after {limit:.0f} s\n")
    return bench.name, time.perf_counter() - t


def stage_seconds(row: dict, limit: float) -> dict[str, float]:
    """Seconds per stage of one row; a timeout's unfinished stage gets the rest of its limit."""
    out: dict[str, float] = {}
    for part in (row.get("phases") or "").split(";"):
        if "=" in part:
            name, sec = part.split("=", 1)
            name = name.replace("_", "-")       # (the phase `shallow_bab` is the stage `shallow-bab`)
            out[name] = out.get(name, 0.0) + float(sec)
    msg = row.get("message") or ""
    if row.get("verdict") == "timeout" and "(in " in msg:
        stage = msg.split("(in ")[-1].rstrip(")").replace("_", "-")
        out[stage] = out.get(stage, 0.0) + max(0.0, limit - sum(out.values()))
    return out


def summarise(bench: str, rows: list[dict], limits: dict) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    spent: dict[str, float] = {}
    for r in rows:
        key = r["vnnlib"].strip().removeprefix("./")
        for k, v in stage_seconds(r, limits.get(key, 0.0)).items():
            spent[k] = spent.get(k, 0.0) + v
    total = sum(spent.values()) or 1.0
    where = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
                      if v / total >= 0.05)
    secs = [float(r["seconds"]) for r in rows if r.get("seconds")]
    return {"benchmark": bench, "run": len(rows), "unsat": counts.get("unsat", 0), "sat": counts.get("sat", 0),
            "timeout": counts.get("timeout", 0),
            "other": sum(v for k, v in counts.items() if k not in ("unsat", "sat", "timeout")),
            "median_s": round(statistics.median(secs), 2) if secs else "", "where_the_time_went": where}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bench-root", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    ap.add_argument("--per-bench", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("benches", nargs="*")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.benches or sorted(p.name for p in args.bench_root.iterdir()
                                   if (p / "instances.csv").exists() and p.name not in SKIP)
    chosen = {n: pick(args.bench_root / n, args.per_bench) for n in names}
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    # the longest first, so that the jobs end together
    order = sorted(names, key=lambda n: -sum(float(r[2]) for r in chosen[n]))
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        for name, wall in pool.map(lambda n: run_bench(args.bench_root / n, chosen[n], args.out, args.scale), order):
            print(f"  {name}: {wall:.0f} s", flush=True)
    table = []
    for n in names:
        path = args.out / f"{n}.csv"
        rows = list(csv.DictReader(open(path))) if path.exists() else []
        limits = {r[1].strip().removeprefix("./"): float(r[2]) * args.scale for r in chosen[n]}
        table.append(summarise(n, rows, limits) | {"chosen": len(chosen[n])})
    fields = ["benchmark", "chosen", "run", "unsat", "sat", "timeout", "other", "median_s", "where_the_time_went"]
    with open(args.out / "cpu_tenth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(table)
    import torch

    # DTENSOR_VERIFY_COMMIT: the caller's commit where the checkout's git metadata is stale (a device copy)
    commit = os.environ.get("DTENSOR_VERIFY_COMMIT") or subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["| benchmark | instances | unsat | sat | timeout | other | median s | where the time went (share of all seconds) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['benchmark']} | {r['run']} of {r['chosen']} | {r['unsat']} | {r['sat']} | {r['timeout']} | "
              f"{r['other']} | {r['median_s']} | {r['where_the_time_went']} |" for r in table]
    lines += ["", f"- command: `{' '.join(sys.argv)}`",
              f"- {os.cpu_count()} cores, load before {load_before}, after "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; torch {torch.__version__}, Python "
              f"{platform.python_version()}, commit {commit}; "
              f"one thread, {args.jobs} benchmark(s) at once, limits x {args.scale}; {time.perf_counter() - t0:.0f} s in all"]
    text = "\n".join(lines)
    (args.out / "cpu_tenth.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
