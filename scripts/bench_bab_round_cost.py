#!/usr/bin/env python
"""A ReLU branch-and-bound round's cost, before / after the per-step cuts of issue 21, side by side in one process.

    scripts/bench_bab_round_cost.py --out OUT [--repeats 2] [--timeout 60] [--bench-root DIR] [ONNX VNNLIB]

Runs `dtensor-verify --threads 1 run` in this process on one instance (default mnist-net_256x4
prop_8_0.03), alternating two modes per repeat: `before` (the per-step work as it was: each ReLU's
relaxation recomputed every beta-CROWN step, Adam and the projection tensor by tensor, put back by
patching) and `after` (the code as it is: `ops/relu.fixed_bounds_memo`, `torch._foreach_*`). Every
round of branch and bound is timed (process CPU time of `BabSolver._bound_children`: bounding,
branching, attack, storing), and a line `ms = fixed + per_child * children` is fitted through the rounds
(Theil-Sen, robust to rounds slowed by other processes). Columns per mode (medians over repeats): verdict, rounds, domains, CPU s in branch
and bound, ms per round, the fit's fixed ms per round and ms per child. The two modes must visit the
same domains (the script says so when they do not).

Writes OUT/bab_round_cost.csv (every run), OUT/bab_round_cost_rounds.csv (every round) and
OUT/bab_round_cost.md (the table and the conditions: load, torch, commit) and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ONNX = "mnist_fc/onnx/mnist-net_256x4.onnx.gz"
VNNLIB = "mnist_fc/vnnlib/prop_8_0.03.vnnlib.gz"


@contextlib.contextmanager
def before_mode():
    """The per-step work as before the cuts (the relaxation every step, per-tensor Adam / clamps)."""
    import dtensor_verify.methods.adam as adam
    import dtensor_verify.methods.beta_crown as beta
    import dtensor_verify.methods.optimize as optimize

    def project(group):
        for p in group.params:
            p.clamp_(group.low, group.high)

    saved = beta.fixed_bounds_memo, adam._can_batch, optimize.ParamGroup.project_
    beta.fixed_bounds_memo, adam._can_batch = contextlib.nullcontext, (lambda *a: False)
    optimize.ParamGroup.project_ = project
    try:
        yield
    finally:
        beta.fixed_bounds_memo, adam._can_batch, optimize.ParamGroup.project_ = saved


def run_once(onnx: Path, vnnlib: Path, timeout: float) -> dict:
    """One in-process run; its rounds as (children, CPU ms)."""
    import json

    import dtensor_verify.run_guard as guard
    from dtensor_verify import cli
    from dtensor_verify.bab import solver

    rounds = []
    real = solver.BabSolver._bound_children

    def timed(self, parents):
        c, before = time.process_time(), self.stats.bounded
        real(self, parents)
        rounds.append((self.stats.bounded - before, 1000 * (time.process_time() - c)))

    class Exit(Exception):
        pass

    def no_exit(code):
        raise Exit(code)

    with tempfile.TemporaryDirectory() as tmp:
        saved_exit, solver.BabSolver._bound_children, guard.flush_and_exit = guard.flush_and_exit, timed, no_exit
        try:
            cli.main(["--threads", "1", "run", "--onnx", str(onnx), "--vnnlib", str(vnnlib), "--timeout", str(timeout),
                      "--json", f"{tmp}/j.json", "--results", f"{tmp}/r.txt", "--quiet"])
        except (Exit, SystemExit):
            pass
        finally:
            solver.BabSolver._bound_children, guard.flush_and_exit = real, saved_exit
        out = json.loads(Path(f"{tmp}/j.json").read_text())
    bab = (out.get("bounds") or {}).get("bab") or {}
    return {"verdict": out["verdict"], "rounds": rounds, "domains": bab.get("domains_visited"),
            "bab_cpu_s": sum(ms for _, ms in rounds) / 1000}


def capture_largest(onnx: Path, vnnlib: Path, timeout: float):
    """One run that keeps the largest round's children (the solver and a copy of its batch)."""
    from dtensor_verify.bab import solver

    kept, real = [], solver.BabSolver._bound

    def keep(self, domains, iterations):
        if iterations > 0 and (not kept or len(domains) > len(kept[0][1])):
            kept[:] = [(self, domains.index(torch_arange(len(domains))), iterations)]
        return real(self, domains, iterations)

    solver.BabSolver._bound = keep
    try:
        run_once(onnx, vnnlib, timeout)
    finally:
        solver.BabSolver._bound = real
    return kept[0]


def torch_arange(n: int):
    import torch

    return torch.arange(n)


def replay(captured, sizes=(1, 8, 32, 128), reps: int = 5) -> list[dict]:
    """beta-CROWN on the first n of the captured children (all steps: patience off), the two modes
    alternating; median CPU ms of `reps` calls each, and whether the bounds are bitwise equal."""
    import torch

    from dtensor_verify.methods.beta_crown import BetaOptions, beta_crown

    solver, domains, steps = captured
    p, rows = solver.problem, []
    opts = BetaOptions(**{**solver.opts.beta.__dict__, "iterations": steps, "patience": 10 ** 6})
    for n in [k for k in sizes if k < len(domains)] + [len(domains)]:
        dom = domains.index(torch.arange(n))
        times, lower = {"before": [], "after": []}, {}
        for _ in range(reps):
            for mode in ("before", "after"):
                with before_mode() if mode == "before" else contextlib.nullcontext():
                    c = time.process_time()
                    r = beta_crown(p.graph, p.bounds_of(dom), p.C[dom.pair], p.d[dom.pair], p.row_mask[dom.pair],
                                   dom.alphas, dom.betas, dom.signs, p.layout, opts)
                    times[mode].append(1000 * (time.process_time() - c))
                lower[mode] = r.lower
        rows.append({"children": n, "steps": r.iterations, "before_ms": statistics.median(times["before"]),
                     "after_ms": statistics.median(times["after"]),
                     "bitwise_equal": bool(torch.equal(lower["before"], lower["after"]))})
        print(f"replay {n} children: before {rows[-1]['before_ms']:.1f} ms, after {rows[-1]['after_ms']:.1f} ms, "
              f"equal {rows[-1]['bitwise_equal']}", flush=True)
    return rows


