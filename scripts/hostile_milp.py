#!/usr/bin/env python
"""Hostile sweep (issue 18): random small ReLU networks with exact answers from a MILP.

    scripts/hostile_milp.py --n 200 --out docs/trust            # one process
    scripts/hostile_milp.py --n 200 --torchrun 10 --plans fsdp tp spec --out docs/trust
    # the torchrun sample for a quiet machine (P = 2 a run, --jobs runs at once):
    scripts/hostile_milp.py --n 40 --first-seed 4000 --timeout 60 --torchrun 40 --plans fsdp spec 2x1 \
        --jobs 6 --out out/hostile_torchrun

Each instance (tests/milp_oracle.py) is a random fully connected ReLU network, an input box and
one output row placed a random relative gap (log-uniform, 1e-6..1e-2 of the output range) from
the exact minimum that a big-M MILP (scipy.optimize.milp / HiGHS) finds: `sat` or `unsat` with a
known margin. Every instance is run through the verifier in this process (half with the attack
off, so branch and bound and its exact leaves must decide); the first `--torchrun` ones also
under `dtensor_verify.launch` with each plan of `--plans` (P = 2, one torch thread a rank; `--jobs J`
of these at once once every instance's one-process run is done). Counted: wrong verdicts (must
be 0), `unknown` / `timeout` on instances the MILP decides in under a second (must be 0), and
times; a torchrun run's start-up (launcher start to rank 0's verification start, from its
`run --json`) is a column of its own. Prints a table; writes OUT/hostile_milp.csv (one row per
run) and OUT/hostile_milp.md (the table and the conditions: CPUs, load, torch, the command).

`--family scaled`: issue 18's badly scaled 9-input, 3 x 26-ReLU nets instead
(milp_oracle.scaled_instance; `--floor` the smallest gap relative to the output's magnitude);
`--family conjunction`: the random row ANDed with 2 rows that hold on the whole box
(milp_oracle.conjunction_instance; branch and bound drops them, `rows_bounded`);
`--split` forces branch and bound's split kind and `--max-enumerated K` the few-unstable exact
LPs (0: off) in this process.
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
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SIZES = [(2, (8, 8)), (3, (10, 10)), (4, (12, 12, 12)), (5, (16, 16)), (3, (20,))]
FIELDS = ["seed", "size", "expected", "gap", "milp_seconds", "runner", "attack", "verdict", "correct",
          "seconds", "startup_s", "launch_s", "imports_s", "load_s", "plan_s", "verify_s", "bab_domains",
          "exact_lp_domains", "rows_bounded", "all_gathers", "broadcasts", "decided_by", "output_constraints",
          "message"]


def make(seed: int, family: str = "random", floor: float = 1e-5):
    import milp_oracle as mo

    if family == "scaled":
        return mo.scaled_instance(seed, floor=floor), "9-26x26x26s"
    if family == "conjunction":
        inst = mo.conjunction_instance(seed)
        hidden = [len(b) for _, b in inst.weights[:-1]]
        return inst, f"{len(inst.lower)}-{'x'.join(map(str, hidden))}+{len(inst.extra)}rows"
    n_in, hidden = SIZES[seed % len(SIZES)]
    inst = mo.instance(seed, n_in=n_in, hidden=hidden, gap_range=(1e-6, 1e-2))
    return inst, f"{n_in}-{'x'.join(map(str, hidden))}"


def judge(expected: str, verdict: str) -> str:
    if expected not in ("sat", "unsat"):
        return "n/a"                        # the MILP did not finish: no ground truth
    if verdict == expected:
        return "yes"
    return "WRONG" if verdict in ("sat", "unsat") else "no"


def run_local(onnx_path, spec, timeout: float, attack: bool, split: str | None = None, oc: str | None = None) -> dict:
    import dtensor_verify as dv
    from dtensor_verify.benchmark_csv import output_constraints_cell
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance

    t = time.perf_counter()
    model = dv.load(onnx_path)
    opts = None
    if split is not None or oc is not None:
        from dtensor_verify.bab import BabOptions
        opts = BabOptions(split=split or "auto")
        if oc is not None:
            opts.output_constraints = oc
    res = verify_instance(model, read_vnnlib(spec, model.n_inputs, model.n_outputs), onnx_path, timeout,
                          attack=attack, bab_options=opts)
    bab = res.bounds.get("bab", {})
    return {"verdict": res.verdict, "seconds": time.perf_counter() - t, "message": res.message or "",
            "bab_domains": bab.get("domains_visited", 0), "decided_by": res.decided_by or "",
            "output_constraints": output_constraints_cell(res.bounds.get("output_constraints")),
            "exact_lp_domains": (bab.get("exact_lp") or {}).get("domains", 0),
            "rows_bounded": "{kept}/{of}".format(**bab["rows_bounded"]) if bab.get("rows_bounded") else ""}


def run_torchrun(onnx_path, spec, timeout: float, plan: str, nproc: int = 2, mesh: str | None = None,
                 attack: bool = True, launcher: str = "fast", oc: str | None = None, split: str | None = None) -> dict:
    """One job under dtensor_verify.launch; `launcher` "torchrun": torch.distributed.run starts the
    ranks (DTENSOR_VERIFY_LAUNCHER=torchrun), "fast": the launcher's own torch-free start."""
    with tempfile.TemporaryDirectory() as tmp:
        res, report = Path(tmp) / "r.txt", Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "dtensor_verify.launch", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "dtensor_verify", "--threads", "1", "run", "--onnx", onnx_path, "--vnnlib", spec,
               "--results", str(res), "--timeout", str(timeout), "--plan", plan, "--quiet", "--json", str(report),
               "--device", "cpu",       # CPU gloo ranks, also on a host with fewer GPUs than ranks
               *(["--mesh", mesh] if mesh else []), *([] if attack else ["--no-attack"]),
               *(["--output-constraints", oc] if oc else []), *(["--bab-split", split] if split else [])]
        # DTENSOR_VERIFY_TP_BAB=allow: the sweep checks tp's verdicts, not its speed (the plan
        # checker refuses tp for branch and bound on small CPU models: placements/bab_check.py).
        # The checkout first, the caller's path kept (e.g. wheels unpacked beside the repository on a GPU host).
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, DTENSOR_VERIFY_TP_BAB="allow")
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                    "DTENSOR_VERIFY_LAUNCHER"):
            env.pop(var, None)
        if launcher == "torchrun":
            env["DTENSOR_VERIFY_LAUNCHER"] = "torchrun"
        launched, t = time.time(), time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 60)
        verdict = res.read_text().split("\n")[0] if res.exists() else "none"
        return {"verdict": verdict, "seconds": time.perf_counter() - t, "bab_domains": "", "exact_lp_domains": "",
                **startup_columns(report, launched),
                "message": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else ""}


