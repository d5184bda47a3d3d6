"""nn4sys pensieve_big_parallel: kinds of branch-and-bound split side by side. Each instance is run
by `dtensor-verify run --bab-split SPLIT` at its VNN-COMP limit from one or more checkouts, every
side of an instance at the same time (so all see the same load), one thread each. Prints a table
and writes CSV (verdict, wall and CPU seconds, who decided, BaB domains / depth / split / worst
margin).

    python scripts/bench_pensieve_split.py --out OUT.csv --sides before-relu=TREE:relu,before-input=TREE:input,after=.:auto
        [--ids 35,37,42,45,39,44,57,64] [--scale F]
    python scripts/bench_pensieve_split.py --out OUT.csv --sides ... --bench acasxu_2023 --instances LIST.csv

`--instances`: rows `onnx,vnnlib,limit` of another benchmark folder (`--bench`, under the shared
benchmarks) instead of the pensieve ids (e.g. a few acasxu instances, to check another network's
split and times are unchanged).

TREE: a checkout (`git archive REV | tar -x -C DIR`; `.` is this one). `--scale F` multiplies the
limits (say so next to the numbers).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pensieve import BENCH, ROOT, limits, read_run  # noqa: E402

DEFAULT_IDS = "35,37,42,45,39,44,57,64"     # the four H100 timeouts of d13c5fc first
FIELDS = ["id", "limit", "side", "verdict", "decided_by", "wall_s", "cpu_s", "bab_s", "domains", "depth", "split",
          "worst", "message"]


def _gz(p: Path) -> Path:
    return p if p.exists() else p.with_name(p.name + ".gz")


def jobs(args, lim) -> list[tuple[str, Path, Path, float]]:
    """(id, onnx, vnnlib, limit) of each instance to run."""
    if args.instances is None:
        return [(i, BENCH / "onnx" / "pensieve_big_parallel.onnx.gz",
                 BENCH / "vnnlib" / f"pensieve_parallel_{i}.vnnlib.gz", lim[i] * args.scale) for i in args.ids.split(",")]
    folder = BENCH.parent / args.bench
    with open(args.instances) as fh:
        rows = [line.strip().split(",") for line in fh if line.strip()]
    return [(f"{Path(o).stem.split('.')[0]}/{Path(v).stem.split('.')[0]}", _gz(folder / o), _gz(folder / v),
             float(t) * args.scale) for o, v, t in rows]


def launch(tree: Path, split: str, onnx: Path, spec: Path, limit: float, tag: Path):
    cmd = [sys.executable, "-m", "dtensor_verify", "--threads", "1", "run", "--onnx", str(onnx), "--vnnlib",
           str(spec), "--timeout", f"{limit:g}", "--results", f"{tag}.res", "--json", f"{tag}.json", "--quiet",
           "--device", "cpu", "--bab-split", split]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    timer = ["/usr/bin/time", "-f", "%U %S", "-o", f"{tag}.time"] if Path("/usr/bin/time").exists() else []
    return subprocess.Popen(timer + cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def row_of(i: str, limit: float, side: str, tag: Path, wall: float) -> dict:
    row = {"id": i, "limit": limit, "side": side, "wall_s": round(wall, 1), "verdict": "no-result"}
    row["cpu_s"], data, row["verdict"] = read_run(tag)
    if data is None:
        return row
    bab = data.get("bounds", {}).get("bab", {})
    worst = bab.get("global_margin", "")
    row.update(verdict=data.get("verdict"), decided_by=data.get("decided_by") or "",
               message=(data.get("message") or "")[:100], bab_s=round(data.get("phases", {}).get("bab", 0.0), 1),
               domains=bab.get("domains_visited", ""), depth=bab.get("max_depth", ""), split=bab.get("split", ""),
               worst=round(worst, 3) if isinstance(worst, float) else worst)
    return row


def sides_of(text: str) -> list[tuple[str, Path, str]]:
    out = []
    for item in text.split(","):
        label, rest = item.split("=", 1)
        tree, split = rest.rsplit(":", 1)
        out.append((label, (ROOT if tree == "." else Path(tree)).resolve(), split))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--sides", required=True, help="LABEL=TREE:SPLIT,...")
    ap.add_argument("--ids", default=DEFAULT_IDS)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--bench", default="nn4sys_2023")
    ap.add_argument("--instances", type=Path, default=None)
    args = ap.parse_args()
    lim, sides, rows, loads = limits(), sides_of(args.sides), [], []
    with tempfile.TemporaryDirectory() as d:
        for n, (i, onnx, spec, limit) in enumerate(jobs(args, lim)):
            t0 = time.perf_counter()
            procs = [(label, launch(tree, split, onnx, spec, limit, Path(d) / f"{label}_{n}"), Path(d) / f"{label}_{n}")
                     for label, tree, split in sides]
            ends = {}
            while len(ends) < len(procs):          # each side's own wall time
                for label, proc, _ in procs:
                    if label not in ends and proc.poll() is not None:
                        ends[label] = time.perf_counter() - t0
                time.sleep(0.2)
            for label, _, tag in procs:
                rows.append(row_of(i, limit, label, tag, ends[label]))
                print(" ".join(f"{k}={rows[-1].get(k, '')}" for k in FIELDS), flush=True)
            loads.append(os.getloadavg()[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    labels = [s[0] for s in sides]
    print("\n| id | limit | " + " | ".join(f"{s} (verdict, wall s, CPU s, domains, worst)" for s in labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for k in range(0, len(rows), len(labels)):
        group = rows[k:k + len(labels)]
        cells = [f"{r['verdict']} {r.get('decided_by', '')}, {r['wall_s']}, {r['cpu_s']}, {r.get('domains', '')}, "
                 f"{r.get('worst', '')}" for r in group]
        print(f"| {group[0]['id']} | {group[0]['limit']:g} | " + " | ".join(cells) + " |")
    print(f"(load {min(loads):.1f}-{max(loads):.1f}; rows in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
