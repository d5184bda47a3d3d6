"""LayerNorm bound widths: the plain decomposition (`decompose.LAYERNORM_UNIT = False`: the
written-out ONNX chain bounded op by op, Sqrt then Reciprocal; nn.LayerNorm / LayerNormalization
as mean, sub, square, mean, rsqrt, mul), the LayerNorm rule (ops/layernorm.py: one Rsqrt, and the
normalised value's sum-zero box and shift), and auto_LiRPA 0.3's CROWN on the same torch graph.
Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_layernorm.py --out layernorm_widths.csv [--seeds 3] [--alpha 10]

Columns: mean width (upper - lower, over outputs) per box of CROWN (and of alpha-CROWN with
`--alpha N` iterations); `lirpa` auto_LiRPA 0.3's CROWN (blank where it refuses the graph). The
models are exported to ONNX at opset 13 (the chain ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt,
Div, Mul, Add) and loaded from there; auto_LiRPA gets the torch module.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import dtensor_verify as dv  # noqa: E402
from bench_softmax import write_csv  # noqa: E402
from dtensor_verify.ops import decompose  # noqa: E402
from layernorm_nets import Block, LinNorm, export  # noqa: E402
from op_checks import random_box  # noqa: E402

NETS = {"linear_layernorm_linear": (lambda: LinNorm(), (4,), 0.3),
        "linear_layernorm_6x8": (lambda: LinNorm(tokens=6, width=8, seed=1), (4,), 0.3),
        "transformer_block": (lambda: Block(), (3, 4), 0.05)}


def widths(path, lo, hi, rule: bool, iterations: int) -> dict:
    decompose.LAYERNORM_UNIT = rule
    try:
        model = dv.load(path)
        t0 = time.perf_counter()
        r = model.compute_bounds(lo, hi, "crown")
        out = {"crown": float((r.upper - r.lower).mean()), "t_crown_s": time.perf_counter() - t0}
        if iterations:
            a = model.compute_bounds(lo, hi, "alpha-crown", alpha_options=dv.AlphaOptions(iterations=iterations))
            out["alpha"] = float((a.upper - a.lower).mean())
        return out
    finally:
        decompose.LAYERNORM_UNIT = True


def lirpa_width(net, lo, hi):
    try:
        from lirpa_reference import lirpa_bounds

        ll, lu = lirpa_bounds(net, lo, hi, "CROWN", bound_opts={"conv_mode": "matrix"})
        return float((lu - ll).mean())
    except Exception as exc:          # a blank cell
        print(f"  auto_LiRPA: {type(exc).__name__}: {str(exc)[:90]}", file=sys.stderr)
        return None


def rows(seeds, iterations, folder):
    out = []
    for name, (make, shape, width) in NETS.items():
        net = make().eval()
        path = export(net, shape, os.path.join(folder, f"{name}.onnx"), 13)
        for seed in range(seeds):
            lo, hi = random_box(shape, seed, width)
            plain, rule = widths(path, lo, hi, False, iterations), widths(path, lo, hi, True, iterations)
            row = {"graph": name, "box": seed, "plain": plain["crown"], "rule": rule["crown"],
                   "lirpa": lirpa_width(net, lo, hi), "t_plain_s": plain["t_crown_s"], "t_rule_s": rule["t_crown_s"]}
            if iterations:
                row.update(alpha_plain=plain["alpha"], alpha_rule=rule["alpha"])
            out.append(row)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="layernorm_widths.csv")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--alpha", type=int, default=0, help="alpha-CROWN iterations (0: CROWN only)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        table = rows(args.seeds, args.alpha, folder)
    fmt = "{:<26} {:>3} {:>9} {:>9} {:>6} {:>9} {:>11} {:>11}"
    print(fmt.format("graph", "box", "plain", "rule", "gain", "lirpa", "alpha_plain", "alpha_rule"))
    for r in table:
        cells = [f"{r[k]:.5f}" if r.get(k) is not None else ("refused" if k == "lirpa" else "")
                 for k in ("lirpa", "alpha_plain", "alpha_rule")]
        print(fmt.format(r["graph"], r["box"], f"{r['plain']:.5f}", f"{r['rule']:.5f}",
                         f"{1 - r['rule'] / r['plain']:.1%}", *cells))
    write_csv(table, args.out, args.threads)


if __name__ == "__main__":
    main()