def startup_columns(report: Path, launched: float) -> dict:
    """Rank 0's start-up from its `run --json`: launcher start -> rank 0's main(), its imports,
    model load, property, plan (process group included), and the whole start-up (up to the
    verification's start); empty where no JSON was written (a run ended by its time limit)."""
    try:
        data = json.loads(report.read_text())
        up = data["startup"]
        cols = {"launch_s": up["main_entered_at"] - launched, "imports_s": up["imports"], "load_s": up["load"],
                "plan_s": up["plan"], "verify_s": up["verify"]}
        cols["startup_s"] = cols["launch_s"] + up["imports"] + up["load"] + up["property"] + up["plan"]
        bab = data.get("bounds", {}).get("bab", {}) if isinstance(data.get("bounds"), dict) else {}
        weights = data.get("weight_collectives") or {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    from dtensor_verify.benchmark_csv import output_constraints_cell

    oc = data.get("bounds", {}).get("output_constraints") if isinstance(data.get("bounds"), dict) else None
    return {**{k: round(v, 3) for k, v in cols.items()}, "bab_domains": bab.get("domains_visited", ""),
            "output_constraints": output_constraints_cell(oc), "decided_by": data.get("decided_by") or "",
            "exact_lp_domains": (bab.get("exact_lp") or {}).get("domains", ""),
            "all_gathers": weights.get("all_gathers", ""), "broadcasts": weights.get("broadcast", "")}


def sweep(n: int, first: int, timeout: float, torchrun: int, plans: list[str], folder: Path, log=print,
          family: str = "random", split: str | None = None, floor: float = 1e-5, jobs: int = 1,
          launchers=("fast",), on_row=None, oc: str | None = None) -> list[dict]:
    """Every instance in this process first (one at a time), then the torchrun runs, `jobs` at once;
    `on_row(row)` sees each row as it is made (a run cut off at a wall clock keeps what it had)."""
    import torch

    torch.set_num_threads(1)
    rows, later = [], []
    for seed in range(first, first + n):
        inst, size = make(seed, family, floor)
        onnx_path, spec = __import__("milp_oracle").write(inst, folder)
        base = {"seed": seed, "size": size, "expected": inst.expected, "gap": f"{inst.gap:.3g}",
                "milp_seconds": round(inst.milp_seconds, 3)}
        rows.append(_row(base, inst, "one process", seed % 2 == 0,
                         run_local(onnx_path, spec, timeout, seed % 2 == 0, split, oc), log, on_row))
        if seed - first < torchrun:
            for plan in plans:
                mesh = "2x1" if plan == "2x1" else None
                for launcher in launchers:
                    later.append((base, inst, f"torchrun {plan}" + ("" if launcher == "fast" else " [torchrun]"),
                                  (onnx_path, spec, timeout, "replicate" if mesh else plan, 2, mesh, True, launcher, oc,
                                   split)))
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = {pool.submit(run_torchrun, *a): (b, i, r) for b, i, r, a in later}
        for fut in as_completed(futures):
            base, inst, runner = futures[fut]
            try:
                out = fut.result()
            except Exception as exc:    # noqa: BLE001 - e.g. a job past its limit + 60 s: counted, not fatal
                out = {"verdict": "error", "seconds": timeout + 60, "message": f"{type(exc).__name__}: {exc}"[:200]}
            rows.append(_row(base, inst, runner, True, out, log, on_row))
    order = {"one process": 0, **{f"torchrun {p}": 2 * i + 1 for i, p in enumerate(plans)},
             **{f"torchrun {p} [torchrun]": 2 * i + 2 for i, p in enumerate(plans)}}
    return sorted(rows, key=lambda r: (r["seed"], order.get(r["runner"], 99)))


def _row(base: dict, inst, runner: str, attack: bool, out: dict, log, on_row=None) -> dict:
    row = {**base, "runner": runner, "attack": attack, **out, "correct": judge(inst.expected, out["verdict"])}
    row["seconds"] = round(row["seconds"], 3)
    if on_row:
        on_row(row)
    if log:
        up = f" (start-up {out['startup_s']:.1f}s)" if out.get("startup_s") not in (None, "") else ""
        log(f"{base['seed']:4d} {base['size']:12s} {inst.expected:6s} gap {inst.gap:9.2e} milp "
            f"{inst.milp_seconds:5.2f}s {runner:18s} attack={'on ' if attack else 'off'} -> {out['verdict']:8s} "
            f"{out['seconds']:6.2f}s {row['correct']}{up}", flush=True)
    return row


def summary(rows: list[dict]) -> list[list]:
    table = []
    for runner in sorted({r["runner"] for r in rows}):
        rs = [r for r in rows if r["runner"] == runner]
        judged = [r for r in rs if r["correct"] != "n/a"]
        fast = [r for r in judged if float(r["milp_seconds"]) < 1.0]
        secs = [float(r["seconds"]) for r in rs]
        ups = [float(r["startup_s"]) for r in rs if r.get("startup_s") not in (None, "")]
        verify = [float(r["verify_s"]) for r in rs if r.get("verify_s") not in (None, "")]
        gathers = [int(r["all_gathers"]) for r in rs if r.get("all_gathers") not in (None, "")]
        table.append([runner, len(rs), len(judged), sum(r["correct"] == "yes" for r in judged),
                      sum(r["correct"] == "WRONG" for r in rs),
                      sum(r["verdict"] in ("unknown", "timeout") for r in fast), len(fast),
                      sum(r["verdict"] == "error" for r in rs), _stat(statistics.median, secs), _stat(max, secs),
                      _stat(statistics.median, ups), _stat(max, ups), _stat(statistics.median, verify),
                      _stat(max, verify), sum(gathers) if gathers else "", max(gathers) if gathers else ""])
    return table


def _stat(fn, values: list[float]) -> str:
    return f"{fn(values):.2f}" if values else ""


HEADER = ["runner", "runs", "with MILP answer", "correct", "wrong", "unknown/timeout (MILP < 1 s)",
          "MILP < 1 s", "error", "median s", "max s", "median start-up s", "max start-up s", "median verify s",
          "max verify s", "weight all-gathers (sum)", "weight all-gathers (max)"]


def conditions(args, argv, seconds: float, load_before) -> str:
    """The run's conditions, for the .md next to the table."""
    import torch

    cmd = " ".join(["scripts/hostile_milp.py", *(sys.argv[1:] if argv is None else argv)])
    return (f"`{cmd}`: {os.cpu_count()} CPUs, torch {torch.__version__}, device cpu, one torch thread a process "
            f"(torchrun: P = 2, gloo; {args.jobs} run(s) at once; {_hold_words(os.environ.get('DTENSOR_VERIFY_HOLD_BYTES'))}), limit {args.timeout:g} s a run; load average "
            f"{'/'.join(f'{x:.1f}' for x in load_before)} before, "
            f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} after; {seconds:.0f} s in all. "
            f"Start-up: launcher start to rank 0's verification start (its `run --json`).")


