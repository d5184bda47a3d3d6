#!/usr/bin/env python3
"""How much the output constraints tighten the last layer's bounds (methods/output_constraints.py).

For one instance (its first region and disjunct): CROWN's intermediate bounds over the box, then
the last nonlinear layer's unstable neurons (all, or `--neurons N` of them drawn at random)
tightened over the disjunct's unsafe set, by each variant: gamma only, or gamma and the slopes of
the ReLUs on the way, at each `--iterations`. Prints a table (and writes CSV): neurons, made
stable, summed width before / after, seconds, and (with every neuron) the CROWN bound of the
disjunct's best row before / after, and after with alpha-CROWN's output slopes optimised for the
tightened bounds (`row_after_alpha`, the stage's own bound: verify/output_constraints_stage.py).

    python scripts/bench_output_constraints.py ../shared/benchmarks/yolo_2023/onnx/TinyYOLO.onnx.gz \\
        ../shared/benchmarks/yolo_2023/vnnlib/TinyYOLO_prop_000079_eps_1_255.vnnlib.gz --neurons 64 \\
        --out docs/benchmarks/output_constraints
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIELDS = ["instance", "start", "variant", "upstream", "iterations", "rounds", "neurons", "stabilised", "width_before",
          "width_after", "seconds", "row_before", "row_after", "row_after_alpha", "alpha_seconds", "empty"]


def run(onnx, vnnlib, neurons, iterations, variants, device, seed=0, max_rows=512, rounds=(1,), start="crown",
        upstream=("shared",), alpha_iterations=20):
    import torch

    import dtensor_verify as dv
    from dtensor_verify.methods import intermediate_bounds
    from dtensor_verify.methods.crown import output_bound
    from dtensor_verify.methods.output_constraints import OutputConstraintOptions, last_preactivations, tighten
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify.output_constraints_stage import output_bound_over_u

    model = dv.load(onnx, device=device)
    prop = read_vnnlib(vnnlib, model.n_inputs, model.n_outputs)
    region = prop.regions[0]
    shape = model.input_shape
    dev = torch.device(device)
    xl = torch.as_tensor(region.lower, dtype=torch.float32, device=dev).reshape(1, *shape)
    xu = torch.as_tensor(region.upper, dtype=torch.float32, device=dev).reshape(1, *shape)
    disjunct = region.disjuncts[0]
    C = torch.as_tensor(disjunct.C, dtype=torch.float32, device=dev)
    d = torch.as_tensor(disjunct.d, dtype=torch.float32, device=dev)
    graph = model.graph
    t = time.perf_counter()
    slopes = None
    if start == "alpha":
        from dtensor_verify.methods.alpha_crown import alpha_crown, verdict_options
        res = alpha_crown(graph, (xl, xu), C.unsqueeze(0), opts=verdict_options(), want_upper=False)
        bounds = {k: (v[0].detach(), v[1].detach()) for k, v in res.intermediate.items()}
        bounds[graph.input_name] = (xl, xu)
        before, slopes = res.lower.detach(), res.output_alphas
    else:
        with torch.no_grad():
            bounds, _ = intermediate_bounds(graph, (xl, xu))
            before, _ = output_bound(graph, bounds, C.unsqueeze(0), want_upper=False)
    crown_s = time.perf_counter() - t
    node = last_preactivations(graph)[-1]
    lo, up = bounds[node]
    unstable = ((lo < 0) & (up > 0)).flatten().nonzero().squeeze(1)
    pick = None
    if neurons is not None and neurons < len(unstable):
        g = torch.Generator().manual_seed(seed)
        pick = unstable[torch.randperm(len(unstable), generator=g)[:neurons].to(unstable.device)]
    rows = []
    name = Path(vnnlib).name
    for variant, up_kind, its, n_rounds in [(v, u, i, r) for v in variants for u in upstream for i in iterations
                                            for r in rounds]:
        opts = OutputConstraintOptions(iterations=its, slopes=variant == "gamma+slopes", max_rows=max_rows,
                                       rounds=n_rounds, upstream=up_kind)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = tighten(graph, bounds, C, d, node, model.layout, opts, neurons=pick)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
        after = after_alpha = alpha_s = ""
        if pick is None and not res.empty:
            tight = dict(bounds)
            tight[node] = (res.lower, res.upper)
            with torch.no_grad():
                lb, _ = output_bound(graph, tight, C.unsqueeze(0), alphas=slopes, want_upper=False)
            after = f"{float((lb[0] - d).max()):.5f}"
            t = time.perf_counter()
            lb_alpha = output_bound_over_u(graph, tight, C, model.layout, alpha_iterations, lambda: False)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            alpha_s = f"{time.perf_counter() - t:.2f}"
            after_alpha = f"{float((lb_alpha - d).max()):.5f}"
        rows.append({"instance": name, "start": start, "variant": variant, "upstream": up_kind, "iterations": its,
                     "rounds": n_rounds, "neurons": res.neurons,
                     "stabilised": res.stabilised, "width_before": f"{res.width_before:.4f}",
                     "width_after": f"{res.width_after:.4f}", "seconds": f"{secs:.2f}",
                     "row_before": f"{float((before[0] - d).max()):.5f}", "row_after": after,
                     "row_after_alpha": after_alpha, "alpha_seconds": alpha_s,
                     "empty": res.empty})
        print(" | ".join(str(rows[-1][k]) for k in FIELDS), flush=True)
    return rows, {"node": node, "unstable": len(unstable), "crown_s": round(crown_s, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx")
    ap.add_argument("vnnlib", nargs="+")
    ap.add_argument("--neurons", type=int, default=None, help="this many unstable neurons, drawn at random")
    ap.add_argument("--iterations", type=int, nargs="+", default=[20])
    ap.add_argument("--variants", nargs="+", choices=["gamma", "gamma+slopes"], default=["gamma", "gamma+slopes"])
    ap.add_argument("--rounds", type=int, nargs="+", default=[1])
    ap.add_argument("--upstream", nargs="+", choices=["shared", "rows", "crown"], default=["shared"],
                    help="the slopes of the ReLUs below the node (OutputConstraintOptions.upstream)")
    ap.add_argument("--start", choices=["crown", "alpha"], default="crown",
                    help="the bounds tightened: CROWN's, or alpha-CROWN's (the verdict pipeline's; row_after then "
                         "uses its output slopes)")
    ap.add_argument("--alpha-iterations", type=int, default=20,
                    help="alpha-CROWN steps on the output slopes over the tightened bounds (row_after_alpha)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-rows", type=int, default=512)
    ap.add_argument("--out", default=None, help="folder for output_constraints.csv / .md")
    args = ap.parse_args(argv)
    import torch

    print(" | ".join(FIELDS))
    rows, facts = [], []
    for v in args.vnnlib:
        r, f = run(args.onnx, v, args.neurons, args.iterations, args.variants, args.device, max_rows=args.max_rows,
                   rounds=args.rounds, start=args.start, upstream=args.upstream,
                   alpha_iterations=args.alpha_iterations)
        rows += r
        facts.append(f)
    cond = (f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {platform.node()}, "
            f"{os.cpu_count()} CPUs; node {facts[0]['node']}, unstable {[f['unstable'] for f in facts]}, "
            f"CROWN {[f['crown_s'] for f in facts]} s")
    print(cond)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "output_constraints.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
        md = ["| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
        md += ["| " + " | ".join(str(r[k]) for k in FIELDS) + " |" for r in rows]
        (out / "output_constraints.md").write_text("\n".join(md) + "\n\n" + cond + "\n\ncommand: "
                                                   + " ".join(sys.argv) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
