#!/usr/bin/env python3
"""Where a rank's start-up goes: one process and P ranks, phase by phase, before/after side by side.

    .venv/bin/python scripts/startup_phases.py [--before REV] [--ranks 2] [--repeats 3]
        [--plan replicate] [--csv out/startup_phases.csv] [--onnx M --vnnlib S]

Each repeat starts, for each checkout (this one, and `--before REV` exported by `git archive`)
and for P = 1 and P = `--ranks`, fresh `python` processes that do what a `run` rank does, timing
each step (P > 1: the environment torchrun gives, gloo on CPU; the column is the rank that finished last):

  interpreter      process start -> first line of the worker (python, site)
  import cli       dtensor_verify.cli (argparse; what runs before the arguments are parsed)
  import torch     torch
  import engine    dtensor_verify.api / verify, onnx2torch (cli_run._import_engine)
  load model       ONNX -> torch.fx -> bound graph, incl. the onnxruntime self-check
  read vnnlib      the property
  process group    init_process_group + the device mesh (P > 1 only)
  apply plan       placements.apply_plan (`--plan`; P = 1: none)
  first optimiser  alpha-CROWN's optimiser built and stepped once (methods/optimize.maximise)
  verify           verify_instance (attack, CROWN, alpha, ...; first-use imports inside)
  total            process start -> verdict

Prints the median per phase (a shared machine: medians of interleaved repeats) and writes one
CSV row per (checkout, P, repeat, rank, phase). Default instance: a 3-input 2 x 8-ReLU net of
tests/milp_oracle.py (written to a temporary folder), so only start-up, not verification, counts.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["interpreter", "import cli", "import torch", "import engine", "load model", "read vnnlib",
          "process group", "apply plan", "first optimiser", "verify", "total"]


def _process_age() -> float:
    with open("/proc/self/stat", "rb") as fh:
        start_ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])
    with open("/proc/uptime", "rb") as fh:
        return float(fh.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")


def worker(onnx: str, vnnlib: str, plan: str) -> None:
    """One rank: print {phase: seconds} as one JSON line (rank 0 and every other rank alike)."""
    out = {"interpreter": _process_age()}
    last = time.perf_counter()

    def lap(phase):
        nonlocal last
        now = time.perf_counter()
        out[phase], last = now - last, now

    import dtensor_verify.cli  # noqa: F401
    lap("import cli")
    import torch
    torch.set_num_threads(1)
    lap("import torch")
    from dtensor_verify.cli_run import _import_engine
    _import_engine()
    lap("import engine")
    from dtensor_verify.cli_common import load_model, read_property
    model = load_model(onnx, torch.device("cpu"))
    lap("load model")
    prop = read_property(vnnlib, model)
    lap("read vnnlib")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from placements.apply import apply_plan
        from placements.mesh import init_mesh
        mesh = init_mesh(backend="gloo", timeout_s=120.0)
        lap("process group")
        apply_plan(model, plan, mesh)
        lap("apply plan")
    _first_optimiser(model)
    lap("first optimiser")
    from dtensor_verify.verify import verify_instance
    res = verify_instance(model, prop, onnx, 60.0)
    lap("verify")
    out["total"] = _process_age()
    out["verdict"] = res.verdict
    out["module"] = str(Path(dtensor_verify.cli.__file__).parents[1])
    print("PHASES " + json.dumps(out), flush=True)


def _first_optimiser(model) -> None:
    import torch
    from dtensor_verify.methods.optimize import ParamGroup, maximise

    p = torch.zeros(4, requires_grad=True)
    maximise([ParamGroup([p], 0.1, 0.0, 1.0)], lambda it: (-(p.sum()), None), lambda s: (0.0, True), 1,
             model.layout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(checkout: Path, ranks: int, args) -> list[dict]:
    """Start `ranks` workers on `checkout`; their phase dicts (rank order)."""
    env = dict(os.environ, PYTHONPATH=f"{checkout}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    port = _free_port()
    procs = []
    for r in range(ranks):
        e = dict(env)
        if ranks > 1:
            e.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks), LOCAL_WORLD_SIZE=str(ranks),
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, str(ROOT / "scripts" / "startup_phases.py"), "--worker", "--onnx", args.onnx,
               "--vnnlib", args.vnnlib, "--plan", args.plan]
        procs.append(subprocess.Popen(cmd, env=e, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    rows = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        line = [ln for ln in out.splitlines() if ln.startswith("PHASES ")]
        if p.returncode != 0 or not line:
            sys.exit(f"startup_phases: a worker on {checkout} failed ({p.returncode}): {err.strip()[-400:]}")
        rows.append(json.loads(line[-1][len("PHASES "):]))
    return rows


def export(rev: str, into: Path) -> Path:
    """`git archive REV` of this repository, unpacked into `into`."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def default_instance(folder: Path) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    import milp_oracle as mo

    onnx, spec = mo.write(mo.instance(5, n_in=3, hidden=(8, 8)), folder)
    return str(onnx), str(spec)


