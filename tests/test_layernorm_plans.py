"""A transformer block (LayerNorm, attention with softmax, residuals, ReLU MLP; torch -> ONNX in
the test) bounds end to end under placement plans (P = 2, CPU gloo) as in one process: fsdp
bitwise at one thread, spec within tolerance; tp refuses the block's [tokens, width] Linear layers
in one line naming a working plan (fsdp there, tp on the head), which then bounds within tolerance
(IBP and CROWN, as tests/test_ops_dist.py; the loop and the check are `tests/plan_checks.py`)."""
from __future__ import annotations

import pytest
import torch

from dist_utils import run_distributed
from plan_checks import assert_plans_match_one, bounds_per_method, methods_for


def _box():
    gen = torch.Generator().manual_seed(3)
    mid = torch.randn(2, 3, 4, generator=gen)
    return mid - 0.05, mid + 0.05


def _job(rank, world, path, plans):
    import dtensor_verify as dv
    from dtensor_verify.errors import PlanError
    from placements import apply_plan, mesh_from_process_group

    torch.set_num_threads(1)
    out = {}
    for plan in plans:
        m = dv.load(path)
        if plan == "tp":
            # tp refuses the [tokens, width] Linear layers in one line that names a working plan.
            try:
                apply_plan(m, plan, mesh_from_process_group())
                raise AssertionError("tp accepted [3, 4] Linear outputs")
            except PlanError as exc:
                out["tp_refusal"] = str(exc)
                plan = str(exc).split('--plan "')[1].rstrip('"')
                m = dv.load(path)
        if plan != "one":
            apply_plan(m, plan, mesh_from_process_group())
        lo, hi = _box()
        out["tp" if "tp" in plan else plan] = bounds_per_method(m, lo, hi, methods_for(plan))
    return out


# fsdp (bitwise equal to one process, as on every other model) under -m slow: the block's alpha-CROWN takes ~5 s a
# plan on one core, and the default run is near its 15 minutes.
@pytest.mark.parametrize("plans", [("one", "spec", "tp"),
                                   pytest.param(("one", "fsdp", "spec", "tp"), marks=pytest.mark.slow)],
                         ids=["spec-tp", "every"])
def test_transformer_block_under_plans(tmp_path, plans):
    from layernorm_nets import Block, export

    net = Block().eval()
    path = export(net, (3, 4), tmp_path / "block.onnx", 17)
    results = run_distributed(_job, 2, tmp_path, path, plans, timeout_s=240.0)
    lo, hi = _box()
    xs = lo + (hi - lo) * torch.rand(500, *lo.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ys = torch.stack([net(x) for x in xs])                       # [500, 2, 3]
    for rank_out in results:
        assert "\n" not in rank_out["tp_refusal"] and "=fsdp;*=tp" in rank_out["tp_refusal"]
        for method, (l1, u1) in rank_out["one"].items():
            assert (l1 <= ys.min(0).values + 1e-5).all() and (u1 >= ys.max(0).values - 1e-5).all(), method
        assert_plans_match_one(rank_out, plans)
