"""safenlp before / after: instances run by `dtensor-verify run` at their VNN-COMP limit (20 s,
process start to result), one after the other, each side in its own process, one thread.
Prints a table and writes CSV (verdict, wall seconds, decided_by, the one-hidden-layer search's
domains and depth, BaB domains, message) and a markdown note with the conditions.

    python scripts/bench_safenlp.py --before BEFORE_TREE --out OUT_PREFIX [--rows CSV] [--n 10]

BEFORE_TREE: a copy of the earlier commit (`git archive REV | tar -x -C DIR`); the after side is
this checkout. The instances: the `timeout` rows of `--rows` (a benchmark CSV with onnx, vnnlib,
verdict columns; default the H100 run docs/benchmarks/gpu_h100_2026-12-06_s4/safenlp_eb19d8b.csv),
the first `--n` of them; or `--all-timeouts`. `--scale F` multiplies the limits.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("BENCH_DIR", ROOT.parent / "shared" / "benchmarks")).resolve() / "safenlp"
ROWS = ROOT / "docs" / "benchmarks" / "gpu_h100_2026-12-06_s4" / "safenlp_eb19d8b.csv"
FIELDS = ["instance", "side", "verdict", "wall_s", "decided_by", "shallow_domains", "shallow_depth",
          "shallow_s", "bab_domains", "message"]


def timeouts(rows: Path) -> list[tuple[str, str]]:
    with open(rows) as fh:
        return [(r["onnx"], r["vnnlib"]) for r in csv.DictReader(fh) if r["verdict"] == "timeout"]


def run_one(tree: Path, onnx: str, vnnlib: str, limit: float, tmp: Path, threads: int) -> dict:
    res, js = tmp / "r.txt", tmp / "r.json"
    for f in (res, js):
        f.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "dtensor_verify", "--threads", str(threads), "run",
           "--onnx", str(BENCH / (onnx + ".gz")), "--vnnlib", str(BENCH / (vnnlib + ".gz")),
           "--results", str(res), "--json", str(js), "--timeout", str(limit), "--device", "cpu", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=limit + 60)
    wall = time.perf_counter() - t
    out = {"wall_s": round(wall, 3), "verdict": "error", "decided_by": "", "message": proc.stderr[-200:]}
    if js.exists():
        d = json.loads(js.read_text())
        sh, bab = d["bounds"].get("shallow_bab") or {}, d["bounds"].get("bab") or {}
        out.update(verdict=d["verdict"], decided_by=d.get("decided_by") or "", message=(d.get("message") or "")[:120],
                   shallow_domains=sh.get("domains", ""), shallow_depth=sh.get("max_depth", ""),
                   shallow_s=round(sh["seconds"], 3) if "seconds" in sh else "",
                   bab_domains=bab.get("domains_visited", ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="OUT_PREFIX: writes OUT_PREFIX.csv and .md")
    ap.add_argument("--rows", type=Path, default=ROWS)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--all-timeouts", action="store_true")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    todo = timeouts(args.rows)
    todo = todo if args.all_timeouts else todo[:args.n]
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for onnx, vnnlib in todo:
            name = f"{Path(onnx).parent.name}/{Path(vnnlib).name.split('.')[0]}"
            for side, tree in (("before", args.before), ("after", ROOT)):
                r = {"instance": name, "side": side, **run_one(tree, onnx, vnnlib, 20.0 * args.scale, Path(tmp), args.threads)}
                rows.append(r)
                print(f"{name:34s} {side:6s} {r['verdict']:8s} {r['wall_s']:7.2f} s  {r['decided_by']:12s} "
                      f"shallow {r.get('shallow_domains', '')!s:>6s} dom  bab {r.get('bab_domains', '')!s:>7s} dom", flush=True)
    load1 = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    _summary(rows, args, load0, load1, todo)


def _summary(rows, args, load0, load1, todo) -> None:
    import torch

    lines = ["| side | instances | unsat | sat | timeout | other | median wall s | max wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for side in ("before", "after"):
        rs = [r for r in rows if r["side"] == side]
        walls = sorted(r["wall_s"] for r in rs)
        count = {k: sum(r["verdict"] == k for r in rs) for k in ("unsat", "sat", "timeout")}
        other = len(rs) - sum(count.values())
        med = walls[len(walls) // 2] if walls else 0.0
        lines.append(f"| {side} | {len(rs)} | {count['unsat']} | {count['sat']} | {count['timeout']} | {other} | "
                     f"{med:.2f} | {max(walls, default=0.0):.2f} |")
    cond = (f"{len(todo)} safenlp instances (the `timeout` rows of {args.rows.name}), limit {20.0 * args.scale:g} s "
            f"each (process start to result), `--device cpu --threads {args.threads}`, one process at a time; "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"load average before {load0[0]:.2f} / after {load1[0]:.2f}; command: `{' '.join(sys.argv)}`")
    text = "\n".join(lines)
    print(text)
    print(cond)
    args.out.with_suffix(".md").write_text(text + "\n\n" + cond + "\n")


if __name__ == "__main__":
    main()
