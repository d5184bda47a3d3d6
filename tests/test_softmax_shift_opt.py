"""The softmax / LayerNorm shift as a parameter (ops/softmax_sum.GroupShiftOp: a gate on the
weighted median): sound for every gate, alpha-CROWN never looser than CROWN with it (gates held or
optimised), and beta-CROWN's start never looser than the plain step (the gates closed) with the
same slopes, its optimised bound never looser than its start."""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.methods.beta_crown import BetaOptions, beta_crown
from dtensor_verify.ops import softmax_sum
from dtensor_verify.ops.softmax_sum import GroupShiftOp, SoftmaxSumOneOp
from op_checks import check_network
from test_bab import root_problem


def test_softmax_shift_sound_for_every_parameter():
    gen = torch.Generator().manual_seed(4)
    op = SoftmaxSumOneOp("s", 2)
    A = torch.randn(1, 5, 2, 6, generator=gen)                   # [B, K, groups, n]
    width = torch.rand(1, 2, 6, generator=gen)
    ys = torch.softmax(3 * torch.randn(300, 2, 6, generator=gen), -1)
    alpha = torch.rand(2, 1, 5, 2, 1, generator=gen)
    alpha[:, :, 0] = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1)   # a closed and an open gate
    res = op.backward(A, A, [(-width, width)], alpha=alpha)
    exact = torch.einsum("kgn,pgn->pk", A[0], ys)
    for side, (bias, sign) in enumerate(((res.lbias, 1.0), (res.ubias, -1.0))):
        shifted = torch.einsum("kgn,pgn->pk", res.input_A[0][side][0], ys) + bias[0]
        assert (sign * (exact - shifted) >= -1e-6).all() and (exact - shifted).abs().max() < 1e-4
    plain = op.backward(A, None, [(-width, width)], alpha=torch.zeros(2, 1, 5, 2, 1))
    assert torch.equal(plain.input_A[0][0], A) and float(plain.lbias.abs().max()) == 0.0


class _SoftRelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b, self.c = torch.nn.Linear(3, 8), torch.nn.Linear(8, 6), torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.c(torch.softmax(self.b(torch.relu(self.a(x))) * 2.0, dim=-1))


@pytest.mark.parametrize("optimise", [False, True])
def test_alpha_with_the_shift_never_looser_than_crown(optimise, one_thread, monkeypatch):
    monkeypatch.setattr(softmax_sum, "OPTIMISE_SHIFT", optimise)
    check_network(_SoftRelu().eval(), (3,), seeds=(0, 1), width=0.5, alpha_iters=6)


@pytest.mark.parametrize("optimise", [False, True])
def test_beta_start_never_looser_than_the_plain_step(optimise, one_thread, monkeypatch):
    model = dv.load(_SoftRelu().eval(), (3,))
    lo, hi = -torch.ones(1, 3) * 0.8, torch.ones(1, 3) * 0.8
    C, d = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]), torch.zeros(1, 2)
    problem, roots = root_problem(model, lo, hi, C, d)
    shift_ops = [n for n in model.graph.nodes if isinstance(n.op, GroupShiftOp)]
    assert shift_ops and all(n.name in roots.alphas for n in shift_ops)

    def run(iterations=0):
        return beta_crown(model.graph, problem.bounds_of(roots), C, d, problem.row_mask, roots.alphas, roots.betas,
                          roots.signs, opts=BetaOptions(iterations=iterations))

    monkeypatch.setattr(softmax_sum, "OPTIMISE_SHIFT", optimise)
    both = run()
    for n in shift_ops:
        n.op.shift = False
    try:
        plain = run()
    finally:
        for n in shift_ops:
            n.op.shift = True
    shifted_alphas = {r: a.clone() for r, a in roots.alphas.items()}
    assert (both.lower >= plain.lower - 1e-6).all()
    assert torch.equal(roots.alphas[shift_ops[0].name], shifted_alphas[shift_ops[0].name])   # warm starts untouched
    optimised = run(iterations=5)
    assert (optimised.lower >= both.lower - 1e-6).all()


@pytest.mark.parametrize("closed", [False, True])
def test_gates_chosen_per_row(closed):
    """best_of_gates keeps, per row, the gates of the tighter run (closed where plain wins)."""
    from dtensor_verify.ops.softmax_sum import best_of_gates

    class _G:
        def __init__(self):
            self.op = SoftmaxSumOneOp("s", 1)

    graph = {"s": _G()}
    params = {"s": torch.ones(1, 2, 2, 1)}                         # [B, 2, K, groups]
    calls = []

    def run():
        calls.append(params["s"][:, 0].clone())
        open_ = bool(params["s"][0, 0, 0, 0] == 1.0)
        return torch.tensor([[1.0, 2.0]]) if open_ else torch.tensor([[1.5 if closed else 0.5, 1.0]])

    lower = best_of_gates(graph, params, run)
    assert lower.tolist() == [[1.5 if closed else 1.0, 2.0]]
    assert params["s"][0, 0, :, 0].tolist() == [0.0 if closed else 1.0, 1.0]


def test_gate_search_never_looser(one_thread, monkeypatch):
    """alpha-CROWN's final line search over the gates (SEARCH_SHIFT) keeps the best bound: never
    looser than without it, per row, and still sound (sampled + PGD points, check_network)."""
    model = dv.load(_SoftRelu().eval(), (3,))
    lo, hi = -torch.ones(2, 3) * 0.6, torch.ones(2, 3) * 0.6
    lo[1] += 0.3
    opts = dv.AlphaOptions(iterations=4)
    monkeypatch.setattr(softmax_sum, "SEARCH_SHIFT", False)
    off = model.compute_bounds(lo, hi, "alpha-crown", alpha_options=opts)
    monkeypatch.setattr(softmax_sum, "SEARCH_SHIFT", True)
    on = model.compute_bounds(lo, hi, "alpha-crown", alpha_options=opts)
    assert (on.lower >= off.lower - 1e-6).all() and (on.upper <= off.upper + 1e-6).all()
    check_network(_SoftRelu().eval(), (3,), seeds=(2,), width=0.5, alpha_iters=4)
