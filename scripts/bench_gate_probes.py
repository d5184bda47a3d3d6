"""Branch and bound with and without the shift's gate probes (ops/softmax_gate_probes.py), side by
side from the same roots, on vit_2023 instances. Prints a table and writes CSV.

    PYTHONPATH=$PWD nice -n 10 python scripts/bench_gate_probes.py --instances pgd_2_3_16_8835,ibp_3_3_8_8354 \\
        --alpha 3 --pairs 2 --rounds 3 --batch 4 --out gate_probes.csv

Per instance: CROWN's intermediate bounds, alpha-CROWN (`--alpha` steps on the output's slopes, then
its gate line search) on the region's rows, the `--pairs` open pairs with the lowest bound as roots,
then `--rounds` rounds of branch and bound (`--batch` parents a round, beta-CROWN `--beta` steps,
`--branching`)
once per variant from the same roots (`--variants`: off, no probes; on, probes and a row keeps its
winning gates; bound, probes for the bound only; wide: steps 1/4 then 1/8, 4 sweeps). Columns per variant: the worst open margin after
the rounds (the global lower bound; higher is tighter), domains proved / bounded, BaB seconds, and
with probes the mean gain of a probe call over the rows it looked at and the rows it tightened. `--limit S`: also the whole pipeline (`verify_instance`, S seconds) with probes off and
on: the verdicts.
"""
from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import dtensor_verify as dv  # noqa: E402
from dtensor_verify.bab import BabOptions, BabProblem, BabSolver, make_roots  # noqa: E402
from dtensor_verify.bab.roots import RootState  # noqa: E402
from dtensor_verify.methods import beta_crown as beta_mod  # noqa: E402
from dtensor_verify.methods.beta_crown import BetaOptions  # noqa: E402
from dtensor_verify.methods.dispatch import run_method  # noqa: E402
from dtensor_verify.ops import softmax_gate_probes  # noqa: E402
from dtensor_verify.specs.vnnlib import read_vnnlib  # noqa: E402
from dtensor_verify.verify.instance import Pairs, region_boxes  # noqa: E402
from bench_softmax import write_csv  # noqa: E402

BENCH = os.path.join(ROOT, "..", "shared", "benchmarks", "vit_2023")


class ProbeLog:
    """Wraps beta-CROWN's probe call: the gain over the rows it looked at."""

    def __init__(self):
        self.calls, self.rows, self.tightened, self.gain = 0, 0, 0, 0.0
        self.inner = softmax_gate_probes.probe_gates

    def __call__(self, graph, params, run, lower, *a, **k):
        out = self.inner(graph, params, run, lower, *a, **k)
        fin = torch.isfinite(lower)
        self.calls += 1
        self.rows += int(fin.sum())
        self.tightened += int((out > lower)[fin].sum())
        self.gain += float((out - lower)[fin].sum())
        return out


def roots_of(model, onnx_path, spec_path, alpha_steps: int, n_pairs: int):
    """(problem, open pair ids, root states, lowers, alpha seconds) of the region's rows."""
    prop = read_vnnlib(spec_path)
    pairs = Pairs(prop, model.n_outputs)
    lo, hi = region_boxes(prop, model.input_shape)
    C = pairs.C[:, :1].transpose(0, 1)                      # [1, P, n_out]: one row per pair
    t = time.perf_counter()
    res = run_method("alpha-crown", model.graph, (lo[:1], hi[:1]), C, want_upper=False,
                     alpha_options=dv.AlphaOptions(iterations=alpha_steps, optimize_intermediate=False))
    seconds = time.perf_counter() - t
    margins = res.lower[0] - pairs.d[:, 0]
    open_idx = [int(p) for p in torch.argsort(margins) if margins[p] <= 0][:n_pairs]
    pre = model.graph.preactivation_nodes()
    states = []
    for p in open_idx:
        alphas = {r: a[0, 0, p:p + 1] if a.shape[0] == 2 else a[:2, 0, p:p + 1] for r, a in res.output_alphas.items()}
        states.append(RootState({n: (res.intermediate[n][0][0], res.intermediate[n][1][0]) for n in pre}, alphas))
    P = pairs.C.shape[0]
    problem = BabProblem(model.graph, model.layout, model.forward, pairs.C, pairs.d, pairs.mask,
                         lo[:1].expand(P, *lo.shape[1:]), hi[:1].expand(P, *hi.shape[1:]))
    lowers = [margins[p:p + 1] for p in open_idx]
    return problem, open_idx, states, lowers, seconds, float(margins.min())


# (PROBE, KEEP, STEP, ROUNDS)
VARIANTS = {"off": (False, True, 0.125, 1), "on": (True, True, 0.125, 1), "bound": (True, False, 0.125, 1),
            "wide": (True, True, 0.25, 2)}


