"""Many small input boxes with input splitting ahead (nn4sys mscn, `verify/many_boxes.py`):
alpha-CROWN and the attack-extra round are skipped above `MANY_PAIRS` open pairs, the deferred
attack gets a few restarts per perturbed input; verdicts stay sound (unsat proved by branch and
bound on every pair, sat only confirmed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mscn_nets as M
from dtensor_verify.specs.spec_types import OutputDisjunct, Property, Region
from dtensor_verify.verify import many_boxes, verify_instance

pytestmark = pytest.mark.usefixtures("one_thread")


def _prop(model, n: int, reachable=(), gap: float = 0.3):
    """n boxes moving one feature; each region's disjuncts are Y <= lo - g and Y >= hi + g, with
    [lo, hi] the sampled output range and g a `gap` of the distance to CROWN's bounds (so that
    CROWN leaves them open and splitting proves them); `reachable` regions get Y <= hi (sat)."""
    lo, hi = M.boxes(n, 7, width=0.6)
    res = model.compute_bounds(lo, hi, method="crown")
    t = torch.linspace(0, 1, 201).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        y = model.forward((lo + t * (hi - lo)).reshape(-1, *M.SHAPE)).reshape(201, n)
    mn, mx = y.min(0).values, y.max(0).values
    cl, cu = res.lower.flatten(), res.upper.flatten()
    regions = []
    for r in range(n):
        below = float(mn[r] - gap * (mn[r] - cl[r])) - 1e-5    # (a tight CROWN bound: proved)
        above = float(mx[r] + gap * (cu[r] - mx[r])) + 1e-5
        if r in reachable:
            below = float(mx[r])
        ds = [OutputDisjunct(np.array([[1.0]]), np.array([below])),
              OutputDisjunct(np.array([[-1.0]]), np.array([-above]))]
        regions.append(Region(lo[r].flatten().double().numpy(), hi[r].flatten().double().numpy(), ds))
    return Property(lo[0].numel(), 1, regions, "sets.vnnlib")


def test_skip_policy():
    assert many_boxes.skip_above(False, "alpha-crown", 1) is None        # no input splitting ahead
    assert many_boxes.skip_above(True, "crown", 0) is None               # the first method always runs
    assert many_boxes.skip_above(True, "alpha-crown", 1) == many_boxes.MANY_PAIRS
    assert many_boxes.skip_above(True, "attack-extra", 1) == many_boxes.MANY_PAIRS


def test_many_boxes_skip_alpha_and_prove_by_input_splitting(monkeypatch):
    model = M.load(1)
    prop = _prop(model, 12)
    monkeypatch.setattr(many_boxes, "MANY_PAIRS", 4)
    log = []
    res = verify_instance(model, prop, None, timeout=120, methods=("crown", "alpha-crown"), log=log.append)
    assert res.verdict == "unsat" and res.decided_by == "bab", (res.verdict, res.message)
    assert res.bounds["crown"]["open"] > 4, res.bounds                  # what makes the regime
    assert "skipped" in res.bounds["alpha-crown"] and "skipped" in res.bounds["attack-extra"]
    assert res.bounds["bab"]["split"] == "input"
    # Without branch and bound nothing is skipped (alpha-CROWN is then the last word).
    res = verify_instance(model, prop, None, timeout=120, methods=("crown", "alpha-crown"), bab=False)
    assert "proved" in res.bounds["alpha-crown"] and "skipped" not in res.bounds["alpha-crown"], res.bounds


def test_many_boxes_sat_still_confirmed(monkeypatch):
    model = M.load(1)
    reach = (5,)
    prop = _prop(model, 12, reachable=reach)
    monkeypatch.setattr(many_boxes, "MANY_PAIRS", 4)
    res = verify_instance(model, prop, None, timeout=120, methods=("crown", "alpha-crown"))
    assert res.verdict == "sat" and res.confirmed_by == "torch", (res.verdict, res.message)
    x, _ = res.counterexample
    r = prop.regions[reach[0]]
    assert np.all(x.flatten() >= r.lower - 1e-7) and np.all(x.flatten() <= r.upper + 1e-7)


def test_deferred_restarts_per_perturbed_input():
    class Inst:
        pair_lo = torch.zeros(3, 4)
        pair_hi = torch.tensor([[0.0, 1, 0, 0], [0.0, 1, 1, 0], [0.0, 0, 0, 0]])

        def open_pairs(self):
            return self.idx
    inst = Inst()
    inst.idx = [0, 1]
    assert many_boxes.box_restarts(inst, 20) == 2 * many_boxes.PER_DIM_RESTARTS
    inst.idx = [0]
    assert many_boxes.box_restarts(inst, 20) == many_boxes.PER_DIM_RESTARTS
    assert many_boxes.box_restarts(inst, 1) == 1
    inst.idx = [2]
    assert many_boxes.box_restarts(inst, 20) == 1


def test_deferred_steps_capped():
    assert many_boxes.box_steps(100) == many_boxes.BOX_STEPS
    assert many_boxes.box_steps(10) == 10
