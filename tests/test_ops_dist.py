"""New ops under placement plans (P = 2, CPU gloo): a small network with structural ops
(Concat, Slice, Transpose, Pad, AveragePool), Sigmoid and Tanh bounds under fsdp and spec as in
one process (fsdp bitwise at one thread, spec within tolerance); tp shards its Linear layers and
places the non-elementwise ops on whole tensors."""
from __future__ import annotations

import torch
from torch import nn

from dist_utils import run_distributed
from plan_checks import assert_plans_match_one, bounds_per_method, methods_for


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 12)
        self.c = nn.Linear(24, 4)

    def forward(self, x):
        h = torch.sigmoid(self.a(x))                          # [16]
        g = h.reshape(-1, 4, 4).transpose(1, 2)               # [4, 4]
        g = nn.functional.avg_pool1d(nn.functional.pad(g, (1, 1), value=0.1), 2)   # [4, 3]
        t = torch.tanh(self.b(h))                             # [12]
        z = torch.cat([g.flatten(1), t], 1)                   # [24]
        return self.c(z)


def _box():
    gen = torch.Generator().manual_seed(3)
    mid = torch.randn(2, 8, generator=gen)
    return mid - 0.3, mid + 0.3


def _job(rank, world, plans):
    import dtensor_verify as dv
    from placements import apply_plan, mesh_from_process_group

    out = {}
    for plan in plans:
        m = dv.load(_Mixed().eval(), (8,))
        if plan != "one":
            apply_plan(m, plan, mesh_from_process_group())
        lo, hi = _box()
        out[plan] = bounds_per_method(m, lo, hi, methods_for(plan))
    return out


def test_new_ops_under_plans(tmp_path):
    plans = ("one", "fsdp", "spec", "tp")
    results = run_distributed(_job, 2, tmp_path, plans, timeout_s=120.0)
    for rank_out in results:
        assert_plans_match_one(rank_out, plans)