def bab_run(problem, open_idx, states, lowers, args, variant: str) -> dict:
    saved = softmax_gate_probes.PROBE, softmax_gate_probes.KEEP, softmax_gate_probes.STEP, softmax_gate_probes.ROUNDS
    softmax_gate_probes.PROBE, softmax_gate_probes.KEEP, softmax_gate_probes.STEP, softmax_gate_probes.ROUNDS = \
        VARIANTS[variant]
    log = ProbeLog()
    beta_mod.probe_gates = log
    try:
        roots = make_roots(problem, open_idx, states, lowers)
        opts = BabOptions(batch_size=args.batch, max_rounds=args.rounds, beta=BetaOptions(iterations=args.beta),
                          pgd_every=10 ** 9, branching=args.branching)
        solver = BabSolver(problem, opts, lambda: 1e9, lambda *a: None)
        t = time.perf_counter()
        out = solver.solve(roots)
        seconds = time.perf_counter() - t
    finally:
        beta_mod.probe_gates = log.inner
        softmax_gate_probes.PROBE, softmax_gate_probes.KEEP, softmax_gate_probes.STEP, softmax_gate_probes.ROUNDS = saved
    st = out.stats
    return {"status": out.status, "worst_margin": st.global_margin, "bounded": st.bounded, "proved": st.proved,
            "seconds": seconds, "probe_calls": log.calls, "probe_rows": log.rows,
            "probe_tightened": log.tightened, "probe_mean_gain": log.gain / max(1, log.rows)}


def verdict(onnx_path, spec_path, limit: float, probe: bool) -> tuple:
    from dtensor_verify.verify import verify_instance

    saved, softmax_gate_probes.PROBE = softmax_gate_probes.PROBE, probe
    try:
        t = time.perf_counter()
        res = verify_instance(dv.load(onnx_path), read_vnnlib(spec_path), timeout=limit, onnx_path=onnx_path)
        return res.verdict, time.perf_counter() - t
    finally:
        softmax_gate_probes.PROBE = saved


def one(name: str, args) -> dict:
    onnx_path = os.path.join(BENCH, "onnx", name.rsplit("_", 1)[0] + ".onnx.gz")
    spec_path = os.path.join(BENCH, "vnnlib", name + ".vnnlib.gz")
    model = dv.load(onnx_path)
    problem, open_idx, states, lowers, t_alpha, alpha_worst = roots_of(model, onnx_path, spec_path, args.alpha,
                                                                       args.pairs)
    row = {"instance": name, "alpha_s": t_alpha, "alpha_worst_margin": alpha_worst, "open_pairs": len(open_idx)}
    if open_idx:
        for key in args.variants.split(","):
            row.update({f"{k}_{key}": v for k, v in bab_run(problem, open_idx, states, lowers, args, key).items()})
    if args.limit:
        for key, probe in (("off", False), ("on", True)):
            row[f"verdict_{key}"], row[f"verdict_s_{key}"] = verdict(onnx_path, spec_path, args.limit, probe)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", default="pgd_2_3_16_8835,pgd_2_3_16_2820,ibp_3_3_8_1140,ibp_3_3_8_8354")
    ap.add_argument("--alpha", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--branching", default="babsr", help="fsb (the default of runs: slow here, trial splits) or babsr")
    ap.add_argument("--beta", type=int, default=5, help="beta-CROWN steps per round")
    ap.add_argument("--variants", default="off,on,bound",
                    help="off: no probes; on: probes, a row keeps its winning gates; bound: probes, gates kept as they were")
    ap.add_argument("--limit", type=float, default=0.0, help="also the pipeline's verdict at this limit (s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="gate_probes.csv")
    args = ap.parse_args()
    faulthandler.register(signal.SIGUSR1)          # kill -USR1 PID: where it is
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.instances.split(","):
        rows.append(one(name, args))
        print(rows[-1], file=sys.stderr, flush=True)
        write_csv(rows, args.out, args.threads)            # (rows so far: a cut-off run keeps them)
    variants = args.variants.split(",")
    print(f"{'instance':<18} {'pairs':>5} " + " ".join(f"{'worst_' + v:>11} {'prov/bnd':>9} {'s':>6}" for v in variants)
          + " " + " ".join(f"{'gain_' + v:>9} {'tight_' + v:>9}" for v in variants if v != "off"))
    for r in rows:
        if not r["open_pairs"]:
            print(f"{r['instance']:<18} proved by alpha-CROWN")
            continue
        cells = [f"{r['worst_margin_' + v]:>11.5f} {str(r['proved_' + v]) + '/' + str(r['bounded_' + v]):>9} "
                 f"{r['seconds_' + v]:>6.1f}" for v in variants]
        cells += [f"{r['probe_mean_gain_' + v]:>9.2e} {str(r['probe_tightened_' + v]) + '/' + str(r['probe_rows_' + v]):>9}"
                  for v in variants if v != "off"]
        print(f"{r['instance']:<18} {r['open_pairs']:>5} " + " ".join(cells))
    write_csv(rows, args.out, args.threads)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
