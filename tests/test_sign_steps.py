"""Sign steps (methods/sign_steps.py) for the softmax / LayerNorm shift's gates: on concave
piecewise-linear objectives (the bound as a function of one shift, its maximum at a kink) every
entry bisects towards its kink; `maximise` runs them beside Adam (`ParamGroup(rule="sign")`);
alpha-CROWN's final line search over one gate per row (`softmax_sum.search_gates`)."""
from __future__ import annotations

import torch

from dtensor_verify.layout import DEFAULT_LAYOUT
from dtensor_verify.methods.optimize import ParamGroup, maximise
from dtensor_verify.methods.sign_steps import SignSteps


def _objective(g, kinks, slopes_left, slopes_right):
    """Concave, piecewise linear per entry: rising left of its kink, falling right of it."""
    return torch.where(g < kinks, slopes_left * (g - kinks), -slopes_right * (g - kinks)).sum()


def test_sign_steps_reach_the_kinks():
    gen = torch.Generator().manual_seed(0)
    kinks = torch.rand(200, generator=gen)
    left, right = 0.1 + 3 * torch.rand(200, generator=gen), 0.1 + 3 * torch.rand(200, generator=gen)
    g = torch.ones(200, requires_grad=True)
    opt = SignSteps([([g], 0.5)])
    for _ in range(40):
        opt.zero_grad()
        (-_objective(g, kinks, left, right)).backward()
        opt.step()
        with torch.no_grad():
            g.clamp_(0.0, 1.0)
    assert (g - kinks).abs().max() < 2e-3, float((g - kinks).abs().max())


def test_zero_gradient_does_not_move():
    g = torch.full((3,), 0.4, requires_grad=True)
    opt = SignSteps([([g], 0.5)])
    g.grad = torch.tensor([0.0, 1.0, -1.0])
    opt.step()
    assert g[0] == 0.4 and g[1] < 0.4 and g[2] > 0.4


def test_maximise_with_a_sign_group():
    gen = torch.Generator().manual_seed(1)
    kinks = torch.rand(50, generator=gen)
    g = torch.ones(50, requires_grad=True)
    w = torch.zeros(3, requires_grad=True)                    # an Adam group beside it
    target = torch.tensor([0.2, -0.1, 0.4])
    best = {"score": -float("inf")}

    def evaluate(it):
        value = _objective(g, kinks, torch.ones(50), torch.ones(50)) - ((w - target) ** 2).sum()
        return -value, float(value.detach())

    def keep_best(score):
        best["score"] = max(best["score"], score)
        return best["score"], False

    maximise([ParamGroup([w], 0.05, -1.0, 1.0), ParamGroup([g], 0.5, 0.0, 1.0, "sign")], evaluate, keep_best,
             60, DEFAULT_LAYOUT, patience=100)
    assert (g - kinks).abs().max() < 2e-3 and (w - target).abs().max() < 0.05


class _Node:
    def __init__(self, op):
        self.op = op


def test_search_gates_finds_each_rows_best_gate():
    """search_gates on a bound concave in the gate per row (its best at a row's own kink): each
    row ends within 1/8 of it, never below the bound it was given, gates left at the best point."""
    from dtensor_verify.ops.softmax_sum import SoftmaxSumOneOp, search_gates

    kinks_lo, kinks_up = torch.tensor([[0.1, 0.6, 0.9, 0.37]]), torch.tensor([[0.8, 0.2, 0.5, 0.0]])
    params = {"s": torch.ones(2, 1, 4, 3, 1)}                     # [2, B, K, groups, 1]
    graph = {"s": _Node(SoftmaxSumOneOp("s", 2))}

    def run():
        g_lo, g_up = params["s"][0, :, :, 0, 0], params["s"][1, :, :, 0, 0]
        return -(g_lo - kinks_lo).abs(), (g_up - kinks_up).abs() + 1.0

    given_lo, given_up = torch.full((1, 4), -0.5), torch.full((1, 4), 1.5)
    given_lo[0, 3] = 0.0                                          # already better than any gate
    lo, up = search_gates(graph, params, run, given_lo, given_up)
    assert (lo >= given_lo).all() and (up <= given_up).all()
    assert (lo[0, :3] > -0.125 / 2 - 1e-6).all() and (up - 1.0 < 0.125 / 2 + 1e-6).all(), (lo, up)
    assert lo[0, 3] == 0.0
    got_lo, got_up = run()
    assert torch.allclose(got_up, up)                             # the best gates stay in params
