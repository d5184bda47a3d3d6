"""Branching where bounding again the layers behind a cut is expensive (bab/refresh_cost.py):
general nodes whose refresh is over the budget are not tried, branching falls back to ReLU splits
and runs no refresh; where refreshes are cheap (the default budget on small nets) it still tries
general splits, as before."""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions, BabSolver, general_refresh, refresh_cost
from dtensor_verify.bab.general_split import is_general
from dtensor_verify.methods.ibp import ibp
from attention_nets import AttentionBlock, ibp_root

TOKENS = 4


def _problem_and_roots():
    """One open pair (y0 - y1 <= 10: not proved at the root), IBP bounds at the root."""
    m = dv.load(AttentionBlock(TOKENS).eval(), input_shape=(TOKENS, 4))
    x0 = torch.randn(1, TOKENS, 4, generator=torch.Generator().manual_seed(1))
    lo, hi = x0 - 0.3, x0 + 0.3
    return ibp_root(m, lo, hi)


def _first_round(monkeypatch):
    """(refresh calls, decisions tried by strong branching, the root's chosen decision)."""
    problem, roots = _problem_and_roots()
    calls, tried = [], []
    refine = general_refresh.refine_after

    def counting(problem, kids, cut, lockstep):
        calls.append(list(cut))
        return refine(problem, kids, cut, lockstep)
    monkeypatch.setattr(general_refresh, "refine_after", counting)
    solver = BabSolver(problem, BabOptions(split="relu"), lambda: 1e9, lambda *a: None)
    bound_once = solver.ctx.bound_once

    def recording(domains, refresh=False, decision=None):
        if decision is not None:
            tried.append(decision.clone())
        return bound_once(domains, refresh, decision)
    solver.ctx.bound_once = recording
    solver.add_roots(roots)
    parents, _ = solver.store.pop_worst(1)
    return problem, calls, torch.cat(tried) if tried else torch.zeros(0, 2, dtype=torch.long), parents.decision


@pytest.mark.usefixtures("one_thread")
def test_cheap_refresh_still_tries_general_splits(monkeypatch):
    monkeypatch.delenv("DTENSOR_VERIFY_REFRESH_BUDGET", raising=False)
    problem, calls, tried, _ = _first_round(monkeypatch)
    assert problem.general and all(refresh_cost.affordable_general(problem))
    assert bool(is_general(tried[:, 0]).any())            # general candidates were tried ...
    assert calls and any(set(c) & set(problem.general) for c in calls)   # ... with their refresh


@pytest.mark.usefixtures("one_thread")
def test_expensive_refresh_falls_back_to_relu_splits(monkeypatch):
    monkeypatch.setattr(refresh_cost, "REFRESH_BUDGET", 0.0)     # every general refresh over budget
    monkeypatch.delenv("DTENSOR_VERIFY_REFRESH_BUDGET", raising=False)
    problem, calls, tried, decision = _first_round(monkeypatch)
    assert not any(refresh_cost.affordable_general(problem))
    assert len(tried) and bool((tried[:, 0] >= 0).all())          # ReLU candidates only
    assert calls == []                                             # and no trial refresh
    assert int(decision[0, 0]) >= 0                                # the root splits a ReLU


def test_budget_from_the_environment(monkeypatch):
    problem, _ = _problem_and_roots()
    costs = {n: refresh_cost.refresh_cost(problem, [n]) for n in problem.general}
    assert all(c > 0 for c in costs.values())
    cut = max(costs.values())
    monkeypatch.setenv("DTENSOR_VERIFY_REFRESH_BUDGET", str(cut - 1))
    expect = [costs[n] <= cut - 1 for n in problem.general]
    assert refresh_cost.affordable_general(problem) == expect and not all(expect)
    monkeypatch.setenv("DTENSOR_VERIFY_REFRESH_BUDGET", "inf")
    assert all(refresh_cost.affordable_general(problem))


def test_sweep_cost_counts_rows_times_ancestors():
    problem, _ = _problem_and_roots()
    g = problem.graph
    name = problem.general[-1]
    width = sum(g[a].numel for a in g.ancestors(name))
    assert refresh_cost.sweep_cost(g, name) == g[name].numel * width
    # A refresh behind the first general node sweeps every carried node after it.
    first = problem.general[0]
    behind = general_refresh.downstream(g, [first])
    expect = sum(refresh_cost.sweep_cost(g, n) for n in behind
                 if n in set(g.preactivation_nodes()) and not g.affine_from_input(n))
    assert refresh_cost.refresh_cost(problem, [first]) == expect > 0
