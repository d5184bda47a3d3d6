"""nn4sys mscn_128d: verdict and where the time goes, per instance (issue 21).

Runs `dtensor-verify --threads T run --json` on each mscn_128d instance of the benchmark's
instances.csv (or --instances), at `--timeout-scale` x its limit, with the code in `--code`
(default: this checkout; "before" = an exported copy of another commit), and prints one table
(verdict, wall and CPU seconds, each stage's seconds, branch-and-bound sub-boxes) and writes it
as CSV. Example (this CPU; docs/BENCHMARKS.md, nn4sys mscn_128d):

    git archive main | tar -x -C /tmp/before
    nice -n 10 python scripts/bench_mscn.py --code /tmp/before --label before --timeout-scale 5 --csv before.csv
    nice -n 10 python scripts/bench_mscn.py --label after --timeout-scale 5 --csv after.csv
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

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("ibp", "crown", "attack", "alpha-crown", "attack-extra", "bab")
COLUMNS = ("label", "vnnlib", "limit_s", "verdict", "decided_by", "wall_s", "verify_s", "cpu_s",
           *[f"{s}_s" for s in STAGES], "bab_domains", "message")


def instances(bench: Path, listing: Path | None, model: str, only: str | None):
    with open(listing or bench / "instances.csv") as f:
        rows = [r for r in csv.reader(f) if len(r) >= 3 and model in r[0]]
    keys = None if only is None else only.split(",")
    return [r for r in rows if keys is None or any(k in r[1] for k in keys)]


def existing(bench: Path, rel: str) -> str:
    p = bench / rel
    return str(p if p.exists() else Path(str(p) + ".gz"))


def run_one(args, onnx: str, vnnlib: str, limit: float) -> dict:
    extra = os.environ.get("PYTHONPATH")            # e.g. the GPU host's /tmp/site, kept after the code
    env = dict(os.environ, PYTHONPATH=str(args.code) + (os.pathsep + extra if extra else ""))
    with tempfile.TemporaryDirectory() as tmp:
        results, js = Path(tmp) / "results.txt", Path(tmp) / "run.json"
        cmd = [sys.executable, "-m", "dtensor_verify", "--threads", str(args.threads), "run", "--onnx", onnx,
               "--vnnlib", vnnlib, "--results", str(results), "--timeout", f"{limit:g}", "--json", str(js),
               "--quiet", "--device", args.device]
        t = time.perf_counter()
        # cwd: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
        subprocess.run(cmd, env=env, cwd=str(args.code), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=limit + 60)
        wall = time.perf_counter() - t
        verdict = results.read_text().split()[0] if results.exists() and results.read_text().strip() else "none"
        data = json.loads(js.read_text()) if js.exists() else {}
    phases = data.get("phases", {})
    row = {"verdict": data.get("verdict", verdict), "decided_by": data.get("decided_by") or "",
           "wall_s": round(wall, 1), "verify_s": round(data.get("seconds", float("nan")), 1),
           "cpu_s": round(data.get("cpu_seconds") or float("nan"), 1),
           "bab_domains": data.get("bounds", {}).get("bab", {}).get("domains_visited", ""),
           "message": (data.get("message") or "")[:80]}
    row.update({f"{s}_s": round(phases[s], 1) if s in phases else "" for s in STAGES})
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT.parent / "shared/benchmarks/nn4sys_2023")
    ap.add_argument("--instances", type=Path, default=None, help="instances CSV (default BENCH/instances.csv)")
    ap.add_argument("--model", default="mscn_128d.onnx", help="instances whose onnx path contains this")
    ap.add_argument("--filter", default=None, help="only vnnlib paths containing one of these (comma-separated)")
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--code", type=Path, default=ROOT, help="the repository whose code runs (its folder is the cwd)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", type=Path, required=True)
    args = ap.parse_args(argv)
    args.bench, args.code = args.bench.resolve(), args.code.resolve()
    rows = instances(args.bench, args.instances, args.model, args.filter)
    if not rows:
        print(f"no {args.model} instances in {args.instances or args.bench / 'instances.csv'}", file=sys.stderr)
        return 2
    print(f"# {args.label}: code {args.code}, threads {args.threads}, device {args.device}, "
          f"scale {args.timeout_scale:g}, load {os.getloadavg()[0]:.1f}")
    print("| " + " | ".join(COLUMNS[1:]) + " |")
    print("|" + "---|" * (len(COLUMNS) - 1))
    out = []
    for onnx, vnnlib, limit, *_ in rows:
        lim = float(limit) * args.timeout_scale
        row = {"label": args.label, "vnnlib": Path(vnnlib).name, "limit_s": lim,
               **run_one(args, existing(args.bench, onnx), existing(args.bench, vnnlib), lim)}
        out.append(row)
        print("| " + " | ".join(str(row[c]) for c in COLUMNS[1:]) + " |", flush=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(out)
    print(f"# load {os.getloadavg()[0]:.1f}; rows in {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
