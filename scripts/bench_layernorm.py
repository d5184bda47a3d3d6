"""LayerNorm bound widths: the plain decomposition (`decompose.LAYERNORM_UNIT = False`: the
written-out ONNX chain bounded op by op, Sqrt then Reciprocal; nn.LayerNorm / LayerNormalization
as mean, sub, square, mean, rsqrt, mul), the LayerNorm rule (ops/layernorm.py: one Rsqrt, and the
normalised value's sum-zero box and shift) with McCormick's product (`layernorm_product.JOINT =
False`) and with the joint relaxation of c * rsqrt(mean(c^2) + eps) (ops/layernorm_product.py, the
default), and auto_LiRPA 0.3's CROWN on the same torch graph. Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_layernorm.py --out layernorm_widths.csv [--seeds 3] [--alpha 10]

Columns: mean width (upper - lower, over outputs) per box of CROWN (and of alpha-CROWN with
`--alpha N` iterations) for `plain`, `rule` (McCormick product), `choice` (the joint rule without
the coupling: McCormick's planes chosen per element, an ablation) and `joint`; `gain`: joint
against rule; `lirpa` auto_LiRPA 0.3's CROWN (blank where it refuses the graph). The
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
from dtensor_verify.ops import decompose, layernorm_product  # noqa: E402
from layernorm_nets import Block, LinNorm, export  # noqa: E402
from op_checks import random_box  # noqa: E402

NETS = {"linear_layernorm_linear": (lambda: LinNorm(), (4,), 0.3),
        "linear_layernorm_6x8": (lambda: LinNorm(tokens=6, width=8, seed=1), (4,), 0.3),
        "transformer_block": (lambda: Block(), (3, 4), 0.05)}


VARIANTS = {"plain": (False, False, True), "rule": (True, False, True), "choice": (True, True, False),
            "joint": (True, True, True)}     # (LAYERNORM_UNIT, JOINT, COUPLING)


def widths(path, lo, hi, variant: str, iterations: int) -> dict:
    decompose.LAYERNORM_UNIT, layernorm_product.JOINT, layernorm_product.COUPLING = VARIANTS[variant]
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
        decompose.LAYERNORM_UNIT, layernorm_product.JOINT, layernorm_product.COUPLING = True, True, True


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
            got = {v: widths(path, lo, hi, v, iterations) for v in VARIANTS}
            row = {"graph": name, "box": seed, **{v: got[v]["crown"] for v in VARIANTS},
                   "lirpa": lirpa_width(net, lo, hi), **{f"t_{v}_s": got[v]["t_crown_s"] for v in VARIANTS}}
            if iterations:
                row.update({f"alpha_{v}": got[v]["alpha"] for v in VARIANTS})
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
    fmt = "{:<24} {:>3} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}"
    print(fmt.format("graph", "box", *VARIANTS, "gain", "lirpa", *(f"a_{v}" for v in VARIANTS)))
    for r in table:
        cells = [f"{r[k]:.5f}" if r.get(k) is not None else ("refused" if k == "lirpa" else "")
                 for k in ("lirpa", *(f"alpha_{v}" for v in VARIANTS))]
        print(fmt.format(r["graph"], r["box"], *(f"{r[v]:.5f}" for v in VARIANTS),
                         f"{1 - r['joint'] / r['rule']:.1%}", *cells))
    write_csv(table, args.out, args.threads)


if __name__ == "__main__":
    main()
