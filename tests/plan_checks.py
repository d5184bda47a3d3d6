"""The distributed job loop shared by tests/test_ops_dist.py and tests/test_layernorm_plans.py:
bounds of one model per method under a plan (inside a rank), and the check that every plan's
bounds equal one process's (`fsdp` bitwise, the others within tolerance)."""
from __future__ import annotations

import torch

TP_METHODS = ("ibp", "crown")           # alpha-CROWN under tp is slow on CPU DTensors (~20 s)
METHODS = ("ibp", "crown", "alpha-crown")


def methods_for(plan: str) -> tuple:
    return TP_METHODS if plan == "tp" else METHODS


def bounds_per_method(model, lo, hi, methods) -> dict:
    """method -> (lower, upper) on the CPU (alpha-CROWN: 2 iterations)."""
    import dtensor_verify as dv

    out = {}
    for method in methods:
        r = model.compute_bounds(lo, hi, method, alpha_options=dv.AlphaOptions(iterations=2))
        out[method] = (r.lower.detach().cpu(), r.upper.detach().cpu())
    return out


def assert_plans_match_one(rank_out: dict, plans, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """`rank_out[plan][method] = (lower, upper)`; plans[0] is the one-process reference. Every
    other plan has at least IBP and CROWN; fsdp equals the reference bitwise, the rest within
    rtol / atol."""
    one = rank_out[plans[0]]
    for plan in plans[1:]:
        assert set(rank_out[plan]) >= set(TP_METHODS), (plan, set(rank_out[plan]))
        for method, (lo, hi) in rank_out[plan].items():
            ref_lo, ref_hi = one[method]
            if plan == "fsdp":
                assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi), (plan, method)
            else:
                assert torch.allclose(lo, ref_lo, rtol=rtol, atol=atol), (plan, method, (lo - ref_lo).abs().max())
                assert torch.allclose(hi, ref_hi, rtol=rtol, atol=atol), (plan, method, (hi - ref_hi).abs().max())
