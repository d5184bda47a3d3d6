"""The first attack round is deferred after the first bound when a timed probe says it would eat
more than a share of the time left (verify/attack_cost.py): the verdicts stay the same (unsat by
the bound, sat still found by the deferred round), only the order of the stages changes."""
from __future__ import annotations

import math

import pytest

from dtensor_verify.verify import AttackOptions, verify_instance
from dtensor_verify.verify import attack_cost
from test_many_pairs import _model, _prop

pytestmark = pytest.mark.usefixtures("one_thread")


def test_probe_estimate_is_positive_and_cheap_round_not_deferred():
    model, log = _model(), []
    res = verify_instance(model, _prop(20), None, timeout=600, methods=("crown",), log=log.append)
    assert res.verdict == "unsat" and list(res.phases) == ["attack", "crown"], res.phases
    assert not any("first round" in m for m in log)
    from dtensor_verify.verify.instance import Clock, open_instance
    from dtensor_verify.verify.result import VerifyResult

    inst = open_instance(model, _prop(20), None, Clock(60, model.layout), log.append, AttackOptions(),
                         VerifyResult("unknown", None, 0.0))
    est = attack_cost.round_seconds(inst, 40)
    assert 0 < est < math.inf


def test_costly_round_deferred_unsat_by_the_bound(monkeypatch):
    monkeypatch.setattr(attack_cost, "round_seconds", lambda inst, n: 1e9)
    model, log = _model(), []
    res = verify_instance(model, _prop(20), None, timeout=60, methods=("crown",), log=log.append)
    assert res.verdict == "unsat" and res.decided_by == "crown" and "attack" not in res.phases, res.phases
    assert any("first round" in m for m in log), log


def test_costly_round_deferred_sat_still_found(monkeypatch):
    monkeypatch.setattr(attack_cost, "round_seconds", lambda inst, n: 1e9)
    model = _model()
    res = verify_instance(model, _prop(20, reachable=(3,)), None, timeout=60, methods=("crown",))
    assert res.verdict == "sat" and res.confirmed_by == "torch", res
    assert list(res.phases)[0] == "crown", res.phases          # found after the bound, not before


def test_few_pairs_never_probed(monkeypatch):
    monkeypatch.setattr(attack_cost, "round_seconds", lambda inst, n: 1e9)
    res = verify_instance(_model(), _prop(4), None, timeout=60, methods=("crown",))
    assert res.verdict == "unsat" and list(res.phases) == ["attack", "crown"], res.phases
