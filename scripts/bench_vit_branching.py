"""The first branching round of branch and bound on a vit_2023 instance, before / after the refresh
budget (`bab/refresh_cost.py`), on a CPU; and (`--costs`) the refresh cost of every cut of some models.

Round: the root of one open pair (IBP intermediate bounds on the instance's box, scaled by
--eps-scale around its centre, as `bench_alpha_bab_memory.py`: CROWN takes ~1,000 s on this CPU),
bounded once without optimisation (its lA), then branched with the run's heuristic (`mixed_fsb`:
strong branching's trial children) under a deadline of --seconds. 'before': the budget
`inf` (every general cut tried, every trial child's layers behind its cut bounded again); 'after':
the default budget. Each in its own process. Prints a table and writes CSV.

    PYTHONPATH=$PWD nice -n 10 python scripts/bench_vit_branching.py --instance ibp_3_3_8_5600 \\
        --seconds 240 --out docs/benchmarks/vit_branching/first_round_ibp_3_3_8_5600.csv
    PYTHONPATH=$PWD python scripts/bench_vit_branching.py --costs --out costs.csv [MODEL.onnx.gz ...]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "..", "shared", "benchmarks")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
FIELDS = ["code", "instance", "budget", "general_tried", "heuristic", "status", "decision_kind", "trial_children",
          "refreshes", "refreshed_cuts", "branching_s", "threads", "torch"]
COST_FIELDS = ["model", "general_nodes", "general_affordable", "general_min", "general_max",
               "relus_reaching", "relus_affordable", "relu_max", "budget"]
MODELS = ["nn4sys_2023/onnx/pensieve_big_parallel.onnx.gz", "ml4acopf_2024/onnx/118_ieee_ml4acopf.onnx.gz",
          "ml4acopf_2024/onnx/300_ieee_ml4acopf.onnx.gz", "vit_2023/onnx/pgd_2_3_16.onnx.gz",
          "vit_2023/onnx/ibp_3_3_8.onnx.gz"]


def _instrument(solver):
    """Counters of trial children and of refreshes (`refine_after` calls and their cut nodes)."""
    from dtensor_verify.bab import general_refresh

    seen = {"children": 0, "refreshes": 0, "cuts": set()}
    refine, bound_once = general_refresh.refine_after, solver.ctx.bound_once

    def counting(problem, kids, cut, lockstep):
        seen["refreshes"] += 1
        seen["cuts"].update(cut)
        return refine(problem, kids, cut, lockstep)

    def trial(domains, refresh=False, decision=None):
        seen["children"] += len(domains)
        return bound_once(domains, refresh, decision)
    general_refresh.refine_after, solver.ctx.bound_once = counting, trial
    return seen


def run_one(args) -> dict:
    """One first branching round in this process (the budget: its environment)."""
    import torch

    import dtensor_verify as dv
    from bench_alpha_bab_memory import _roots
    from dtensor_verify import deadline
    from dtensor_verify.bab import BabOptions, BabSolver, refresh_cost
    from dtensor_verify.bab.branching import choose
    from dtensor_verify.bab.general_split import is_general
    from dtensor_verify.errors import TimeLimitReached

    torch.set_num_threads(args.threads)
    model = dv.load(os.path.join(BENCH, "vit_2023", "onnx", args.instance.rsplit("_", 1)[0] + ".onnx.gz"))
    problem, roots = _roots(model, os.path.join(BENCH, "vit_2023", "vnnlib", args.instance + ".vnnlib"),
                            args.eps_scale, 1)
    solver = BabSolver(problem, BabOptions(split="relu"), lambda: 1e9, lambda *a: None)
    seen = _instrument(solver)
    with torch.no_grad():
        result = solver._bound(roots, 0)
    lA = {r: a for r, a in result.lA.items() if r in problem.scored}
    end = time.perf_counter() + args.seconds

    def check():
        if time.perf_counter() >= end:
            raise TimeLimitReached()
    t0, status, kind = time.perf_counter(), "done", ""
    try:
        with deadline.checking(check, lambda: end - time.perf_counter(), problem.layout):
            decision = choose(solver.branching, roots, lA, solver.ctx)
        kind = "general" if bool(is_general(decision[:, 0]).any()) else "relu"
    except TimeLimitReached:
        status = f"stopped at {args.seconds:g} s"
    tried = sum(refresh_cost.affordable_general(problem))
    return {"instance": args.instance, "budget": os.environ.get("DTENSOR_VERIFY_REFRESH_BUDGET") or
            f"{refresh_cost.budget():g}", "general_tried": f"{tried}/{len(problem.general)}",
            "heuristic": solver.branching, "status": status, "decision_kind": kind,
            "trial_children": seen["children"], "refreshes": seen["refreshes"], "refreshed_cuts": len(seen["cuts"]),
            "branching_s": round(time.perf_counter() - t0, 2), "threads": args.threads, "torch": torch.__version__}


def costs(paths: list[str]) -> list[dict]:
    """Per model: the refresh cost (A-matrix elements per child) behind a cut of each general node
    and of each ReLU whose output reaches one, against the budget."""
    import torch

    import dtensor_verify as dv
    from dtensor_verify.bab import BabProblem, refresh_cost

    rows = []
    for path in paths:
        m = dv.load(path)
        z = torch.zeros(1, *m.input_shape)
        p = BabProblem(m.graph, m.layout, m.forward, torch.zeros(1, 1, m.n_outputs), torch.zeros(1, 1),
                       torch.ones(1, 1, dtype=torch.bool), z, z)
        gen = [refresh_cost.refresh_cost(p, [n]) for n in p.general]
        rel = [c for c in (refresh_cost.refresh_cost(p, [r]) for r in p.relus) if c > 0]
        rows.append({"model": os.path.basename(path), "general_nodes": len(gen),
                     "general_affordable": sum(refresh_cost.affordable_general(p)),
                     "general_min": f"{min(gen, default=0):.3g}", "general_max": f"{max(gen, default=0):.3g}",
                     "relus_reaching": len(rel), "relus_affordable": sum(c <= refresh_cost.budget() for c in rel),
                     "relu_max": f"{max(rel, default=0):.3g}", "budget": f"{refresh_cost.budget():g}"})
    return rows


def _table(rows: list[dict], fields: list[str]) -> None:
    print("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields))
    for r in rows:
        print("| " + " | ".join(str(r.get(f, "")) for f in fields) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instance", default="ibp_3_3_8_5600")
    ap.add_argument("--seconds", type=float, default=240.0, help="deadline of the branching round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eps-scale", type=float, default=2.0, help="the box scaled around its centre (IBP roots)")
    ap.add_argument("--costs", action="store_true", help="the refresh costs of the models (positional, or a default set)")
    ap.add_argument("models", nargs="*")
    ap.add_argument("--out", default="vit_branching.csv")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    if args.costs:
        rows, fields = costs(args.models or [os.path.join(BENCH, m) for m in MODELS]), COST_FIELDS
    else:
        rows, fields = [], FIELDS
        for code, budget in (("before (budget inf)", "inf"), ("after", "")):
            env = {**os.environ, "DTENSOR_VERIFY_REFRESH_BUDGET": budget}
            cmd = [sys.executable, __file__, "--one", "--instance", args.instance, "--seconds", str(args.seconds),
                   "--threads", str(args.threads), "--eps-scale", str(args.eps_scale)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                sys.exit(f"bench_vit_branching: {code} failed: {out.stderr.strip().splitlines()[-1:]}")
            rows.append({"code": code, **json.loads(lines[-1])})
    _table(rows, fields)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
