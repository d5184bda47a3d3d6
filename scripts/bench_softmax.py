"""Softmax bound widths: the plain decomposition (1 / sum_j exp(x_j - x_i)), the same with
`softmax_sum_one` (ops/softmax_sum.py: sum y = 1 in the box rule and in the CROWN step), and
auto_LiRPA 0.3's CROWN on the same torch graphs; with `--alpha N`, alpha-CROWN (N iterations) with
the shift's gates held at 1 (the weighted median) and at 0 (the plain step), optimised by Adam and
optimised by sign steps (`ALPHA_VARIANTS`, `--variants`), side by side.
Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_softmax.py --out softmax_widths.csv [--vit] [--seeds 3] [--alpha 20]

Columns: mean CROWN width (upper - lower, over outputs) per box; `lirpa` auto_LiRPA 0.3's CROWN
(default 'complex' softmax), `lirpa_ibp` its IBP ('simple' softmax); blank where it refuses. `--vit` adds the vit_2023 pgd_2_3_16 model on the
input box of its first instance (CROWN of the 10 logits; slow on CPU).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import dtensor_verify as dv  # noqa: E402
from dtensor_verify.ops import decompose, softmax_sum  # noqa: E402
from op_checks import random_box  # noqa: E402
from test_ops_products import _Attention  # noqa: E402
from test_softmax_sum_one import _Soft  # noqa: E402

NETS = {"softmax5_linear": (lambda: _Soft(), (4,), 0.5), "softmax8_linear": (lambda: _Soft(8, 1.0), (4,), 1.0),
        "attention": (lambda: _Attention(), (3, 4), 0.1), "attention_layernorm": (lambda: _Attention(True), (3, 4), 0.1)}


DEVICE = "cpu"          # --device: where the models are bounded


def _load(model_src, shape, lo, hi):
    model = dv.load(model_src, shape, device=DEVICE)
    return model, lo.to(model.device), hi.to(model.device)


def crown_width(model_src, shape, lo, hi, sum_one: bool):
    decompose.SOFTMAX_SUM_ONE = sum_one
    try:
        model, lo, hi = _load(model_src, shape, lo, hi)
        t0 = time.perf_counter()
        r = model.compute_bounds(lo, hi, "crown")
        return float((r.upper - r.lower).mean()), time.perf_counter() - t0
    finally:
        decompose.SOFTMAX_SUM_ONE = True


ALPHA_VARIANTS = {                      # (OPTIMISE_SHIFT, SHIFT_RULE, gates start at 1)
    "alpha_fixed": (False, "sign", True),   # held at the weighted median (the default before)
    "alpha_g0": (False, "sign", False),     # held at 0: the plain step
    "alpha_adam": (True, "adam", True),     # optimised by Adam with the slopes (the first scheme)
    "alpha_opt": (True, "sign", True),      # optimised by sign steps (methods/sign_steps.py)
}


def alpha_widths(model_src, shape, lo, hi, iterations: int, variants=tuple(ALPHA_VARIANTS)) -> dict:
    """alpha-CROWN's mean width and time per gate variant (empty if iterations 0)."""
    if not iterations:
        return {}
    model, lo, hi = _load(model_src, shape, lo, hi)
    out = {}
    saved = softmax_sum.OPTIMISE_SHIFT, softmax_sum.SHIFT_RULE, softmax_sum.GroupShiftOp.init_alpha
    for key in variants:
        softmax_sum.OPTIMISE_SHIFT, softmax_sum.SHIFT_RULE, one = ALPHA_VARIANTS[key]
        if not one:
            softmax_sum.GroupShiftOp.init_alpha = lambda op, lo_, up_: 0 * saved[2](op, lo_, up_)
        try:
            t0 = time.perf_counter()
            r = model.compute_bounds(lo, hi, "alpha-crown", alpha_options=dv.AlphaOptions(iterations=iterations))
            out[key], out[f"t_{key}_s"] = float((r.upper - r.lower).mean()), time.perf_counter() - t0
        finally:
            softmax_sum.OPTIMISE_SHIFT, softmax_sum.SHIFT_RULE, softmax_sum.GroupShiftOp.init_alpha = saved
    return out


