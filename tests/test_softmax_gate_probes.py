"""Branch and bound's gate probes (ops/softmax_gate_probes.py, called by beta-CROWN): they walk
towards each row's best gate, never loosen a bound, keep a row's gates where no probe won, and the
bounds stay sound on split domains (sampled points and a descent inside the split region);
children stored by the solver are never looser than their parent."""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions, BabSolver, split
from dtensor_verify.methods.beta_crown import BetaOptions, beta_crown
from dtensor_verify.ops import softmax_gate_probes
from dtensor_verify.ops.softmax_gate_probes import probe_gates
from dtensor_verify.ops.softmax_sum import SoftmaxSumOneOp
from test_bab import root_problem, satisfies, splits_matching

pytestmark = pytest.mark.usefixtures("one_thread")


class _G:
    def __init__(self):
        self.op = SoftmaxSumOneOp("s", 1)


def test_probes_walk_towards_each_rows_best_gate():
    """A bound concave in the gate per row, best at `peak`: rows move towards their peak; a row at
    its peak keeps its gates (and its given bound); an end of [0, 1] probes inward."""
    graph = {"s": _G()}
    peak = torch.tensor([[0.3, 1.0, 0.5, 0.9]])
    params = {"s": torch.ones(1, 2, 4, 3)}                          # [B, 2, K, groups]
    params["s"][0, 0, 2] = 0.5
    params["s"][0, 1] = 0.7                                         # the uA side: never touched
    calls = []

    def run():
        g = params["s"][:, 0, :, 0]
        calls.append(g.clone())
        return -(g - peak).abs()

    given = run()
    lower = probe_gates(graph, params, run, given, step=0.125, rounds=2)
    assert len(calls) == 1 + 4
    assert torch.allclose(calls[1], torch.tensor([[0.875, 0.875, 0.375, 0.875]]))       # 1 -> 2 steps in
    assert torch.allclose(calls[2], torch.tensor([[0.75, 0.75, 0.625, 0.75]]))
    assert (lower >= given).all()
    assert lower[0, 1] == given[0, 1] and lower[0, 2] == given[0, 2]
    assert torch.allclose(params["s"][0, 0, :, 0], torch.tensor([0.6875, 1.0, 0.5, 0.875]))
    assert torch.allclose(lower, -(params["s"][:, 0, :, 0] - peak).abs())        # the gates of the bound
    assert bool((params["s"][0, 1] == 0.7).all())
    assert bool((params["s"][0, 0] == params["s"][0, 0, :, :1]).all())           # a row's groups alike


def test_probes_for_the_bound_only_leave_the_gates(monkeypatch):
    """KEEP off: the same bound, every gate as it was."""
    monkeypatch.setattr(softmax_gate_probes, "KEEP", False)
    graph = {"s": _G()}
    params = {"s": torch.ones(1, 2, 2, 3)}
    before = params["s"].clone()

    def run():
        return -(params["s"][:, 0, :, 0] - 0.6).abs()

    lower = probe_gates(graph, params, run, run(), step=0.125, rounds=1)
    assert torch.allclose(lower, torch.tensor([[-0.15, -0.15]])) and torch.equal(params["s"], before)


