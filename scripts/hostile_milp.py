#!/usr/bin/env python
"""Hostile sweep (issue 18): random small ReLU networks with exact answers from a MILP.

    scripts/hostile_milp.py --n 200 --out docs/trust            # one process
    scripts/hostile_milp.py --n 200 --torchrun 10 --plans fsdp tp spec --out docs/trust

Each instance (tests/milp_oracle.py) is a random fully connected ReLU network, an input box and
one output row placed a random relative gap (log-uniform, 1e-6..1e-2 of the output range) from
the exact minimum that a big-M MILP (scipy.optimize.milp / HiGHS) finds: `sat` or `unsat` with a
known margin. Every instance is run through the verifier in this process (half with the attack
off, so branch and bound and its exact leaves must decide); the first `--torchrun` ones also
under `dtensor_verify.launch` with each plan of `--plans` (P = 2). Counted: wrong verdicts (must
be 0), `unknown` / `timeout` on instances the MILP decides in under a second (must be 0), and
times. Prints a table; writes OUT/hostile_milp.csv (one row per run) and OUT/hostile_milp.md.

`--family scaled`: issue 18's badly scaled 9-input, 3 x 26-ReLU nets instead
(milp_oracle.scaled_instance; `--floor` the smallest gap relative to the output's magnitude);
`--split` forces branch and bound's split kind and `--max-enumerated K` the few-unstable exact
LPs (0: off) in this process.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SIZES = [(2, (8, 8)), (3, (10, 10)), (4, (12, 12, 12)), (5, (16, 16)), (3, (20,))]
FIELDS = ["seed", "size", "expected", "gap", "milp_seconds", "runner", "attack", "verdict", "correct",
          "seconds", "bab_domains", "exact_lp_domains", "message"]


def make(seed: int, family: str = "random", floor: float = 1e-5):
    import milp_oracle as mo

    if family == "scaled":
        return mo.scaled_instance(seed, floor=floor), "9-26x26x26s"
    n_in, hidden = SIZES[seed % len(SIZES)]
    inst = mo.instance(seed, n_in=n_in, hidden=hidden, gap_range=(1e-6, 1e-2))
    return inst, f"{n_in}-{'x'.join(map(str, hidden))}"


def judge(expected: str, verdict: str) -> str:
    if expected not in ("sat", "unsat"):
        return "n/a"                        # the MILP did not finish: no ground truth
    if verdict == expected:
        return "yes"
    return "WRONG" if verdict in ("sat", "unsat") else "no"


def run_local(onnx_path, spec, timeout: float, attack: bool, split: str | None = None) -> dict:
    import dtensor_verify as dv
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance

    t = time.perf_counter()
    model = dv.load(onnx_path)
    opts = None
    if split is not None:
        from dtensor_verify.bab import BabOptions
        opts = BabOptions(split=split)
    res = verify_instance(model, read_vnnlib(spec, model.n_inputs, model.n_outputs), onnx_path, timeout,
                          attack=attack, bab_options=opts)
    bab = res.bounds.get("bab", {})
    return {"verdict": res.verdict, "seconds": time.perf_counter() - t, "message": res.message or "",
            "bab_domains": bab.get("domains_visited", 0),
            "exact_lp_domains": (bab.get("exact_lp") or {}).get("domains", 0)}


def run_torchrun(onnx_path, spec, timeout: float, plan: str, nproc: int = 2, mesh: str | None = None,
                 attack: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "r.txt"
        cmd = [sys.executable, "-m", "dtensor_verify.launch", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "dtensor_verify", "--threads", "1", "run", "--onnx", onnx_path, "--vnnlib", spec,
               "--results", str(res), "--timeout", str(timeout), "--plan", plan, "--quiet",
               *(["--mesh", mesh] if mesh else []), *([] if attack else ["--no-attack"])]
        # DTENSOR_VERIFY_TP_BAB=allow: the sweep checks tp's verdicts, not its speed (the plan
        # checker refuses tp for branch and bound on small CPU models: placements/bab_check.py).
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), DTENSOR_VERIFY_TP_BAB="allow")
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
            env.pop(var, None)
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 60)
        verdict = res.read_text().split("\n")[0] if res.exists() else "none"
        return {"verdict": verdict, "seconds": time.perf_counter() - t, "bab_domains": "", "exact_lp_domains": "",
                "message": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else ""}


def sweep(n: int, first: int, timeout: float, torchrun: int, plans: list[str], folder: Path, log=print,
          family: str = "random", split: str | None = None, floor: float = 1e-5) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    rows = []
    for seed in range(first, first + n):
        inst, size = make(seed, family, floor)
        onnx_path, spec = __import__("milp_oracle").write(inst, folder)
        base = {"seed": seed, "size": size, "expected": inst.expected, "gap": f"{inst.gap:.3g}",
                "milp_seconds": round(inst.milp_seconds, 3)}
        runs = [("one process", seed % 2 == 0, lambda a: run_local(onnx_path, spec, timeout, a, split))]
        if seed - first < torchrun:
            for plan in plans:
                mesh = "2x1" if plan == "2x1" else None
                runs.append((f"torchrun {plan}", True,
                             lambda a, p=plan, m=mesh: run_torchrun(onnx_path, spec, timeout,
                                                                    "replicate" if m else p, mesh=m, attack=a)))
        for runner, attack, fn in runs:
            out = fn(attack)
            row = {**base, "runner": runner, "attack": attack, **out,
                   "correct": judge(inst.expected, out["verdict"])}
            row["seconds"] = round(row["seconds"], 3)
            rows.append(row)
            if log:
                log(f"{seed:4d} {size:12s} {inst.expected:6s} gap {inst.gap:9.2e} milp {inst.milp_seconds:5.2f}s "
                    f"{runner:18s} attack={'on ' if attack else 'off'} -> {out['verdict']:8s} "
                    f"{out['seconds']:6.2f}s {row['correct']}")
    return rows


def summary(rows: list[dict]) -> list[list]:
    table = []
    for runner in sorted({r["runner"] for r in rows}):
        rs = [r for r in rows if r["runner"] == runner]
        judged = [r for r in rs if r["correct"] != "n/a"]
        fast = [r for r in judged if float(r["milp_seconds"]) < 1.0]
        secs = [float(r["seconds"]) for r in rs]
        table.append([runner, len(rs), len(judged), sum(r["correct"] == "yes" for r in judged),
                      sum(r["correct"] == "WRONG" for r in rs),
                      sum(r["verdict"] in ("unknown", "timeout") for r in fast), len(fast),
                      sum(r["verdict"] == "error" for r in rs),
                      f"{statistics.median(secs):.2f}" if secs else "", f"{max(secs):.2f}" if secs else ""])
    return table


HEADER = ["runner", "runs", "with MILP answer", "correct", "wrong", "unknown/timeout (MILP < 1 s)",
          "MILP < 1 s", "error", "median s", "max s"]


def markdown(table) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--n", type=int, default=100, help="instances")
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=30.0, help="per run, seconds")
    ap.add_argument("--torchrun", type=int, default=0, metavar="K", help="also run the first K under torchrun")
    ap.add_argument("--plans", nargs="+", default=["fsdp", "tp", "spec", "2x1"])
    ap.add_argument("--out", default="docs/trust", help="folder for hostile_milp.csv / .md")
    ap.add_argument("--family", choices=["random", "scaled"], default="random",
                    help="scaled: issue 18's badly scaled 9-input 3 x 26-ReLU nets (milp_oracle.scaled_instance)")
    ap.add_argument("--floor", type=float, default=1e-5,
                    help="scaled: the gap is at least this fraction of the output's magnitude (float32 rounding)")
    ap.add_argument("--max-enumerated", type=int, default=None, metavar="K",
                    help="one process: domains with at most K unstable neurons go to the exact LP, one per "
                         "phase pattern (default: bab/exact.py's MAX_ENUMERATED; 0: off)")
    ap.add_argument("--split", choices=["auto", "relu", "input"], default=None,
                    help="branch and bound's split kind in this process (default: the verifier's)")
    args = ap.parse_args(argv)
    if args.max_enumerated is not None:
        from dtensor_verify.bab import exact
        exact.MAX_ENUMERATED = args.max_enumerated
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = sweep(args.n, args.first_seed, args.timeout, args.torchrun, args.plans, Path(tmp),
                     family=args.family, split=args.split, floor=args.floor)
    with open(out / "hostile_milp.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    md = markdown(summary(rows))
    (out / "hostile_milp.md").write_text(md + "\n")
    print(md)
    bad = any(r["correct"] == "WRONG" for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