def lirpa_width(net, lo, hi, method, softmax):
    """auto_LiRPA 0.3's mean width; None where it refuses the graph (its 'complex' softmax takes
    a ReduceMax of the perturbed input, which has no CROWN rule; 'simple' has IBP only)."""
    try:
        from lirpa_reference import lirpa_bounds

        ll, lu = lirpa_bounds(net, lo, hi, method, bound_opts={"conv_mode": "matrix", "softmax": softmax})
        return float((lu - ll).mean())
    except Exception as exc:          # a blank cell
        print(f"  auto_LiRPA {method}/{softmax}: {type(exc).__name__}: {str(exc)[:90]}", file=sys.stderr)
        return None


def small_rows(seeds, iterations, variants=tuple(ALPHA_VARIANTS)):
    rows = []
    for name, (make, shape, width) in NETS.items():
        net = make().eval()
        for seed in range(seeds):
            lo, hi = random_box(shape, seed, width)
            old, t_old = crown_width(net, shape, lo, hi, False)
            new, t_new = crown_width(net, shape, lo, hi, True)
            rows.append({"graph": name, "box": seed, "plain": old, "sum_one": new, "lirpa": lirpa_width(net, lo, hi, "CROWN", "complex"),
                         "lirpa_ibp": lirpa_width(net, lo, hi, "IBP", "simple"),
                         "t_plain_s": t_old, "t_sum_one_s": t_new,
                         **alpha_widths(net, shape, lo, hi, iterations, variants)})
    return rows


def vit_row(iterations, variants=tuple(ALPHA_VARIANTS)):
    from dtensor_verify.specs.vnnlib import read_vnnlib

    bench = os.path.join(ROOT, "..", "shared", "benchmarks", "vit_2023")
    onnx_rel, spec_rel = open(os.path.join(bench, "instances.csv")).readline().split(",")[:2]
    onnx_path = os.path.join(bench, onnx_rel)
    if not os.path.exists(onnx_path):
        onnx_path += ".gz"
    model = dv.load(onnx_path)
    region = read_vnnlib(os.path.join(bench, spec_rel)).regions[0]
    shape = (1, *model.input_shape)
    lo = torch.as_tensor(region.lower, dtype=torch.float32).reshape(shape)
    hi = torch.as_tensor(region.upper, dtype=torch.float32).reshape(shape)
    old, t_old = crown_width(onnx_path, None, lo, hi, False)
    new, t_new = crown_width(onnx_path, None, lo, hi, True)
    return {"graph": f"vit_2023/{os.path.basename(onnx_rel)}:{os.path.basename(spec_rel)}", "box": 0, "plain": old,
            "sum_one": new, "lirpa": None, "lirpa_ibp": None, "t_plain_s": t_old, "t_sum_one_s": t_new,
            **alpha_widths(onnx_path, None, lo, hi, iterations, variants)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="softmax_widths.csv")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--vit", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto (the models are bounded there)")
    ap.add_argument("--alpha", type=int, default=0, help="alpha-CROWN iterations (0: no alpha columns)")
    ap.add_argument("--no-small", action="store_true", help="only the ViT row")
    ap.add_argument("--variants", default=",".join(ALPHA_VARIANTS),
                    help=f"alpha-CROWN gate variants, of {','.join(ALPHA_VARIANTS)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    variants = tuple(v for v in args.variants.split(",") if v)
    rows = ([] if args.no_small else small_rows(args.seeds, args.alpha, variants)) + \
        ([vit_row(args.alpha, variants)] if args.vit else [])
    fmt = "{:<44} {:>3} {:>10} {:>10} {:>7} {:>11} {:>11}" + " {:>11}" * len(variants)
    print(fmt.format("graph", "box", "plain", "sum_one", "gain", "lirpa_crown", "lirpa_ibp", *variants))
    for r in rows:
        cells = ("refused" if r.get(k, 0) is None else (f"{r[k]:.5f}" if k in r else "")
                 for k in ("lirpa", "lirpa_ibp", *variants))
        gain = f"{1 - r['sum_one'] / r['plain']:.1%}" if r["plain"] else ""
        print(fmt.format(r["graph"], r["box"], f"{r['plain']:.5f}", f"{r['sum_one']:.5f}", gain, *cells))
    write_csv(rows, args.out, args.threads)


def write_csv(rows, out: str, threads: int):
    """The rows as CSV (columns in first-seen order; blank where a row has no value)."""
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}; torch {torch.__version__}, {threads} thread(s), {DEVICE}")


if __name__ == "__main__":
    main()
