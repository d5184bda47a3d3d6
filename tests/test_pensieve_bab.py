"""Branch and bound on a small network shaped like nn4sys pensieve_big_parallel: two branches
(Linear -> ReLU -> Linear -> ReLU -> x^3 / sum x^3 -> Linear) whose outputs are subtracted.

The refresh after a split bounds again only what lies downstream of the cut (the other branch
keeps its intervals untouched), ReLU splits narrow the ReLU's carried output and what lies behind
it, and every refreshed interval holds on sampled points of the child's region."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dtensor_verify as dv
from dtensor_verify.bab import general_refresh, split
from dtensor_verify.bab.general_split import code_of
from test_bab import node_values, root_problem

pytestmark = pytest.mark.usefixtures("one_thread")
N_IN = 2            # inputs per branch


class _Branch(nn.Module):
    def __init__(self, n: int, h: int, k: int):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(n, h), nn.Linear(h, k), nn.Linear(k, 1, bias=False)
        with torch.no_grad():
            self.b.bias[0] = 3.0            # one output neuron stays positive: the sum never reaches 0
            self.c.weight.copy_(torch.tensor([[10.0, 40.0, 160.0]]))

    def forward(self, x):
        p = torch.pow(torch.relu(self.b(torch.relu(self.a(x)))), 3.0)
        return self.c(p / p.sum(1, keepdim=True))


class _Parallel(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right = _Branch(N_IN, 6, 3), _Branch(N_IN, 6, 3)

    def forward(self, x):
        return self.left(x[:, :N_IN]) - self.right(x[:, N_IN:])


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    torch.manual_seed(3)
    net = _Parallel().eval()
    path = tmp_path_factory.mktemp("pensieve") / "parallel.onnx"
    torch.onnx.export(net, torch.zeros(1, 2 * N_IN), str(path), dynamo=False)
    model = dv.load(str(path))
    lo, hi = -torch.ones(1, 2 * N_IN), torch.ones(1, 2 * N_IN)
    problem, roots = root_problem(model, lo, hi, torch.ones(1, 1, 1), torch.tensor([[0.0]]))
    return model, problem, roots, lo, hi


def _branch_of(name: str, model) -> str:
    """'left' / 'right': which branch's ancestors (past the input slices) a node has."""
    anc = model.graph.ancestors(name)
    left = any("left" in a or a.startswith("l_") for a in anc)
    right = any("right" in a or a.startswith("r_") for a in anc)
    return "left" if left and not right else "right" if right and not left else "both"


def test_general_split_refreshes_only_its_own_branch(parallel, monkeypatch):
    model, problem, roots, lo, hi = parallel
    j = next(j for j, name in enumerate(problem.general) if _branch_of(name, model) == "left")
    swept = []
    real = general_refresh.node_bound_rows
    monkeypatch.setattr(general_refresh, "node_bound_rows",
                        lambda graph, name, *a, **k: swept.append(name) or real(graph, name, *a, **k))
    decision = torch.tensor([[code_of(j), 0]])
    kids = split(roots, decision, problem.relus, problem.pre_of, problem.general, problem.beta_of)
    general_refresh.refresh_children(problem, kids, decision.repeat(2, 1), lockstep=False)
    assert swept and all(_branch_of(name, model) == "left" for name in swept), swept
    for name in problem.general:
        if _branch_of(name, model) == "right":
            for side in range(2):
                assert torch.equal(kids.bounds[name][side], roots.bounds[name][side].expand_as(kids.bounds[name][side]))


def _children_hold(model, problem, kids, relu, neuron, x):
    """Every carried interval of each child holds on the sampled points of its region."""
    values = node_values(model, x)
    z = values[problem.pre_of[relu]].flatten(1)[:, neuron]
    for c, inside in enumerate((z >= 0, z <= 0)):
        for name, (lo, up) in kids.bounds.items():
            v = values[name][inside].flatten(1)
            lo_c, up_c = lo[c].flatten(), up[c].flatten()
            assert bool((v >= lo_c - 1e-4).all() and (v <= up_c + 1e-4).all()), (relu, neuron, c, name)


def test_relu_splits_narrow_what_lies_behind_and_hold(parallel):
    """Each unstable neuron of the ReLUs feeding the powers: the inactive child's ReLU output is 0
    there, the layers behind are narrower than the parent's, and every interval holds."""
    model, problem, roots, lo, hi = parallel
    gen = torch.Generator().manual_seed(0)
    x = lo + (hi - lo) * torch.rand(20000, 2 * N_IN, generator=gen)
    tried = tightened = 0
    for li, relu in enumerate(problem.relus):
        if relu not in problem.general:                      # the ReLUs whose output is powered
            continue
        pre_lo, pre_up = (t[0].flatten() for t in roots.bounds[problem.pre_of[relu]])
        for neuron in ((pre_lo < 0) & (pre_up > 0)).nonzero().flatten().tolist():
            decision = torch.tensor([[li, neuron]])
            kids = split(roots, decision, problem.relus, problem.pre_of, problem.general, problem.beta_of)
            general_refresh.refresh_children(problem, kids, decision.repeat(2, 1), lockstep=False)
            assert kids.bounds[relu][1][1].flatten()[neuron] == 0
            _children_hold(model, problem, kids, relu, neuron, x)
            width = {n: (kids.bounds[n][1] - kids.bounds[n][0]).sum() for n in problem.general}
            parent = {n: 2 * (roots.bounds[n][1] - roots.bounds[n][0]).sum() for n in problem.general}
            tightened += any(bool(width[n] < parent[n] - 1e-6) for n in problem.general if n != relu)
            tried += 1
    assert tried > 0 and tightened > 0, (tried, tightened)


