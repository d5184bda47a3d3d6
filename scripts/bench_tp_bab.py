#!/usr/bin/env python
"""`tp` branch and bound vs one process on CPU (issue 18, item 7): per-round time.

    scripts/bench_tp_bab.py --widths 26 --seeds 2 --timeout 90 --out docs/trust/tp_bab

Each instance is a 9-input network of three hidden ReLU layers of WIDTH neurons with layer
scales 1e-3, 1e3, 1e-1, 1e1 (tests/milp_oracle.py; WIDTH 26 is the issue's 78-ReLU net), one
output row `unsat` by a small margin. It is run with `--bab-split relu` (the per-round cost of
a ReLU split round is what `tp` shards):
  * one process (`--threads 1`);
  * `--plan tp` over P = 2 ranks (gloo; `DTENSOR_VERIFY_TP_BAB=allow` lifts the plan checker's
    refusal);
  * `--plan replicate --mesh 2x1` over P = 2 ranks (the plan the refusal names: the domains
    are split between the ranks).
Every rank runs one thread. Reported from each run's JSON: verdict, branch-and-bound seconds,
rounds, domains, beta-CROWN iterations, seconds per round and per iteration; with `--count`,
the collectives rank 0 issued (DTensor redistributions and all-reduces) per iteration.
Prints a table and writes OUT/bench_tp_bab.csv.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCALES = [1e-3, 1e3, 1e-1, 1e1]
FIELDS = ["width", "seed", "runner", "verdict", "wall_s", "bab_s", "rounds", "domains", "iterations",
          "s_per_round", "ms_per_iteration", "ratio_per_round", "collectives", "collectives_per_iteration"]


def make(seed: int, width: int, folder: Path) -> tuple[str, str, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    import milp_oracle as mo

    import numpy as np

    if width <= 32:                 # small enough for the MILP: a known `unsat` margin
        inst = mo.instance(seed, n_in=9, hidden=(width,) * 3, n_out=3, gap_range=(1e-4, 1e-4), scales=SCALES,
                           kind="unsat")
    else:                           # wider: the row just below the sampled minimum (verdict unknown)
        rng = np.random.default_rng(seed)
        layers = mo.random_net(rng, 9, [width] * 3, 3, SCALES)
        lo = rng.uniform(-1, 0, 9).astype(np.float32).astype(np.float64)
        hi = lo + rng.uniform(0.05, 0.5, 9).astype(np.float32).astype(np.float64)
        c = np.array([1.0, -1.0, 0.0])
        ys = mo.forward(layers, rng.uniform(lo, hi, (4096, 9))) @ c
        d = float(np.float32(ys.min() - 0.3 * (ys.max() - ys.min())))
        inst = mo.Instance(seed, layers, lo, hi, c, d, "unknown", float(ys.min()), 0.0, 0.0)
    onnx_path, spec = mo.write(inst, folder)
    return onnx_path, spec, inst.expected


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), DTENSOR_VERIFY_TP_BAB="allow")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                "DTENSOR_VERIFY_JOB_START"):
        env.pop(var, None)
    return env


def run_one(runner: str, onnx_path: str, spec: str, timeout: float, folder: Path, count: bool) -> dict:
    js, res = folder / f"{runner.replace(' ', '_')}.json", folder / "r.txt"
    args = ["--threads", "1", "run", "--onnx", onnx_path, "--vnnlib", spec, "--results", str(res),
            "--timeout", str(timeout), "--quiet", "--bab-split", "relu", "--json", str(js)]
    if runner == "one process":
        cmd = [sys.executable, "-m", "dtensor_verify", *args]
    else:
        plan = ["--plan", "tp"] if runner.startswith("tp") else ["--plan", "replicate", "--mesh", "2x1"]
        entry = [str(Path(__file__).resolve()), "--rank-shim", str(folder)] if count else ["-m", "dtensor_verify"]
        cmd = [sys.executable, "-m", "dtensor_verify.launch", "--standalone", "--nproc-per-node", "2",
               *entry, *args, *plan]
    t = time.perf_counter()
    subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout + 120)
    wall = time.perf_counter() - t
    out = {"runner": runner, "wall_s": round(wall, 2), "verdict": "none"}
    if js.exists():
        d = json.loads(js.read_text())
        bab = d.get("bounds", {}).get("bab", {})
        rounds, its = bab.get("rounds", 0), bab.get("beta_iterations", 0)
        out.update(verdict=d["verdict"], bab_s=round(bab.get("seconds", 0.0), 3), rounds=rounds,
                   domains=bab.get("domains_visited", 0), iterations=its,
                   s_per_round=round(bab.get("seconds", 0.0) / rounds, 4) if rounds else "",
                   ms_per_iteration=round(1e3 * bab.get("phases", {}).get("bounding", 0.0) / its, 2) if its else "")
    counts = folder / "collectives_rank0.json"
    if count and counts.exists() and runner != "one process":
        n = sum(json.loads(counts.read_text()).values())
        out["collectives"] = n
        out["collectives_per_iteration"] = round(n / out["iterations"], 1) if out.get("iterations") else ""
        counts.unlink()
    js.unlink(missing_ok=True)
    return out


def rank_shim(folder: str, argv: list[str]) -> None:
    """Run as a torchrun rank: the CLI with its collectives counted (rank 0 writes the counts)."""
    import torch.distributed as dist
    import torch.distributed.tensor._redistribute as redistribute

    counts = collections.Counter()

    def counted(mod, name):
        fn = getattr(mod, name)

        def wrapper(*a, **k):
            counts[name] += 1
            return fn(*a, **k)
        setattr(mod, name, wrapper)

    counted(redistribute, "redistribute_local_tensor")
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "all_gather_object"):
        counted(dist, name)
    real_exit = os._exit

    def dump_and_exit(code=0):          # the CLI leaves with os._exit once its output is flushed
        if os.environ.get("RANK", "0") == "0":
            Path(folder, "collectives_rank0.json").write_text(json.dumps(counts))
        real_exit(code)

    os._exit = dump_and_exit
    from dtensor_verify import cli

    dump_and_exit(cli.main(argv))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rank-shim"]:
        sys.path.insert(0, str(ROOT))
        rank_shim(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--widths", type=int, nargs="+", default=[26])
    ap.add_argument("--seeds", type=int, nargs="+", default=[2])
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--runners", nargs="+", default=["one process", "tp P=2", "replicate 2x1"])
    ap.add_argument("--count", action="store_true", help="count rank 0's collectives (tp / replicate)")
    ap.add_argument("--out", default="docs/trust/tp_bab")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            for seed in args.seeds:
                onnx_path, spec, expected = make(seed, width, Path(tmp))
                base = None
                for runner in args.runners:
                    row = {"width": width, "seed": seed,
                           **run_one(runner, onnx_path, spec, args.timeout, Path(tmp), args.count)}
                    if runner == "one process":
                        base = row.get("s_per_round")
                    if base and row.get("s_per_round"):
                        row["ratio_per_round"] = round(row["s_per_round"] / base, 1)
                    rows.append(row)
                    print(" ".join(f"{k}={row.get(k, '')}" for k in FIELDS), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_tp_bab.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print("| " + " | ".join(FIELDS) + " |\n|" + "---|" * len(FIELDS))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in FIELDS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
