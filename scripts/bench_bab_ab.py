#!/usr/bin/env python
"""Two sets of branch-and-bound options on the same instances, side by side in one run: each
instance once with `--a` and once with `--b` (extra `dtensor-verify run` arguments), the two runs
of an instance at the same time (one thread each), so both see the same load.

    scripts/bench_bab_ab.py --instances yolo_2023:TinyYOLO:TinyYOLO_prop_000426 [more ...]
        --a "" --b "--bab-lr-alpha 0.01 --bab-lr-beta 0.1" [--timeout 300] [--out DIR]
        [--bench-root ../shared/benchmarks] [--device cpu]

An instance is BENCH:ONNX_PREFIX:VNNLIB_PREFIX (files under BENCH/onnx and BENCH/vnnlib, .gz or
not). Prints a Markdown table (each side's verdict, seconds, domains bounded and proved, the worst
open margin at the end, first and last batch, rows bounded; B's seconds over A's where both
decided) and writes OUT/ab.csv and OUT/ab.md with the conditions (CPU, load, torch, commit, both
argument sets). One side's sat against the other's unsat is a CONTRADICTION (exit status 1).
`_run` is also scripts/bench_focus_rows.py's.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLS = ("verdict", "seconds", "domains", "proved", "worst", "first_batch", "batch", "rows")


def _paths(bench_root: Path, spec: str) -> tuple[Path, Path]:
    try:
        bench, net, prop = spec.split(":")
    except ValueError:
        sys.exit(f"bench_bab_ab: error: {spec!r}: an instance is BENCH:ONNX_PREFIX:VNNLIB_PREFIX")
    folder = bench_root / bench
    onnx = sorted((folder / "onnx").glob(f"{net}*.onnx*"))
    vnnlib = sorted((folder / "vnnlib").glob(f"{prop}*.vnnlib*"))
    if not onnx or not vnnlib:
        sys.exit(f"bench_bab_ab: error: {spec}: no {folder}/onnx/{net}*.onnx* or {folder}/vnnlib/{prop}*.vnnlib*")
    return onnx[0], vnnlib[0]


def _run(onnx: Path, vnnlib: Path, timeout: float, device: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        js, res = Path(tmp) / "r.json", Path(tmp) / "r.txt"
        cmd = [sys.executable, "-m", "dtensor_verify", "--threads", "1", "run", "--onnx", str(onnx),
               "--vnnlib", str(vnnlib), "--results", str(res), "--json", str(js), "--timeout", str(timeout),
               "--device", device, "--quiet", *extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        subprocess.run(cmd, env=env, capture_output=True, timeout=timeout * 2 + 120)
        try:
            d = json.loads(js.read_text())
        except (OSError, ValueError):
            return dict.fromkeys(COLS, None) | {"verdict": "error"}
    bab = d.get("bounds", {}).get("bab", {}) or {}
    rows = bab.get("rows_bounded")
    return {"verdict": d.get("verdict"), "seconds": d.get("seconds"), "domains": bab.get("domains_visited"),
            "proved": bab.get("domains_proved"), "worst": bab.get("global_margin"),
            "first_batch": bab.get("first_batch"), "batch": bab.get("batch_per_worker"),
            "rows": f"{rows['kept']}/{rows['of']}" if rows else ""}


def b_over_a(a: dict, b: dict) -> str:
    """B's seconds over A's where both decided; CONTRADICTION where one says sat and the other unsat."""
    if {a["verdict"], b["verdict"]} == {"sat", "unsat"}:
        return "CONTRADICTION"
    if a["verdict"] in ("sat", "unsat") and b["verdict"] in ("sat", "unsat") and a["seconds"]:
        return f"{b['seconds'] / a['seconds']:.2f}"
    return ""


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", nargs="+", required=True)
    ap.add_argument("--a", default="", help="extra arguments of side A (default: none, the defaults)")
    ap.add_argument("--b", required=True, help="extra arguments of side B")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bench-root", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_bab_ab")
    args = ap.parse_args(argv)
    sides = {"A": shlex.split(args.a), "B": shlex.split(args.b)}
    args.out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    rows = []
    for spec in args.instances:
        onnx, vnnlib = _paths(args.bench_root, spec)
        with ThreadPoolExecutor(2) as pool:
            got = dict(zip(sides, pool.map(lambda s: _run(onnx, vnnlib, args.timeout, args.device, sides[s]), sides)))
        rows.append({"instance": spec, **{f"{s}_{c}": got[s][c] for s in sides for c in COLS},
                     "b_over_a": b_over_a(got["A"], got["B"])})
        print(f"{spec}: A {got['A']['verdict']} worst {_fmt(got['A']['worst'])}, "
              f"B {got['B']['verdict']} worst {_fmt(got['B']['worst'])}", flush=True)
    with open(args.out / "ab.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    commit = os.environ.get("DTENSOR_VERIFY_COMMIT") or subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import torch
    lines = [f"A: `{args.a or '(defaults)'}`; B: `{args.b}`; limit {args.timeout:g} s, {args.device}, one thread each, "
             f"both sides at once; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
             f"{load0:.1f} before / {os.getloadavg()[0]:.1f} after, torch {torch.__version__}, commit {commit}", "",
             "| instance | side | verdict | s | domains | proved | worst margin at the end | first batch | last batch | rows "
             "| B / A s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        for s in sides:
            lines.append(f"| {r['instance']} | {s} | " + " | ".join(_fmt(r[f'{s}_{c}']) for c in COLS)
                         + f" | {r['b_over_a'] if s == 'B' else ''} |")
    text = "\n".join(lines) + "\n"
    (args.out / "ab.md").write_text(text)
    print(text)
    return 1 if any(r["b_over_a"] == "CONTRADICTION" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
