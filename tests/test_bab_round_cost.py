"""A branch-and-bound round's fixed cost, cut without changing the search (issue 21): the ReLU
relaxation memoised over beta-CROWN's steps (`ops/relu.fixed_bounds_memo`), Adam's update and the
projection as `torch._foreach_*` calls. Bounds bitwise the same, the same domains visited."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

import dtensor_verify as dv
import dtensor_verify.methods.adam as adam
import dtensor_verify.methods.beta_crown as beta_module
import dtensor_verify.methods.optimize as optimize
from dtensor_verify.bab import BabOptions
from dtensor_verify.bab.domains import Domains
from dtensor_verify.ops.relu import fixed_bounds_memo, step_constants
from dtensor_verify.specs import parse_vnnlib
from dtensor_verify.verify import verify_instance
from model_zoo import random_mlp
from test_bab import root_problem, splits_matching

pytestmark = pytest.mark.usefixtures("one_thread")


def _per_tensor_projection(group):
    for p in group.params:
        p.clamp_(group.low, group.high)


@contextlib.contextmanager
def _slow_paths(monkeypatch):
    """The per-step work as before: relaxation every step, Adam and clamps tensor by tensor."""
    with monkeypatch.context() as m:
        m.setattr(beta_module, "fixed_bounds_memo", contextlib.nullcontext)
        m.setattr(adam, "_can_batch", lambda *a: False)
        m.setattr(optimize.ParamGroup, "project_", _per_tensor_projection)
        yield


def _split_batch(seed: int):
    net, shape = random_mlp([5, 24, 24, 24, 2], seed=seed)
    model = dv.load(net, input_shape=shape)
    lo, hi = -torch.ones(1, 5), torch.ones(1, 5)
    C, d = torch.tensor([[[1.0, -1.0]]]), torch.zeros(1, 1)
    problem, roots = root_problem(model, lo, hi, C, d)
    gen = torch.Generator().manual_seed(seed)
    doms = [splits_matching(model, problem, roots, torch.rand(1, 5, generator=gen) * 2 - 1, 3, gen)
            for _ in range(6)]
    return model, problem, Domains.cat(doms)


def _bound(model, problem, dom):
    return beta_module.beta_crown(model.graph, problem.bounds_of(dom), problem.C[dom.pair], problem.d[dom.pair],
                                  problem.row_mask[dom.pair], dom.alphas, dom.betas, dom.signs,
                                  opts=beta_module.BetaOptions(iterations=12, patience=100))


@pytest.mark.parametrize("seed", range(2))
def test_beta_crown_bitwise_the_same_with_and_without_the_memo(seed, monkeypatch):
    model, problem, dom = _split_batch(seed)
    fast = _bound(model, problem, dom)
    with _slow_paths(monkeypatch):
        slow = _bound(model, problem, dom)
    assert fast.iterations == slow.iterations == 12
    assert torch.equal(fast.lower, slow.lower)
    for r in slow.alphas:
        assert torch.equal(fast.alphas[r], slow.alphas[r]) and torch.equal(fast.betas[r], slow.betas[r])


def test_memo_recomputes_after_an_in_place_change_and_only_inside():
    lower, upper = torch.tensor([[-1.0, 0.5, -2.0]]), torch.tensor([[1.0, 2.0, -1.0]])
    assert step_constants(lower, upper) is not step_constants(lower, upper)      # no memo outside
    with fixed_bounds_memo():
        first = step_constants(lower, upper)
        assert step_constants(lower, upper) is first
        lower[0, 0] = 0.25                                                      # now active
        again = step_constants(lower, upper)
        assert again is not first and bool(again[4][0, 0, 0]) and not bool(first[4][0, 0, 0])
        assert all(torch.equal(a, b) for a, b in zip(again, step_constants(lower.clone(), upper.clone())))
        owner = object()                        # an op: one entry, replaced when its bounds change
        mine = step_constants(lower, upper, owner=owner)
        assert step_constants(lower, upper, owner=owner) is mine
        other = step_constants(lower.clone(), upper.clone(), owner=owner)
        assert other is not mine and step_constants(lower, upper, owner=owner) is not mine
        from dtensor_verify.ops import relu
        assert sum(1 for k in relu._memos()[-1] if not isinstance(k, tuple)) == 1
        grad = lower.clone().requires_grad_(True)
        assert step_constants(grad, upper) is not step_constants(grad, upper)  # a gradient: never memoised


def test_foreach_adam_and_projection_match_per_tensor():
    torch.manual_seed(0)
    init = [torch.randn(3, 4), torch.randn(7), torch.rand(2, 2)]
    runs = []
    for batched in (True, False):
        params = [t.clone().requires_grad_() for t in init]
        opt = adam.Adam([(params, 0.1)])
        group = optimize.ParamGroup(params, 0.1, 0.0, 1.0)
        for it in range(6):
            opt.zero_grad()
            sum(((p * (it + 1)).sin() * p).sum() for p in params).backward()
            if batched:
                assert adam._can_batch([p for p in params if p.grad is not None], opt.state)
                opt.step()
                with torch.no_grad():
                    group.project_()
            else:
                with torch.no_grad():
                    for p in params:
                        opt._update(p, p.grad, 0.1, opt.beta1, opt.beta2)
                    _per_tensor_projection(group)
        runs.append(params)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0], init[0])


def _threshold_property(t: float) -> str:
    return ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
            "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
            f"(assert (<= Y_0 {t!r}))\n")


def test_bab_visits_the_same_domains_with_and_without(monkeypatch):
    """ReLU branch and bound on a small net: the same verdict, rounds and domains visited."""
    net, shape = random_mlp([2, 24, 24, 1], seed=10)
    model = dv.load(net, input_shape=shape)
    grid = torch.cartesian_prod(torch.linspace(-1, 1, 201), torch.linspace(-1, 1, 201))
    with torch.no_grad():
        gmin = float(model.forward(grid).min())
    prop = parse_vnnlib(_threshold_property(gmin - 0.05 * math.sqrt(2)), n_inputs=2, n_outputs=1)
    opts = BabOptions(batch_size=8, split="relu")
    fast = verify_instance(model, prop, None, timeout=60, attack=False, bab_options=opts)
    with _slow_paths(monkeypatch):
        slow = verify_instance(model, prop, None, timeout=60, attack=False, bab_options=opts)
    assert fast.verdict == slow.verdict
    fb, sb = fast.bounds.get("bab"), slow.bounds.get("bab")
    assert fb is not None and fb["domains_visited"] > 8, (fast.verdict, fast.decided_by, fb)
    for key in ("domains_visited", "domains_proved", "rounds"):
        assert fb[key] == sb[key], key


def test_each_relaxation_is_computed_once_per_call(monkeypatch):
    from dtensor_verify.ops import relu

    model, problem, dom = _split_batch(0)
    calls = []
    real = relu.relaxation
    monkeypatch.setattr(relu, "relaxation", lambda lo, up: calls.append(1) or real(lo, up))
    result = _bound(model, problem, dom)
    assert result.iterations == 12 and len(calls) == len(problem.relus)
    calls.clear()
    with _slow_paths(monkeypatch):
        _bound(model, problem, dom)
    assert len(calls) == len(problem.relus) * 13        # a sweep before the steps, one each step