def fit(rounds):
    """The line ms = a + b * children through the rounds, (a, b), by Theil-Sen (b: the median of the
    slopes between pairs of rounds; a: the median of ms - b * children): a round slowed by the
    load (the other helpers' processes) moves it less than least squares."""
    pairs = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(rounds) for x2, y2 in rounds[i + 1:] if x2 != x1]
    if not pairs:
        return float("nan"), float("nan")
    b = statistics.median(pairs)
    return statistics.median(y - b * x for x, y in rounds), b


def conditions(load_before: str) -> list[str]:
    import torch

    # DTENSOR_VERIFY_COMMIT: the caller's commit where the checkout's git metadata is stale (a device copy)
    commit = os.environ.get("DTENSOR_VERIFY_COMMIT") or subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return [f"- machine: {os.cpu_count()} cores ({platform.machine()}), load average before {load_before}, "
            f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            f"- torch {torch.__version__}, Python {platform.python_version()}, commit {commit}; one thread, "
            "--device auto (CPU here), one process"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bench-root", type=Path, default=ROOT.parent.parent / "shared" / "benchmarks")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--replay", action="store_true", help="also time beta-CROWN alone on the largest round's "
                   "first 1 / 8 / 32 / 128 / all children, the modes alternating")
    p.add_argument("files", nargs="*", default=[ONNX, VNNLIB], help="ONNX VNNLIB (relative to --bench-root)")
    args = p.parse_args()
    onnx, vnnlib = (args.bench_root / f for f in args.files)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = []
    for rep in range(args.repeats):
        for mode in (("before", "after") if rep % 2 == 0 else ("after", "before")):
            with before_mode() if mode == "before" else contextlib.nullcontext():
                r = run_once(onnx, vnnlib, args.timeout)
            r.update(mode=mode, repeat=rep, fixed_ms=fit(r["rounds"])[0], per_child_ms=fit(r["rounds"])[1])
            runs.append(r)
            print(f"{mode} {rep}: {r['verdict']} rounds {len(r['rounds'])} domains {r['domains']} "
                  f"BaB CPU {r['bab_cpu_s']:.2f} s, fixed {r['fixed_ms']:.1f} ms/round", flush=True)
    replayed = replay(capture_largest(onnx, vnnlib, args.timeout)) if args.replay else []
    write(args.out, runs, onnx, vnnlib, load_before, replayed)
    return 0


def write(out: Path, runs: list[dict], onnx: Path, vnnlib: Path, load_before: str, replayed: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = ["mode", "repeat", "verdict", "domains", "bab_cpu_s", "fixed_ms", "per_child_ms"]
    with open(out / "bab_round_cost.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + ["rounds"])
        for r in runs:
            w.writerow([r[k] for k in keys] + [len(r["rounds"])])
    with open(out / "bab_round_cost_rounds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "repeat", "round", "children", "cpu_ms"])
        for r in runs:
            for i, (k, ms) in enumerate(r["rounds"]):
                w.writerow([r["mode"], r["repeat"], i + 1, k, f"{ms:.1f}"])
    med = lambda mode, key: statistics.median(r[key] for r in runs if r["mode"] == mode)  # noqa: E731
    lines = [f"Instance: {onnx.name} {vnnlib.name}; CPU of this process, medians of {len(runs) // 2} run(s) a mode.", "",
             "| mode | verdicts | rounds | domains | BaB CPU s | ms / round | fixed ms / round (fit) | ms / child (fit) |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in ("before", "after"):
        mine = [r for r in runs if r["mode"] == mode]
        n_rounds = statistics.median(len(r["rounds"]) for r in mine)
        lines.append(f"| {mode} | {'/'.join(r['verdict'] for r in mine)} | {n_rounds:g} | "
                     f"{'/'.join(str(r['domains']) for r in mine)} | {med(mode, 'bab_cpu_s'):.2f} | "
                     f"{1000 * med(mode, 'bab_cpu_s') / max(1, n_rounds):.0f} | {med(mode, 'fixed_ms'):.1f} | "
                     f"{med(mode, 'per_child_ms'):.2f} |")
    same = len({(r["domains"], len(r["rounds"])) for r in runs}) == 1
    lines += ["", f"after / before, BaB CPU: {med('after', 'bab_cpu_s') / med('before', 'bab_cpu_s'):.2f}; "
              f"fixed ms / round: {med('after', 'fixed_ms') / med('before', 'fixed_ms'):.2f}; "
              f"the same rounds and domains in every run: {'yes' if same else 'NO'}", ""]
    if replayed:
        with open(out / "bab_round_cost_replay.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(replayed[0]))
            w.writeheader()
            w.writerows(replayed)
        lines += ["beta-CROWN alone on the largest round's first n children (every step; CPU ms, medians of 5, "
                  "the modes alternating):", "", "| children | steps | before ms | after ms | after / before | "
                  "bounds bitwise equal |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['children']} | {r['steps']} | {r['before_ms']:.1f} | {r['after_ms']:.1f} | "
                  f"{r['after_ms'] / r['before_ms']:.2f} | {'yes' if r['bitwise_equal'] else 'NO'} |" for r in replayed]
        lines.append("")
    lines += conditions(load_before)
    (out / "bab_round_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
