"""methods/adam.py: the bound parameters' Adam is torch.optim.Adam's update, without importing
torch._dynamo (the start-up cost it removes: scripts/startup_phases.py, docs/TRUST.md)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dtensor_verify.methods.adam import Adam


def _loss(params, it):
    a, b, c = params
    loss = (a.sin() * (it + 1)).sum() + (b ** 2 - a[:3].sum()).sum()
    if it % 2 == 0:                     # c has no gradient on odd steps: its own step count
        loss = loss + (c.exp() * 0.3).sum()
    return loss


def test_same_iterates_as_torch_optim_adam():
    torch.manual_seed(0)
    init = [torch.randn(5), torch.randn(2, 3), torch.randn(4)]
    ours = [t.clone().requires_grad_() for t in init]
    ref = [t.clone().requires_grad_() for t in init]
    opt = Adam([(ours[:2], 0.5), (ours[2:], 0.01)])
    torch_opt = torch.optim.Adam([{"params": ref[:2], "lr": 0.5}, {"params": ref[2:], "lr": 0.01}], foreach=False)
    for it in range(12):
        opt.zero_grad()
        _loss(ours, it).backward()
        opt.step()
        torch_opt.zero_grad(set_to_none=True)
        _loss(ref, it).backward()
        torch_opt.step()
        for x, y in zip(ours, ref):
            assert torch.equal(x, y), (it, x, y)
    assert not torch.equal(ours[0], init[0])


def test_empty_is_refused():
    with pytest.raises(ValueError):
        Adam([([], 0.1)])


def test_does_not_import_dynamo():
    code = ("import sys, torch; from dtensor_verify.methods.adam import Adam\n"
            "p = torch.zeros(3, requires_grad=True); o = Adam([([p], 0.1)])\n"
            "(p - 1).pow(2).sum().backward(); o.step()\n"
            "assert float(p[0]) > 0 and 'torch._dynamo' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