def measure(checkouts: dict[str, Path], args) -> list[dict]:
    rows = []
    for rep in range(args.repeats):
        for ranks in (1, args.ranks):
            for label, path in checkouts.items():          # interleaved: the load hits both alike
                for rank, phases in enumerate(run_ranks(path, ranks, args)):
                    if Path(phases["module"]).resolve() != path.resolve():
                        sys.exit(f"startup_phases: {label} imported dtensor_verify from {phases['module']}")
                    for phase in PHASES:
                        rows.append({"checkout": label, "ranks": ranks, "repeat": rep, "rank": rank,
                                     "phase": phase, "seconds": phases.get(phase, 0.0),
                                     "verdict": phases["verdict"]})
    return rows


def _slowest_rank(rows: list[dict], label: str, ranks: int, phase: str) -> list[float]:
    """Per repeat, `phase` of the rank that finished last (its own costs: it waits least)."""
    mine = [r for r in rows if (r["checkout"], r["ranks"]) == (label, ranks)]
    totals = {(r["repeat"], r["rank"]): r["seconds"] for r in mine if r["phase"] == "total"}
    last = {rep: max((t, k[1]) for k, t in totals.items() if k[0] == rep)[1] for rep, _ in totals}
    return [r["seconds"] for r in mine if r["phase"] == phase and last[r["repeat"]] == r["rank"]]


def table(rows: list[dict], checkouts, ranks: int) -> str:
    cols = [(label, p) for p in (1, ranks) for label in checkouts]
    head = ["phase"] + [f"{label} P={p}" for label, p in cols]
    lines = [" | ".join(f"{h:>15}" for h in head)]
    for phase in PHASES:
        cells = [phase]
        for label, p in cols:
            cells.append(f"{statistics.median(_slowest_rank(rows, label, p, phase)):.2f}")
        lines.append(" | ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--onnx")
    ap.add_argument("--vnnlib")
    ap.add_argument("--plan", default="replicate")
    ap.add_argument("--before", metavar="REV", help="also measure this git revision (git archive)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--csv", default="out/startup_phases.csv")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.onnx, args.vnnlib, args.plan)
        os._exit(0)         # as `run` leaves (run_guard.flush_and_exit): no gloo tear-down at exit
    with tempfile.TemporaryDirectory() as tmp:
        if not args.onnx:
            args.onnx, args.vnnlib = default_instance(Path(tmp))
        checkouts = {"after": ROOT} if args.before else {"now": ROOT}
        if args.before:
            checkouts = {f"before {args.before}": export(args.before, Path(tmp) / "before"), **checkouts}
        rows = measure(checkouts, args)
    print(f"torch threads 1, CPU, ranks over gloo; median of {args.repeats} repeats; load {os.getloadavg()}")
    print(table(rows, checkouts, args.ranks))
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
