"""Properties with many (region, disjunct) pairs (nn4sys lindex: 120 000): the first attack waits
for the first bound and runs only on the pairs it left open, with its restarts cut to a budget of
pairs x restarts. Verdicts stay sound: unsat only from the bounds, sat only when confirmed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.specs.spec_types import OutputDisjunct, Property, Region
from dtensor_verify.verify import AttackOptions, verify_instance

pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    return dv.load(net, input_shape=(2,))


def _prop(n_regions: int, reachable: tuple = ()) -> Property:
    """Small boxes on a line; every disjunct asks Y_j >= 1000 (unreachable), except the regions in
    `reachable`, whose second disjunct is Y_1 <= 1000 (always true: a counterexample everywhere)."""
    regions = []
    for r in range(n_regions):
        lo = np.array([-1 + 2 * r / n_regions, -0.5])
        far = [OutputDisjunct(np.array([[-1.0, 0.0]]), np.array([-1000.0])),
               OutputDisjunct(np.array([[0.0, -1.0]]), np.array([-1000.0]))]
        if r in reachable:
            far[1] = OutputDisjunct(np.array([[0.0, 1.0]]), np.array([1000.0]))
        regions.append(Region(lo, lo + np.array([0.01, 0.5]), far))
    return Property(2, 2, regions, "many.vnnlib")


def test_many_pairs_bound_first_then_no_attack_when_all_proved():
    model, log = _model(), []
    res = verify_instance(model, _prop(200), None, timeout=60, methods=("crown",), log=log.append,
                          attack_options=AttackOptions(defer_above=100))
    # 400 pairs: IBP first (it proves them all), the attack deferred and then not needed.
    assert res.verdict == "unsat" and res.decided_by == "ibp", res
    assert "attack" not in res.phases and any("deferred" in m for m in log)
    # Below the thresholds the attack still comes first, and no IBP pass.
    res = verify_instance(model, _prop(20), None, timeout=60, methods=("crown",),
                          attack_options=AttackOptions(defer_above=100))
    assert res.verdict == "unsat" and list(res.phases) == ["attack", "crown"], res.phases


def test_many_pairs_bound_first_then_sat_confirmed():
    model = _model()
    reach = (7, 50, 133)
    prop = _prop(200, reachable=reach)
    res = verify_instance(model, prop, None, timeout=60, methods=("crown",),
                          attack_options=AttackOptions(defer_above=100))
    assert res.verdict == "sat" and res.confirmed_by == "torch", res
    assert list(res.phases)[:2] == ["ibp", "crown"], res.phases     # no attack on all 400 pairs first
    assert res.bounds["ibp"]["proved"] == 397 and res.bounds["crown"]["pairs"] == 3, res.bounds
    x, _ = res.counterexample
    assert any(np.all(x >= prop.regions[r].lower) and np.all(x <= prop.regions[r].upper) for r in reach)


def test_deferred_attack_runs_on_open_pairs_only_with_cut_restarts():
    from dtensor_verify.verify.instance import Clock, open_instance
    from dtensor_verify.verify.result import VerifyResult
    from dtensor_verify.verify.stages import DeferredAttack

    model, log = _model(), []
    prop = _prop(200, reachable=(7, 50, 133))
    res = VerifyResult("unknown", None, 0.0)
    inst = open_instance(model, prop, None, Clock(60, model.layout), log.append,
                         AttackOptions(defer_above=100, deferred_samples=5), res)
    n_log = len(log)
    assert DeferredAttack().run(inst) is None and len(log) == n_log    # not deferred: a no-op
    for p, (r, j) in enumerate(inst.pairs.index):
        if not (r in (7, 50, 133) and j == 1):
            inst.details[p].status = "proved"                       # as if CROWN proved them
    inst.attack_deferred = True
    decision = DeferredAttack().run(inst)
    assert decision is not None and decision.verdict == "sat"
    assert any(m.startswith("attack: 1 restarts") for m in log), log   # 5 samples / 3 pairs
    assert inst.attack_deferred is False


def test_stack_places_every_pairs_rows_after_the_previous_ones():
    from dtensor_verify.verify.bounds import _stack
    from dtensor_verify.verify.instance import Pairs

    two = OutputDisjunct(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([5.0, 6.0]))
    one = OutputDisjunct(np.array([[7.0, 8.0]]), np.array([9.0]))
    prop = Property(2, 2, [Region(np.zeros(2), np.ones(2), [one, two]), Region(np.zeros(2), np.ones(2), [two])],
                    "rows.vnnlib")
    pairs = Pairs(prop, 2)
    batch = _stack(pairs, [[0, 1], [2]])
    assert batch.slots == [(0, 0, 0), (0, 1, 1), (1, 0, 2)] and batch.regions == [0, 1]
    assert batch.C.tolist() == [[[7, 8], [1, 2], [3, 4]], [[1, 2], [3, 4], [0, 0]]]
    assert batch.d.tolist() == [[9, 5, 6], [5, 6, 0]]
