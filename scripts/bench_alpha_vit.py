"""alpha-CROWN on the vit_2023 models: ours before / after the speed work, and auto_LiRPA, on the
same model, box and spec rows. Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_alpha_vit.py --out alpha_vit.csv \
        [--instances pgd_2_3_16_8835,ibp_3_3_8_8354] [--eps-scale 1.0] [--iterations 20] \
        [--tools ours-main,ours,lirpa,lirpa03] [--threads 1] [--device cpu]

One subprocess per (tool, instance) (time and peak memory of its own; two auto_LiRPA versions
cannot share a process). Rows:
  ours-main  alpha-CROWN as the verdict pipeline ran it before this work: `--iterations` joint
             steps (every intermediate start node's slopes), lr 0.1, no stop on proved rows; the
             code of `--main-src` (e.g. a checkout of main before this branch; default: this one).
  ours       the pipeline's alpha-CROWN now (`methods.alpha_crown.verdict_options`): the
             output-only warm-up, then the joint steps, stopping once every row is proved
             (stop_above = the spec's d), the working set fitted to the device share
             (methods/alpha_budget.py); started from the CROWN row's intermediate bounds where
             alpha_crown takes them (`crown_bounds`, as the verdict pipeline does).
  ours-base  `ours` (the same pipeline settings) on the code of `--base-src` (e.g. this branch's base:
             before / after a change to alpha-CROWN with everything else equal).
  lirpa      alpha,beta-CROWN's auto_LiRPA (the copy staged in /work/main/.abcrown, or
             $ABCROWN_AUTO_LIRPA) with vnncomp23/vit.yaml's alpha settings: lr 0.5, lr decay 0.98,
             Exp not optimised, fixed ReduceMax index for the softmax, early-stop patience 10,
             stop once every row is proved; the ONNX loaded by its onnx2pytorch.
  lirpa03    auto_LiRPA 0.3 from PyPI (tests/lirpa_reference.py's patches) on our loaded graph
             (softmax decomposed: its own softmax needs a ReduceMax of the perturbed input, which
             it has no CROWN rule for): CROWN, and its alpha-CROWN's refusal (no slopes for
             Exp / Reciprocal) in the note.
Columns: crown_s (CROWN), alpha_s (alpha-CROWN, including its own CROWN start), iterations,
s_per_iter, the worst row's margin (lower bound of C y - d; > 0 proves it) after CROWN and after
alpha, the summed margin, proved, with `--count-ops` the aten ops of one joint step (what a GPU step
mostly costs: kernel launches), peak RSS (MB) of the subprocess. `--eps-scale` shrinks or
widens the box around its centre (CROWN then proves less / more).
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "..", "shared", "benchmarks", "vit_2023")
ABCROWN = os.environ.get("ABCROWN_AUTO_LIRPA", "/work/main/.abcrown")
TOOLS = ("ours-main", "ours", "lirpa", "lirpa03")     # and ours-base (see --base-src)
FIELDS = ["tool", "instance", "eps_scale", "crown_s", "alpha_s", "iterations", "s_per_iter", "crown_margin",
          "alpha_margin", "alpha_margin_sum", "proved", "ops_per_iter", "peak_rss_mb", "note"]


class _OpCounter:
    """Counts the aten ops dispatched while on (a GPU's cost per step is mostly kernel launches)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self.mode, self.on = 0, _Mode(), False

    def start(self):
        if not self.on:
            self.on = True
            self.mode.__enter__()

    def stop(self):
        if self.on:
            self.on = False
            self.mode.__exit__(None, None, None)


def instance_tensors(instance: str, eps_scale: float):
    """(onnx path, lower, upper [1, 3, 32, 32], C [1, K, 10], d [1, K]) of a vit_2023 instance."""
    import numpy as np
    import torch

    from dtensor_verify.specs.vnnlib import read_vnnlib

    onnx_path = os.path.join(BENCH, "onnx", instance.rsplit("_", 1)[0] + ".onnx.gz")
    region = read_vnnlib(os.path.join(BENCH, "vnnlib", instance + ".vnnlib.gz")).regions[0]
    lo = torch.as_tensor(region.lower, dtype=torch.float32).reshape(1, 3, 32, 32)
    hi = torch.as_tensor(region.upper, dtype=torch.float32).reshape(1, 3, 32, 32)
    mid, rad = (lo + hi) / 2, (hi - lo) / 2 * eps_scale
    C = torch.as_tensor(np.concatenate([dj.C for dj in region.disjuncts]), dtype=torch.float32).unsqueeze(0)
    d = torch.as_tensor(np.concatenate([dj.d for dj in region.disjuncts]), dtype=torch.float32).unsqueeze(0)
    return onnx_path, mid - rad, mid + rad, C, d


def _margins(lower, d):
    m = (lower.detach() - d).flatten()
    return float(m.min()), float(m.sum()), bool((m > 0).all())


def ours_ops(model, box, C):
    """aten ops of one joint alpha-CROWN step (the second: evaluate, backward, Adam, keep-best),
    counted between the `on_step` calls that end the first and the second step."""
    from dtensor_verify.methods.alpha_crown import AlphaOptions, alpha_crown

    count = _OpCounter()

    def on_step(it, score):
        count.start() if it == 0 else count.stop()

    alpha_crown(model.graph, box, C, opts=AlphaOptions(iterations=3, patience=100), want_upper=False,
                on_step=on_step)
    count.stop()
    return count.n


def run_ours(tool, instance, eps_scale, iterations, device, count_ops=False):
    import torch

    import dtensor_verify as dv
    from dtensor_verify.methods.alpha_crown import AlphaOptions, alpha_crown
    from dtensor_verify.methods.crown import crown

    onnx_path, lo, hi, C, d = instance_tensors(instance, eps_scale)
    model = dv.load(onnx_path).to(device)
    box, C, d = (lo.to(device), hi.to(device)), C.to(device), d.to(device)
    t0 = time.perf_counter()
    c_lo, _, bounds = crown(model.graph, box, C, want_upper=False)
    crown_s = time.perf_counter() - t0
    extra = {}
    if tool == "ours" and "crown_bounds" in inspect.signature(alpha_crown).parameters:
        # As the pipeline does now: alpha starts from the CROWN stage's intermediate bounds.
        extra["crown_bounds"] = {n: bounds[n] for n in [*model.graph.preactivation_nodes(), model.graph.output_name]}
    t0 = time.perf_counter()
    if tool == "ours-main":           # the code of --main-src (keyword arguments it has)
        res = alpha_crown(model.graph, box, C, opts=AlphaOptions(iterations=iterations), want_upper=False)
    else:
        from dtensor_verify.methods.alpha_crown import verdict_options

        opts = verdict_options()
        opts.iterations = min(opts.iterations, iterations)
        res = alpha_crown(model.graph, box, C, opts=opts, want_upper=False, stop_above=d, **extra)
    alpha_s = time.perf_counter() - t0
    ops = ours_ops(model, box, C) if count_ops else None
    return crown_s, alpha_s, res.iterations, _margins(c_lo, d), _margins(res.lower, d), ops


def _new_lirpa():
    import types

    if "graphviz" not in sys.modules:            # imported by auto_LiRPA.tools for drawing only
        stub = types.ModuleType("graphviz")
        stub.Digraph = object
        sys.modules["graphviz"] = stub
    sys.path.insert(0, os.path.join(ABCROWN, "auto_LiRPA"))
    sys.path.insert(0, os.path.join(ABCROWN, "onnx2pytorch"))


def _lirpa_model(tool, onnx_path, iterations, d):
    """(model, bound_opts) for auto_LiRPA 0.3 (our loaded graph) or alpha,beta-CROWN's (its loader)."""
    import gzip

    import onnx

    if tool == "lirpa03":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from lirpa_reference import patch_auto_lirpa
        patch_auto_lirpa()
        import dtensor_verify as dv
        return dv.load(onnx_path).module, {"conv_mode": "matrix"}
    _new_lirpa()
    from onnx2pytorch import ConvertModel
    model = ConvertModel(onnx.load_model_from_string(gzip.open(onnx_path).read()), experimental=True)
    return model, {"conv_mode": "matrix", "fixed_reducemax_index": True, "sparse_intermediate_bounds": False,
                   "sparse_features_alpha": False, "sparse_spec_alpha": False,
                   "optimize_bound_args": {"iteration": iterations, "lr_alpha": 0.5, "lr_decay": 0.98,
                                           "early_stop_patience": 10, "disable_optimization": ["Exp"],
                                           "stop_criterion_func": lambda lb: (lb > d).all(dim=1, keepdim=True)}}


def run_lirpa(tool, instance, eps_scale, iterations, device, count_ops=False):
    import numpy as np
    import torch

    onnx_path, lo, hi, C, d = instance_tensors(instance, eps_scale)
    model, opts = _lirpa_model(tool, onnx_path, iterations, d)
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    model = model.eval()
    x = (lo + hi) / 2
    try:
        bm = BoundedModule(model, x, bound_opts=opts, device=device)
        bx = BoundedTensor(x, PerturbationLpNorm(norm=np.inf, x_L=lo, x_U=hi))
        t0 = time.perf_counter()
        with torch.no_grad():
            c_lo, _ = bm.compute_bounds(x=(bx,), C=C, method="CROWN", bound_upper=False)
        crown_s = time.perf_counter() - t0
    except Exception as exc:           # auto_LiRPA 0.3 on the ViT's softmax
        return None, None, None, None, None, f"refused: {type(exc).__name__}: {str(exc)[:100]}"
    calls = [0]
    inner = bm.compute_bounds
    count = _OpCounter()

    def counted(*a, **k):
        # call 1: init_alpha's CROWN; call i + 2: step i. Ops counted from step 1's start to
        # step 2's: step 1's forward, backward and optimiser update.
        calls[0] += 1
        if count_ops and calls[0] == 3:
            count.start()
        if calls[0] == 4:
            count.stop()
        return inner(*a, **k)

    bm.compute_bounds = counted
    t0 = time.perf_counter()
    try:
        a_lo, _ = inner(x=(bx,), C=C, method="CROWN-Optimized", bound_upper=False)
    except Exception as exc:           # auto_LiRPA 0.3: no slopes for Exp / Reciprocal
        return crown_s, None, None, _margins(c_lo, d), None, f"alpha refused: {type(exc).__name__} {str(exc)[:80]}"
    alpha_s = time.perf_counter() - t0
    count.stop()
    # Each optimisation step calls compute_bounds once; init_alpha's CROWN call is one more.
    return crown_s, alpha_s, max(calls[0] - 1, 0), _margins(c_lo, d), _margins(a_lo, d), \
        (count.n if count_ops and calls[0] >= 4 else None)


def worker(tool, instance, eps_scale, iterations, threads, device, count_ops):
    import torch

    torch.set_num_threads(threads)
    run = run_ours if tool.startswith("ours") else run_lirpa
    crown_s, alpha_s, its, cm, am, extra = run(tool, instance, eps_scale, iterations, device, count_ops)
    ops, note = (extra, "") if not isinstance(extra, str) else (None, extra)
    row = {"tool": tool, "instance": instance, "eps_scale": eps_scale, "note": note, "ops_per_iter": ops,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    if crown_s is not None:
        row.update(crown_s=round(crown_s, 3), crown_margin=round(cm[0], 5))
    if alpha_s is not None:
        row.update(alpha_s=round(alpha_s, 3), iterations=its, s_per_iter=round(alpha_s / max(its, 1), 3),
                   alpha_margin=round(am[0], 5), alpha_margin_sum=round(am[1], 5), proved=am[2])
    print("ROW " + json.dumps(row), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="alpha_vit.csv")
    ap.add_argument("--instances", default="pgd_2_3_16_8835")
    ap.add_argument("--eps-scale", type=float, default=1.0)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--count-ops", action="store_true",
                    help="also count the aten ops of one joint step (ours: a separate 3-step run after the timed one)")
    ap.add_argument("--main-src", default=ROOT, help="checkout whose code the ours-main row runs (default: this one)")
    ap.add_argument("--base-src", default=ROOT, help="checkout whose code the ours-base row runs")
    ap.add_argument("--worker", nargs=2, metavar=("TOOL", "INSTANCE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker, args.eps_scale, args.iterations, args.threads, args.device, args.count_ops)
    rows = []
    for instance in args.instances.split(","):
        for tool in args.tools.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, instance, "--eps-scale",
                   str(args.eps_scale), "--iterations", str(args.iterations), "--threads", str(args.threads),
                   "--device", args.device] + (["--count-ops"] if args.count_ops else [])
            src = {"ours-main": args.main_src, "ours-base": args.base_src}.get(tool, ROOT)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src})
            got = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            rows.append(got[0] if got else {"tool": tool, "instance": instance, "eps_scale": args.eps_scale,
                                            "note": f"failed: {proc.stderr.strip().splitlines()[-1:]}"})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    fmt = "{:<9} {:<18} {:>5} {:>8} {:>8} {:>5} {:>7} {:>9} {:>9} {:>6} {:>7} {:>7}  {}"
    print(fmt.format("tool", "instance", "eps", "crown_s", "alpha_s", "its", "s/it", "crown_m", "alpha_m",
                     "proved", "ops/it", "rss_MB", "note"))
    for r in rows:
        print(fmt.format(*(str(r.get(k, "")) for k in ("tool", "instance", "eps_scale", "crown_s", "alpha_s",
                                                        "iterations", "s_per_iter", "crown_margin", "alpha_margin",
                                                        "proved", "ops_per_iter", "peak_rss_mb", "note"))))
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows([{k: r.get(k, "") for k in FIELDS} for r in rows])
    import torch
    print(f"wrote {args.out}; torch {torch.__version__}, {args.threads} thread(s), {args.device}, "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
