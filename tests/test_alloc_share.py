"""No stage asks for more than this process's share of the device (issue 21).

On one H100 shared by 8 benchmark processes two vit_2023 ibp_3_3_8 rows ended "Tried to allocate
38.85 GiB": branch and bound's trial splits on the root (`mixed_fsb`: 3 + 21 candidates, 48
children) bounded the layers behind each cut again (`general_refresh.refine_after`) with every row
of a softmax difference node in one sweep (48 x 14,739 x 14,739 floats). `node_bound_rows` now
sizes the rows of a sweep it was not told how to chunk to the share (`alpha_budget.crown_max_rows`).

Here a miniature (one attention block over 6 tokens, then a ReLU MLP) runs the same first step of
branch and bound under `alloc_cap.AllocationCap`, a device of a few MB emulated on the CPU: the
old code asked for more than the whole device in one allocation.
"""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.alloc_cap import AllocationCap, new_bytes
from dtensor_verify.bab import BabOptions, BabSolver
from dtensor_verify.methods.crown import CrownOptions, node_bound_rows
from dtensor_verify.methods.ibp import ibp
from attention_nets import AttentionBlock, ibp_root

TOKENS = 6
SHARE = 3 << 20             # the emulated device: 3 MiB


_CACHE: dict = {}


def _case():
    if not _CACHE:
        m = dv.load(AttentionBlock(TOKENS).eval(), input_shape=(TOKENS, 4))
        x0 = torch.randn(1, TOKENS, 4, generator=torch.Generator().manual_seed(1))
        _CACHE.update(m=m, box=(x0 - 0.3, x0 + 0.3))
    return _CACHE


def _problem_and_roots():
    """One open pair (y0 - y1 <= 10 is unsafe: never proved here), IBP bounds at the root."""
    m, (lo, hi) = _case()["m"], _case()["box"]
    return ibp_root(m, lo, hi)


def _emulate(monkeypatch, device_bytes: int | None):
    monkeypatch.delenv("DTENSOR_VERIFY_SHARE_DEVICE", raising=False)
    if device_bytes is None:
        monkeypatch.delenv("DTENSOR_VERIFY_DEVICE_BYTES", raising=False)
    else:
        monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", str(device_bytes))


def test_allocation_cap_refuses_before_allocating():
    a = torch.randn(64, 64)
    with AllocationCap(1 << 20) as cap:
        b = a @ a                                   # 16 KiB: allowed
        a.expand(8, 64, 64)                         # a view: no allocation
        with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
            torch.zeros(1024, 1024)                 # 4 MiB > 1 MiB
    assert cap.largest == 4 << 20 and "zeros" in cap.largest_op
    assert b.shape == (64, 64)
    assert new_bytes(torch.ops.aten.expand.default, (a, [8, 64, 64]), {}) == 0


def test_bab_trial_splits_stay_within_the_share(monkeypatch, one_thread):
    """The root's trial splits (each candidate's layers behind its cut bounded again) at an
    emulated 3 MiB device: no allocation refused, the live bytes within it, and a split chosen.
    The old code swept every row of the softmax difference node for all children at once: one
    allocation of children x 216 x 216 floats, more than the whole device."""
    _emulate(monkeypatch, SHARE)
    problem, roots = _problem_and_roots()
    g = problem.graph
    widest = max(n.numel for n in g.nodes)
    solver = BabSolver(problem, BabOptions(), lambda: 1e9, lambda *a: None)
    with AllocationCap(SHARE, total=True) as cap:
        solver.add_roots(roots)
    assert len(solver.store) == 1 and solver.stats.proved == 0
    kids = 2 * (BabOptions().candidates + len(problem.general))        # the trial children
    assert kids * widest * widest * 4 > SHARE                            # what the old code asked at once
    assert cap.largest <= SHARE and cap.peak <= SHARE, (cap.largest, cap.peak)


def test_rows_sized_to_the_share_give_the_same_bounds(monkeypatch, one_thread):
    """Rows are independent: a sweep cut into the share's chunks gives each row the bounds of one
    sweep over all rows (within float rounding)."""
    problem, roots = _problem_and_roots()
    g, m = problem.graph, _case()["m"]
    name = max((n for n in problem.general), key=lambda n: g[n].numel)
    kids = roots.index(torch.zeros(16, dtype=torch.long))
    bounds = problem.bounds_of(kids)
    rows = torch.arange(g[name].numel)

    def sweep():
        with torch.no_grad(), AllocationCap(1 << 40) as cap:
            lo, up = node_bound_rows(g, name, rows, bounds, m.layout, CrownOptions(), 16)
        return lo, up, cap.largest

    _emulate(monkeypatch, None)
    lo_all, up_all, largest_all = sweep()
    _emulate(monkeypatch, SHARE // 4)
    lo, up, largest = sweep()
    assert largest < largest_all / 4
    torch.testing.assert_close(lo, lo_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(up, up_all, rtol=1e-5, atol=1e-5)
