"""Neurons fixed in every box of a batch (zero-width boxes: functions of fixed inputs only, as the
set elements and masks of nn4sys mscn) get no CROWN sweep (`crown_rows.rows_to_bound`) and keep
their exact value (`scatter_rows`). Checked: the bounds contain sampled and attacked outputs, equal
the bounds with every row swept, and a box's bounds do not depend on the rest of its batch."""
from __future__ import annotations

import importlib

import pytest
import torch

import mscn_nets as M
from dtensor_verify.attack import pgd
from dtensor_verify.methods.crown import CrownOptions, intermediate_bounds
from dtensor_verify.methods.crown_rows import rows_to_bound

crown_mod = importlib.import_module("dtensor_verify.methods.crown")
alpha_mod = importlib.import_module("dtensor_verify.methods.alpha_crown")

pytestmark = pytest.mark.usefixtures("one_thread")


def _every_row(lower, upper, opts, all_rows=False):
    """rows_to_bound before the fixed-row rule (reference)."""
    if not opts.skip_stable or all_rows:
        return torch.arange(lower.flatten(1).shape[1], device=lower.device)
    return ((lower < 0) & (upper > 0)).flatten(1).any(0).nonzero().flatten()


def test_rows_to_bound_leaves_out_rows_fixed_in_every_box():
    lo = torch.tensor([[-1.0, 2.0, 0.0, -3.0], [-1.0, 2.0, 0.0, -2.0]])
    up = torch.tensor([[1.0, 2.0, 0.0, -3.0], [1.0, 2.0, 1.0, -3.0 + 2.0]])
    assert rows_to_bound(lo, up, CrownOptions(skip_stable=False)).tolist() == [0, 2, 3]
    assert rows_to_bound(lo, up, CrownOptions(), all_rows=True).tolist() == [0, 2, 3]
    assert rows_to_bound(lo, up, CrownOptions()).tolist() == [0]          # unstable and moving
    empty = torch.zeros(0, 4)
    assert rows_to_bound(empty, empty, CrownOptions(skip_stable=False)).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crown_with_fixed_rows_contains_sampled_and_attacked_outputs(seed):
    model = M.load(seed)
    lo, hi = M.boxes(6, seed, moving=((0, M.FEATS - 1), (1, 0)))
    res = model.compute_bounds(lo, hi, method="crown")
    n = 400
    t = torch.rand(n, *lo.shape, generator=torch.Generator().manual_seed(seed))
    x = (lo + t * (hi - lo)).reshape(-1, *M.SHAPE)
    with torch.no_grad():
        y = model.forward(x).reshape(n, len(lo))
    tol = 1e-6
    assert (y >= res.lower.flatten() - tol).all() and (y <= res.upper.flatten() + tol).all()
    for sign in (1.0, -1.0):                      # PGD towards each side of the output
        _, best = pgd(model.forward, lo, hi, lambda v: sign * v[..., 0],
                      steps=30, restarts=4, seed=seed)
        bound = res.lower.flatten() if sign > 0 else -res.upper.flatten()
        assert (best.flatten() >= bound - tol).all()


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_fixed_rows_give_the_bounds_of_every_row_swept(method, monkeypatch):
    model = M.load(3)
    lo, hi = M.boxes(5, 3)
    new = model.compute_bounds(lo, hi, method=method)
    monkeypatch.setattr(crown_mod, "rows_to_bound", _every_row)
    monkeypatch.setattr(alpha_mod, "rows_to_bound", _every_row)
    old = model.compute_bounds(lo, hi, method=method)
    atol = 1e-5 if method == "crown" else 2e-3          # (alpha: the same steps from the same start)
    assert torch.allclose(new.lower, old.lower, atol=atol) and torch.allclose(new.upper, old.upper, atol=atol)
    if method == "crown":
        assert (new.upper - new.lower).min() > 0                       # the boxes do move the output


def test_a_box_bounds_do_not_depend_on_its_batch():
    model = M.load(4)
    lo1, hi1 = M.boxes(1, 4)                                            # moves one feature
    lo2, hi2 = M.boxes(1, 5, moving=((0, 0), (1, 1), (M.ELEMS, 2)))     # moves others, in both sets
    opts = CrownOptions(skip_stable=False)
    alone, _ = intermediate_bounds(model.graph, (lo1, hi1), model.layout, opts)
    both, _ = intermediate_bounds(model.graph, (torch.cat([lo1, lo2]), torch.cat([hi1, hi2])), model.layout, opts)
    for name, (l, u) in alone.items():
        bl, bu = both[name]
        assert torch.allclose(l, bl[:1], atol=1e-6) and torch.allclose(u, bu[:1], atol=1e-6), name
        fixed = l == u                       # a point alone stays a point in the batch
        assert torch.equal(bl[:1][fixed], bu[:1][fixed]), name
