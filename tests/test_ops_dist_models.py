"""Placement plans on real models with the new ops (P = 2, CPU gloo): the first ViT of vit_2023
(Softmax, MatMul of two activations, BatchNorm on tokens, Transpose, Concat, Gather) and the
TinyYOLO of yolo_2023 (convolutions, Pad, AveragePool, Concat), on a small box around the first
property's centre. `fsdp` is bitwise equal to one process (one thread each), `spec` within
rtol 1e-5 / atol 1e-6; `tp` within the same tolerance where the plan checker accepts it, else its
one-line refusal names a plan, which is then run and checked like `spec`.

The sigmoid network is `tests/test_ops_dist.py`."""
from __future__ import annotations

import copy
import os
import re
import time

import pytest
import torch

from dist_utils import run_distributed

BENCH = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "benchmarks"))
MODELS = {"vit": ("vit_2023", "onnx/pgd_2_3_16.onnx.gz"), "yolo": ("yolo_2023", "onnx/TinyYOLO.onnx.gz")}
START = "forkserver"
NEEDS_BENCH = pytest.mark.skipif(not os.path.isdir(BENCH), reason="benchmarks not available")


def _box(model, folder, eps):
    """A box of radius `eps` around the centre of the folder's first property."""
    import numpy as np

    from dtensor_verify.specs import read_vnnlib

    with open(os.path.join(BENCH, folder, "instances.csv")) as fh:
        prop = fh.readline().split(",")[1].strip()
    path = os.path.join(BENCH, folder, prop)
    region = read_vnnlib(path if os.path.exists(path) else path + ".gz", n_inputs=model.n_inputs,
                         n_outputs=model.n_outputs).regions[0]
    lo = torch.tensor(np.asarray(region.lower), dtype=model.dtype).reshape(1, *model.input_shape)
    hi = torch.tensor(np.asarray(region.upper), dtype=model.dtype).reshape(1, *model.input_shape)
    mid = (lo + hi) / 2
    return mid - eps, mid + eps


def _place(model, plan):
    """Apply `plan`; a refused plan gives (refusal line, the plan it names), which is applied."""
    from placements import apply_plan, mesh_from_process_group
    from dtensor_verify.errors import PlanError

    try:
        apply_plan(model, plan, mesh_from_process_group())
        return None
    except PlanError as exc:
        refusal = str(exc)
    fix = re.search(r'--plan "([^"]+)"', refusal)
    assert fix is not None and "\n" not in refusal, refusal
    apply_plan(model, fix.group(1), mesh_from_process_group())
    return refusal, fix.group(1)


def _job(rank, world, name, eps, rows, plans, methods):
    import dtensor_verify as dv

    folder, onnx = MODELS[name]
    out, seconds, refused = {}, {}, {}
    t = time.perf_counter()
    base = dv.load(os.path.join(BENCH, folder, onnx))
    seconds["load"] = time.perf_counter() - t
    for plan in plans:
        t = time.perf_counter()
        m = copy.deepcopy(base)     # placing shards the copy's layers in place
        if plan != "one":
            refused[plan] = _place(m, plan)
        lo, hi = _box(m, folder, eps)
        C = None if rows is None else torch.eye(m.n_outputs, dtype=m.dtype)[:rows]
        out[plan] = {}
        for method in methods:
            r = m.compute_bounds(lo, hi, method, C=C)
            out[plan][method] = (r.lower.detach().cpu(), r.upper.detach().cpu())
        seconds[plan] = time.perf_counter() - t
    return out, seconds, refused


def _check(results, plans):
    for out, seconds, refused in results:
        one = out["one"]
        for plan in plans[1:]:
            for method, (lo, hi) in out[plan].items():
                ref_lo, ref_hi = one[method]
                assert not (torch.isnan(lo).any() or torch.isnan(hi).any()), (plan, method)
                assert torch.isfinite(lo).any() or method == "ibp", (plan, method, lo)
                if plan == "fsdp":
                    assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi), (plan, method)
                else:
                    assert torch.allclose(lo, ref_lo, rtol=1e-5, atol=1e-6), (plan, method, (lo - ref_lo).abs().max())
                    assert torch.allclose(hi, ref_hi, rtol=1e-5, atol=1e-6), (plan, method, (hi - ref_hi).abs().max())
        print("seconds (load; then place + bounds per plan):", {p: round(s, 1) for p, s in seconds.items()},
              "refused:", refused)


@NEEDS_BENCH
def test_vit_ibp_fsdp_spec_smoke(tmp_path):
    """The quickest case: the ViT's IBP under fsdp (bitwise) and spec."""
    plans = ("one", "fsdp", "spec")
    _check(run_distributed(_job, 2, tmp_path, "vit", 1e-6, None, plans, ("ibp",), timeout_s=180,
                           start_method=START), plans)


@NEEDS_BENCH
@pytest.mark.slow
def test_yolo_plans(tmp_path):
    """TinyYOLO (ReLU convolutions; a tiny box keeps almost every ReLU stable, so CROWN on four
    output rows stays small: ~7 s in one process): IBP and CROWN under fsdp, spec and tp."""
    plans = ("one", "fsdp", "spec", "tp")
    _check(run_distributed(_job, 2, tmp_path, "yolo", 1e-7, 4, plans, ("ibp", "crown"), timeout_s=300,
                           start_method=START), plans)


@NEEDS_BENCH
@pytest.mark.slow
def test_vit_plans(tmp_path):
    """ViT: IBP and CROWN under fsdp, spec and tp."""
    plans = ("one", "fsdp", "spec", "tp")
    _check(run_distributed(_job, 2, tmp_path, "vit", 1e-6, None, plans, ("ibp", "crown"), timeout_s=300,
                           start_method=START), plans)


def test_ibp_reads_inf_minus_inf_as_unbounded():
    """An overflow to +-inf followed by a map of mixed signs (the ViT's IBP through Softmax's
    Exp at eps 1e-4) gives inf - inf: the bounds are infinite, never NaN."""
    import dtensor_verify as dv

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.fill_(3e38)
        net[1].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    m = dv.load(net.eval(), (2,))
    lo = torch.full((1, 2), -10.0)
    for C in (None, torch.tensor([[1.0, -1.0]])):
        r = m.compute_bounds(lo, -lo, "ibp", C=C)
        assert not (torch.isnan(r.lower).any() or torch.isnan(r.upper).any())
        assert bool((r.lower <= r.upper).all())