def test_parallel_bab_agrees_with_sampling(parallel):
    """End to end: a threshold a little below the sampled minimum is decided unsat by branch and
    bound where the bounds alone leave it open; one above the minimum is never proved."""
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.specs import parse_vnnlib
    from dtensor_verify.verify import verify_instance

    model, problem, roots, lo, hi = parallel
    gen = torch.Generator().manual_seed(1)
    x = lo + (hi - lo) * torch.rand(50000, 2 * N_IN, generator=gen)
    with torch.no_grad():
        smin = float(model.forward(x).min())

    def prop(t):
        text = "".join(f"(declare-const X_{i} Real)\n" for i in range(2 * N_IN)) + "(declare-const Y_0 Real)\n"
        text += "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(2 * N_IN))
        return parse_vnnlib(text + f"(assert (<= Y_0 {t!r}))\n", n_inputs=2 * N_IN, n_outputs=1)

    opts = BabOptions(batch_size=16)
    res = verify_instance(model, prop(smin - 0.5), None, timeout=40, bab_options=opts)
    assert res.verdict == "unsat", (res.verdict, res.message, res.bounds.get("bab"))
    res = verify_instance(model, prop(smin + 0.01), None, timeout=15, bab_options=opts)
    assert res.verdict in ("sat", "timeout", "unknown"), res.verdict


def test_relu_output_that_contradicts_its_split_marks_the_child_empty(parallel):
    """A child whose clamped pre-activation interval lies above its carried ReLU output interval
    holds no input: its bound becomes +inf (proved), the other child's stays finite."""
    model, problem, roots, lo, hi = parallel
    def unstable(r):
        pre_lo, pre_up = (t[0].flatten() for t in roots.bounds[problem.pre_of[r]])
        return ((pre_lo < 0) & (pre_up > 0)).nonzero().flatten().tolist()

    li, relu, neuron = next((i, r, u[0]) for i, r in enumerate(problem.relus)
                            if r in problem.general and (u := unstable(r)))
    decision = torch.tensor([[li, neuron]])
    kids = split(roots, decision, problem.relus, problem.pre_of, problem.general, problem.beta_of)
    pre_lo, pre_up = (t.clone() for t in kids.bounds[problem.pre_of[relu]])
    out_lo, out_up = (t.clone() for t in kids.bounds[relu])
    pre_lo[0, neuron], pre_up[0, neuron] = 1.0, max(2.0, float(pre_up[0, neuron]))   # active child: z >= 1 ...
    out_lo[0, neuron], out_up[0, neuron] = 0.0, 0.5                                # ... yet relu(z) <= 0.5
    kids.bounds[problem.pre_of[relu]], kids.bounds[relu] = (pre_lo, pre_up), (out_lo, out_up)
    general_refresh.refresh_children(problem, kids, decision.repeat(2, 1), lockstep=False)
    assert torch.isinf(kids.lower[0]).all() and torch.isfinite(kids.lower[1]).all()
    lo0, up0 = kids.bounds[relu]
    assert bool((lo0 <= up0).all())


def test_refresh_sweeps_are_sized_to_the_device_share(parallel, monkeypatch):
    """The refresh of split children bounds every neuron of the nodes behind the cut for the whole
    batch: on a GPU with no row cap that asked a shared H100 for up to 295 GiB (ml4acopf). With a
    tiny device, its sweeps come in chunks of `crown_max_rows` rows, and the bounds are the same."""
    import sys

    from dtensor_verify.methods import alpha_budget

    crown = sys.modules["dtensor_verify.methods.crown"]
    model, problem, roots, lo, hi = parallel
    j = next(j for j, name in enumerate(problem.general) if _branch_of(name, model) == "left")
    decision = torch.tensor([[code_of(j), 0]])

    def refreshed():
        kids = split(roots, decision, problem.relus, problem.pre_of, problem.general, problem.beta_of)
        general_refresh.refresh_children(problem, kids, decision.repeat(2, 1), lockstep=False)
        return kids

    whole = refreshed()
    rows_per_sweep = []
    real = crown.backward_bound
    monkeypatch.setattr(crown, "backward_bound",
                        lambda *a, rows=None, **k: rows_per_sweep.append(len(rows)) or real(*a, rows=rows, **k))
    widest = max(n.numel for n in model.graph.nodes)
    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", str(int(2 * alpha_budget.CROWN_COPIES * 4 * 2 * widest / alpha_budget.FRACTION)))
    chunked = refreshed()
    assert rows_per_sweep and max(rows_per_sweep) == 2, rows_per_sweep
    for name, (l0, u0) in whole.bounds.items():
        torch.testing.assert_close(chunked.bounds[name][0], l0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked.bounds[name][1], u0, rtol=1e-5, atol=1e-6)
