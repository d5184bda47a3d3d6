"""Softmax bound widths: the plain decomposition (1 / sum_j exp(x_j - x_i)), the same with
`softmax_sum_one` (ops/softmax_sum.py: sum y = 1 in the box rule and in the CROWN step), and
auto_LiRPA 0.3's CROWN on the same torch graphs. Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_softmax.py --out softmax_widths.csv [--vit] [--seeds 3]

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
from dtensor_verify.ops import decompose  # noqa: E402
from op_checks import random_box  # noqa: E402
from test_ops_products import _Attention  # noqa: E402
from test_softmax_sum_one import _Soft  # noqa: E402

NETS = {"softmax5_linear": (lambda: _Soft(), (4,), 0.5), "softmax8_linear": (lambda: _Soft(8, 1.0), (4,), 1.0),
        "attention": (lambda: _Attention(), (3, 4), 0.1), "attention_layernorm": (lambda: _Attention(True), (3, 4), 0.1)}


def crown_width(model_src, shape, lo, hi, sum_one: bool):
    decompose.SOFTMAX_SUM_ONE = sum_one
    try:
        model = dv.load(model_src, shape)
        t0 = time.perf_counter()
        r = model.compute_bounds(lo, hi, "crown")
        return float((r.upper - r.lower).mean()), time.perf_counter() - t0
    finally:
        decompose.SOFTMAX_SUM_ONE = True


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


def small_rows(seeds):
    rows = []
    for name, (make, shape, width) in NETS.items():
        net = make().eval()
        for seed in range(seeds):
            lo, hi = random_box(shape, seed, width)
            old, t_old = crown_width(net, shape, lo, hi, False)
            new, t_new = crown_width(net, shape, lo, hi, True)
            rows.append({"graph": name, "box": seed, "plain": old, "sum_one": new, "lirpa": lirpa_width(net, lo, hi, "CROWN", "complex"),
                         "lirpa_ibp": lirpa_width(net, lo, hi, "IBP", "simple"),
                         "t_plain_s": t_old, "t_sum_one_s": t_new})
    return rows


def vit_row():
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
            "sum_one": new, "lirpa": None, "lirpa_ibp": None, "t_plain_s": t_old, "t_sum_one_s": t_new}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="softmax_widths.csv")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--vit", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = small_rows(args.seeds) + ([vit_row()] if args.vit else [])
    fmt = "{:<44} {:>3} {:>10} {:>10} {:>7} {:>11} {:>11}"
    print(fmt.format("graph", "box", "plain", "sum_one", "gain", "lirpa_crown", "lirpa_ibp"))
    for r in rows:
        lirpa, lirpa_ibp = ("refused" if r[k] is None else f"{r[k]:.5f}" for k in ("lirpa", "lirpa_ibp"))
        gain = f"{1 - r['sum_one'] / r['plain']:.1%}" if r["plain"] else ""
        print(fmt.format(r["graph"], r["box"], f"{r['plain']:.5f}", f"{r['sum_one']:.5f}", gain, lirpa, lirpa_ibp))
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}; torch {torch.__version__}, {args.threads} thread(s), cpu")


if __name__ == "__main__":
    main()
