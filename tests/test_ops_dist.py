"""New ops under placement plans (P = 2, CPU gloo): a small network with structural ops
(Concat, Slice, Transpose, Pad, AveragePool), Sigmoid and Tanh bounds under fsdp and spec as in
one process (fsdp bitwise at one thread, spec within tolerance); tp shards its Linear layers and
places the non-elementwise ops on whole tensors."""
from __future__ import annotations

import torch
from torch import nn

from dist_utils import run_distributed


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
        res = {}
        # alpha-CROWN under tp is slow on CPU DTensors (~20 s here): tp runs IBP and CROWN.
        for method in ("ibp", "crown") if plan == "tp" else ("ibp", "crown", "alpha-crown"):
            r = m.compute_bounds(lo, hi, method, alpha_options=dv.AlphaOptions(iterations=2))
            res[method] = (r.lower.detach().cpu(), r.upper.detach().cpu())
        out[plan] = res
    return out


def test_new_ops_under_plans(tmp_path):
    plans = ("one", "fsdp", "spec", "tp")
    results = run_distributed(_job, 2, tmp_path, plans, timeout_s=120.0)
    for rank_out in results:
        one = rank_out["one"]
        for plan in plans[1:]:
            assert set(rank_out[plan]) >= {"ibp", "crown"}
            for method, (lo, hi) in rank_out[plan].items():
                ref_lo, ref_hi = one[method]
                if plan == "fsdp":
                    assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi), (plan, method)
                else:
                    assert torch.allclose(lo, ref_lo, rtol=1e-5, atol=1e-5), (plan, method, (lo - ref_lo).abs().max())
                    assert torch.allclose(hi, ref_hi, rtol=1e-5, atol=1e-5), (plan, method)
