"""nn4sys pensieve_big_parallel before / after: each instance run by `dtensor-verify run` at its
VNN-COMP limit from two checkouts, side by side (the two runs of an instance at the same time, so
both see the same load), one thread each. Prints a table and writes CSV (verdict, wall seconds,
CPU seconds of the process, BaB domains / depth / rounds / open-domain limit / reason).

    python scripts/bench_pensieve.py --before BEFORE_TREE --out OUT.csv [--ids 57,44,...] [--device cpu]

BEFORE_TREE: a copy of the earlier commit (`git archive REV | tar -x -C DIR`); the after side is
this checkout. `--scale F` multiplies the limits (a loaded machine: say so next to the numbers).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("BENCH_DIR", ROOT.parent / "shared" / "benchmarks")) / "nn4sys_2023"
DEFAULT_IDS = "57,44,39,64,35,49,76,70"
FIELDS = ["id", "limit", "side", "verdict", "wall_s", "cpu_s", "domains", "depth", "rounds", "open_limit", "message"]


def limits() -> dict[str, float]:
    out = {}
    with open(BENCH / "instances.csv") as fh:
        for onnx, vnnlib, limit in csv.reader(fh):
            if "pensieve_big_parallel" in onnx:
                out[Path(vnnlib).name.split(".")[0].rsplit("_", 1)[1]] = float(limit)
    return out


def launch(tree: Path, i: str, limit: float, device: str, tmp: Path):
    onnx = BENCH / "onnx" / "pensieve_big_parallel.onnx.gz"
    spec = BENCH / "vnnlib" / f"pensieve_parallel_{i}.vnnlib.gz"
    tag = tmp / f"{tree.name}_{i}"
    cmd = [sys.executable, "-m", "dtensor_verify", "--threads", "1", "run", "--onnx", str(onnx), "--vnnlib",
           str(spec), "--timeout", f"{limit:g}", "--results", f"{tag}.res", "--json", f"{tag}.json", "--quiet",
           "--device", device]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    # CPU time per child: wrap in /usr/bin/time when present, else the wall clock only.
    timer = ["/usr/bin/time", "-f", "%U %S", "-o", f"{tag}.time"] if Path("/usr/bin/time").exists() else []
    return subprocess.Popen(timer + cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), tag


def read_run(tag: Path) -> tuple[float | str, dict | None, str]:
    """One timed run's files: (CPU seconds from `TAG.time` or "", `run --json`'s data or None, the
    results file's first word or "no-result": what a run stopped by its own watchdog leaves)."""
    try:
        cpu = round(sum(map(float, Path(f"{tag}.time").read_text().split()[-2:])), 1)
    except (OSError, ValueError):
        cpu = ""
    try:
        data = json.loads(Path(f"{tag}.json").read_text())
    except (OSError, ValueError):
        data = None
    res = Path(f"{tag}.res")
    text = res.read_text().strip() if res.exists() else ""
    return cpu, data, (text.split()[0] if text else "no-result")


def row_of(i: str, limit: float, side: str, tag: Path, wall: float) -> dict:
    row = {"id": i, "limit": limit, "side": side, "wall_s": round(wall, 1), "verdict": "error", "message": ""}
    row["cpu_s"], data, row_verdict = read_run(tag)
    if data is None:
        row["verdict"] = row_verdict
        return row
    bab = data.get("bounds", {}).get("bab", {})
    row.update(verdict=data.get("verdict"), message=(data.get("message") or "")[:120],
               domains=bab.get("domains_visited", ""), depth=bab.get("max_depth", ""),
               rounds=bab.get("rounds", ""), open_limit=bab.get("open_domain_limit", ""))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--ids", default=DEFAULT_IDS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    lim = limits()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in args.ids.split(","):
            limit = lim[i] * args.scale
            t0 = time.perf_counter()
            procs = {side: launch(tree, i, limit, args.device, tmp)
                     for side, tree in (("before", args.before.resolve()), ("after", ROOT))}
            for side, (proc, tag) in procs.items():
                proc.wait()
                rows.append(row_of(i, limit, side, tag, time.perf_counter() - t0))
                print(" ".join(f"{k}={rows[-1].get(k, '')}" for k in FIELDS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"\n| id | limit | before | after | before CPU s | after CPU s | domains b/a |\n|---|---|---|---|---|---|---|")
    for b, a in zip(rows[::2], rows[1::2]):
        print(f"| {b['id']} | {b['limit']:g} | {b['verdict']} | {a['verdict']} | {b['cpu_s']} | {a['cpu_s']} "
              f"| {b.get('domains', '')}/{a.get('domains', '')} |")
    print(f"(load: {os.getloadavg()[0]:.1f}; rows in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