class _SoftRelu(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.c = torch.nn.Linear(4, 12), torch.nn.Linear(12, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.c(torch.softmax(self.b(torch.relu(self.a(x))) * 2.0, dim=-1))


def _beta(model, problem, dom, C, d, probe, monkeypatch, iterations=5):
    monkeypatch.setattr(softmax_gate_probes, "PROBE", probe)
    return beta_crown(model.graph, problem.bounds_of(dom), C, d, torch.ones(d.shape, dtype=torch.bool),
                      dom.alphas, dom.betas, dom.signs, opts=BetaOptions(iterations=iterations))


@pytest.mark.parametrize("seed", [0, 3])
def test_probes_never_looser_and_sound_on_split_domains(seed, monkeypatch):
    model = dv.load(_SoftRelu(seed).eval(), (4,))
    gen = torch.Generator().manual_seed(seed)
    lo, hi = -torch.ones(1, 4) * 0.6, torch.ones(1, 4) * 0.6
    C, d = torch.randn(1, 3, 3, generator=gen), torch.full((1, 3), 5.0)      # nothing proved: probes run
    problem, roots = root_problem(model, lo, hi, C, d)
    with torch.no_grad():                     # gates away from their best, so that probes can gain
        for r in roots.alphas:
            if isinstance(model.graph[r].op, SoftmaxSumOneOp):
                roots.alphas[r][:, 0] = 0.5
    x0 = lo + (hi - lo) * torch.rand(1, 4, generator=gen)
    dom = splits_matching(model, problem, roots, x0, 2, gen)
    off = _beta(model, problem, dom, C, d, False, monkeypatch)
    on = _beta(model, problem, dom, C, d, True, monkeypatch)
    assert (on.lower >= off.lower).all()                   # the same iterations, then the probes
    assert (on.lower > off.lower + 1e-6).any()             # (gates at 0.5: a probe wins somewhere)
    x = torch.cat([x0, lo + (hi - lo) * torch.rand(20000, 4, generator=gen)])
    x = x[satisfies(model, problem, dom, x)][:512]
    for _ in range(20):                                    # descent on each row inside the split region
        x = x.detach().requires_grad_(True)
        y = torch.einsum("kn,bn->bk", C[0], model.forward(x))
        g, = torch.autograd.grad(y.sum(), x)
        with torch.no_grad():
            cand = torch.max(torch.min(x - 0.05 * g.sign(), hi), lo)
            x = torch.where(satisfies(model, problem, dom, cand).unsqueeze(1), cand, x)
    with torch.no_grad():
        y = torch.einsum("kn,bn->bk", C[0], model.forward(x))
    assert x.shape[0] >= 1 and bool((y >= on.lower[0] - 1e-5).all()), float((y - on.lower[0]).min())


def test_proved_domains_are_not_probed(monkeypatch):
    model = dv.load(_SoftRelu(1).eval(), (4,))
    lo, hi = -torch.ones(1, 4) * 0.3, torch.ones(1, 4) * 0.3
    C, d = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(1)), torch.full((1, 2), -50.0)
    problem, roots = root_problem(model, lo, hi, C, d)
    calls = []
    monkeypatch.setattr("dtensor_verify.methods.beta_crown.probe_gates",
                        lambda g, p, run, lower: calls.append(lower) or lower)
    _beta(model, problem, roots, C, d, True, monkeypatch)
    assert not calls                                        # every row proved (d = -50): no probe


def test_children_never_looser_than_parents(monkeypatch):
    """Children bounded with the probes, settled by the solver: each stored child's bound is at
    least its parent's, and at least its bound without the probes."""
    model = dv.load(_SoftRelu(0).eval(), (4,))
    lo, hi = -torch.ones(1, 4) * 0.6, torch.ones(1, 4) * 0.6
    C, d = torch.randn(1, 1, 3, generator=torch.Generator().manual_seed(2)), torch.full((1, 1), 5.0)
    problem, roots = root_problem(model, lo, hi, C, d)
    pre = problem.pre_of[problem.relus[0]]
    unstable = ((roots.bounds[pre][0] < 0) & (roots.bounds[pre][1] > 0))[0].nonzero().flatten()
    kids = split(roots, torch.stack([torch.zeros_like(unstable[:2]), unstable[:2]], 1)[:1],
                 problem.relus, problem.pre_of)
    parent = kids.lower.clone()
    off = _beta(model, problem, kids, C[kids.pair], d[kids.pair], False, monkeypatch)
    on = _beta(model, problem, kids, C[kids.pair], d[kids.pair], True, monkeypatch)
    assert (on.lower >= off.lower).all()
    solver = BabSolver(problem, BabOptions(batch_size=4), lambda: 1e9, lambda *a: None)
    solver._settle(kids, on, parent)
    assert len(solver.store) == 2
    stored = solver.store.domains.lower
    assert bool((stored >= parent).all()) and bool((stored >= on.lower).all())
