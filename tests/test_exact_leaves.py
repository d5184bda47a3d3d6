"""Exact decisions on fully split domains (issue 18, item 2): the LP of `bab/exact.py` proves
leaf domains or hands their minimiser to onnxruntime; without it such runs end `unknown`, and
every `unknown` says why (message and JSON)."""
from __future__ import annotations

import numpy as np
import pytest

import dtensor_verify as dv
import milp_oracle as mo
from dtensor_verify.bab import exact
from dtensor_verify.specs import read_vnnlib
from dtensor_verify.bab import BabOptions
from dtensor_verify.verify import verify_instance

pytestmark = pytest.mark.usefixtures("one_thread")

# Seeds whose runs reach fully split domains (attack off): unsat (leaves proved) and sat (a leaf's
# LP minimiser is the counterexample).
LEAF_SEEDS = [0, 18]


def _run(tmp_path, seed, **kw):
    inst = mo.instance(seed, n_in=3, hidden=(10, 10), gap_range=(1e-6, 1e-4))
    onnx_path, spec = mo.write(inst, tmp_path)
    model = dv.load(onnx_path)
    kw.setdefault("bab_options", BabOptions(split="relu"))     # ReLU splits reach fully split domains
    res = verify_instance(model, read_vnnlib(spec, model.n_inputs, model.n_outputs), onnx_path, 30,
                          attack=False, **kw)
    return inst, res


@pytest.mark.parametrize("seed", LEAF_SEEDS)
def test_leaf_domains_are_decided_exactly(tmp_path, seed):
    inst, res = _run(tmp_path, seed)
    assert res.verdict == inst.expected, (res.verdict, res.message)
    lp = res.bounds["bab"]["exact_lp"]
    assert lp["domains"] > 0 and lp["disabled"] is None
    if inst.expected == "unsat":
        assert lp["proved"] == lp["domains"]


@pytest.mark.parametrize("seed", LEAF_SEEDS)
def test_without_the_lp_leaves_end_unknown_with_the_reason(tmp_path, seed, monkeypatch):
    monkeypatch.setattr(exact.ExactLeaves, "_why_not", lambda self: "switched off by the test")
    inst, res = _run(tmp_path, seed)
    if inst.expected == "sat" and res.verdict == "sat":
        return                  # found by branch and bound's own vertex attack first: fine
    assert res.verdict == "unknown"
    assert "fully split domain" in res.message and "switched off by the test" in res.message
    assert res.as_dict()["message"] == res.message


def test_every_unknown_carries_a_reason(tmp_path):
    inst, res = _run(tmp_path, 13, bab=False)
    assert res.verdict == "unknown" and "branch and bound is off" in res.message


def test_dual_bound_never_exceeds_the_lp_optimum():
    """The Lagrangian bound from any multipliers is a lower bound; at HiGHS's multipliers it is
    tight to float error."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        m, n = int(rng.integers(2, 12)), int(rng.integers(1, 6))
        A = rng.standard_normal((m, n))
        b = rng.standard_normal(m)
        scale = np.abs(A).sum(1) + np.abs(b)
        A, b = A / scale[:, None], b / scale
        (status, t_star, bound, u), = exact._solve_blocks([(A, b)])
        assert status == 0
        # Brute force on a grid of the box: t* is at most the best grid point's max row.
        grid = rng.uniform(-1, 1, (4000, n))
        assert t_star <= float((grid @ A.T + b).max(1).min()) + 1e-9
        assert bound <= t_star + 1e-12 and bound >= t_star - 1e-7
        assert exact._dual_bound(A, b, rng.uniform(0, 1, m)) <= t_star + 1e-12


def test_blocks_in_one_call_match_single_calls():
    rng = np.random.default_rng(1)
    blocks = []
    for _ in range(5):
        A, b = rng.standard_normal((6, 3)), rng.standard_normal(6)
        s = np.abs(A).sum(1) + np.abs(b)
        blocks.append((A / s[:, None], b / s))
    together = exact._solve_blocks(blocks)
    for blk, got in zip(blocks, together):
        (alone,) = exact._solve_blocks([blk])
        assert abs(alone[1] - got[1]) < 1e-9 and got[2] <= got[1] + 1e-12


# -- domains with a few unstable neurons left: one LP per phase pattern ------------------------
def _fake_oracle(lo, up, signs):
    """An ExactLeaves over one 'ReLU layer' whose bounds / signs are given: enough for phases()."""
    import torch
    from types import SimpleNamespace
    oracle = object.__new__(exact.ExactLeaves)
    oracle.problem = SimpleNamespace(relus=["r"], pre_of={"r": "z"})

    class FakeDomains(SimpleNamespace):
        def __len__(self):
            return len(self.pair)

    domains = FakeDomains(bounds={"z": (torch.tensor(lo), torch.tensor(up))}, signs={"r": torch.tensor(signs)},
                          pair=torch.zeros(len(lo), dtype=torch.long))
    return oracle, domains


def test_enumerated_patterns_cover_the_unstable_neurons():
    # Domain 0: neuron 0 active (bounds), 1 split inactive, 2 and 3 unstable; domain 1: 1 unstable.
    oracle, domains = _fake_oracle([[0.5, -1.0, -1.0, -2.0], [-1.0, 0.1, 0.2, -3.0]],
                                   [[1.0, 1.0, 1.0, 2.0], [-0.5, 0.3, 0.4, 1.0]],
                                   [[0, 1, 0, 0], [0, 0, 0, 0]])
    assert oracle.few_unstable(domains).tolist() == [True, True]
    owner, masks = oracle.enumerated(domains)
    assert owner.tolist() == [0, 0, 0, 0, 1, 1]
    rows = [tuple(int(v) for v in m) for m in masks["r"]]
    assert sorted(rows[:4]) == [(1, 0, a, b) for a in (0, 1) for b in (0, 1)]
    assert sorted(rows[4:]) == [(0, 1, 1, 0), (0, 1, 1, 1)]


def test_more_unstable_neurons_than_enumerated_are_left_to_branching():
    n = exact.MAX_ENUMERATED + 1
    oracle, domains = _fake_oracle([[-1.0] * n, [1.0] * n], [[1.0] * n, [2.0] * n], [[0] * n, [0] * n])
    assert oracle.few_unstable(domains).tolist() == [False, False]     # too many; a leaf (none)


@pytest.mark.parametrize("seed", LEAF_SEEDS + [5, 7])
def test_few_unstable_domains_decided_by_enumeration_match_the_milp(tmp_path, seed):
    """With the enumeration on (the default in one process), the verdicts stay the MILP's."""
    inst, res = _run(tmp_path, seed)
    assert res.verdict == inst.expected, (res.verdict, res.message)
    lp = res.bounds["bab"].get("exact_lp") or {}
    if seed in LEAF_SEEDS:
        assert lp.get("enumerated_domains", 0) > 0, lp


def test_few_unstable_lps_take_a_bounded_share_of_bounding_time():
    from dtensor_verify.bab.exact_hooks import LP_SHARE_OF_BOUNDING, lp_budget_seconds
    assert lp_budget_seconds(100.0, 0.0, 0.0) == pytest.approx(0.05)          # a start allowance
    assert lp_budget_seconds(100.0, 10.0, 0.0) == pytest.approx(LP_SHARE_OF_BOUNDING * 10 + 0.05)
    assert lp_budget_seconds(100.0, 10.0, 5.0) == 0.0                         # share used up
    assert lp_budget_seconds(1.0, 1000.0, 0.0) == pytest.approx(0.25)         # a quarter of the time left
