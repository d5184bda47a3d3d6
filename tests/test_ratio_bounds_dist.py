"""The ratio boxes (`methods/ratio_bounds.py`) under placement plans (P = 2, CPU gloo): CROWN on
pensieve_big_parallel_35's box under `fsdp` is bitwise equal to one process, under `spec` within
rtol 1e-5 / atol 1e-6, and proves the property under every plan (the sweep from the numerator
splits its rows over ranks as the output bound does)."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from dist_utils import run_distributed

BENCH = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "benchmarks", "nn4sys_2023"))
PLANS = ("one", "fsdp", "spec")


def _job(rank, world):
    import dtensor_verify as dv
    from dtensor_verify.specs import read_vnnlib
    from placements import apply_plan, mesh_from_process_group

    torch.set_num_threads(1)
    base = dv.load(os.path.join(BENCH, "onnx", "pensieve_big_parallel.onnx.gz"))
    region = read_vnnlib(os.path.join(BENCH, "vnnlib", "pensieve_parallel_35.vnnlib.gz")).regions[0]
    lo = torch.as_tensor(region.lower).float().reshape(1, *base.input_shape)
    hi = torch.as_tensor(region.upper).float().reshape(1, *base.input_shape)
    out = {}
    for plan in PLANS:
        m = copy.deepcopy(base)
        if plan != "one":
            apply_plan(m, plan, mesh_from_process_group())
        r = m.compute_bounds(lo, hi, "crown")
        out[plan] = (r.lower.detach().cpu(), r.upper.detach().cpu())
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(BENCH), reason="benchmarks not available")
def test_ratio_boxes_under_plans(tmp_path):
    for out in run_distributed(_job, 2, tmp_path, timeout_s=300, start_method="forkserver"):
        ref_lo, ref_hi = out["one"]
        assert float(ref_lo.min()) > 0, ref_lo
        for plan in PLANS[1:]:
            lo, hi = out[plan]
            if plan == "fsdp":
                assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi), (plan, lo, ref_lo)
            else:
                assert torch.allclose(lo, ref_lo, rtol=1e-5, atol=1e-6), (plan, lo, ref_lo)
                assert torch.allclose(hi, ref_hi, rtol=1e-5, atol=1e-6), (plan, hi, ref_hi)