def _hold_words(hold_bytes: str | None) -> str:
    if hold_bytes is None:
        return "weights held for a search within the default budget (placements/hold.py)"
    return f"DTENSOR_VERIFY_HOLD_BYTES={hold_bytes}" + (" (per-step gathers)" if hold_bytes.strip() == "0" else "")


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
    ap.add_argument("--plans", nargs="+", default=["fsdp", "tp", "spec", "2x1"],
                    help="2x1: --plan replicate --mesh 2x1 (the ranks split the domains)")
    ap.add_argument("--launchers", nargs="+", choices=["fast", "torchrun"], default=["fast"],
                    help="who starts the ranks: dtensor_verify.launch's torch-free start (fast), or "
                         "torch.distributed.run (torchrun; runner name ends in [torchrun]); both: side by side")
    ap.add_argument("--jobs", type=int, default=1, metavar="J",
                    help="torchrun runs at once (each P = 2 processes of one thread: J <= CPUs / 2 - 1)")
    ap.add_argument("--out", default="docs/trust", help="folder for hostile_milp.csv / .md")
    ap.add_argument("--family", choices=["random", "scaled", "conjunction"], default="random",
                    help="scaled: issue 18's badly scaled 9-input 3 x 26-ReLU nets (milp_oracle.scaled_instance); "
                         "conjunction: the random row ANDed with 2 rows true on the box (milp_oracle."
                         "conjunction_instance: branch and bound drops them, bab/focus_rows.py)")
    ap.add_argument("--floor", type=float, default=1e-5,
                    help="scaled: the gap is at least this fraction of the output's magnitude (float32 rounding)")
    ap.add_argument("--max-enumerated", type=int, default=None, metavar="K",
                    help="one process: domains with at most K unstable neurons go to the exact LP, one per "
                         "phase pattern (default: bab/exact.py's MAX_ENUMERATED; 0: off)")
    ap.add_argument("--split", choices=["auto", "relu", "input"], default=None,
                    help="branch and bound's split kind in this process (default: the verifier's)")
    ap.add_argument("--output-constraints", choices=["auto", "off", "last"], default=None,
                    help="branch and bound's roots tightened by the output constraints (every runner; "
                         "default: the verifier's)")
    ap.add_argument("--hold-bytes", type=int, default=None, metavar="B",
                    help="torchrun runs: hold at most B bytes of fsdp / spec weights gathered for a search "
                         "(DTENSOR_VERIFY_HOLD_BYTES; 0: gather per step, the behaviour before; default: "
                         "placements/hold.py's budget)")
    args = ap.parse_args(argv)
    if args.hold_bytes is not None:
        os.environ["DTENSOR_VERIFY_HOLD_BYTES"] = str(args.hold_bytes)     # the ranks inherit it
    if args.max_enumerated is not None:
        from dtensor_verify.bab import exact
        exact.MAX_ENUMERATED = args.max_enumerated
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before, t = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, open(out / "hostile_milp.partial.csv", "w", newline="") as part:
        partial = csv.DictWriter(part, fieldnames=FIELDS, extrasaction="ignore")
        partial.writeheader()

        def keep(row):                      # rows as they come, flushed: a killed sweep keeps them
            partial.writerow(row)
            part.flush()

        rows = sweep(args.n, args.first_seed, args.timeout, args.torchrun, args.plans, Path(tmp),
                     family=args.family, split=args.split, floor=args.floor, jobs=args.jobs,
                     launchers=args.launchers, on_row=keep, oc=args.output_constraints)
    (out / "hostile_milp.partial.csv").unlink()
    with open(out / "hostile_milp.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    md = markdown(summary(rows)) + "\n\n" + conditions(args, argv, time.perf_counter() - t, load_before)
    (out / "hostile_milp.md").write_text(md + "\n")
    print(md)
    print(f"wrote {out / 'hostile_milp.csv'} and {out / 'hostile_milp.md'}")
    bad = any(r["correct"] == "WRONG" for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
