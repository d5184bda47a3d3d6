"""Shared slopes for intermediate start nodes (alpha,beta-CROWN's `share_alphas`) and CROWN's
intermediate bounds computed once for alpha-CROWN (issue 21). Sound on sampled and attacked
points, never looser than CROWN; the budget shares only what per-row slopes cannot fit."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import dtensor_verify as dv
import model_zoo as mz
from dtensor_verify.methods import alpha_budget, alpha_crown
from dtensor_verify.methods.crown import crown, intermediate_bounds
from op_checks import attained


class _Block(nn.Module):
    """Attention over 3 tokens of width 4 (Exp, Reciprocal, MatMul slopes), then a ReLU MLP."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 3)

    def forward(self, x):
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) * 0.5, dim=-1)
        return self.fc2(torch.relu(self.fc1((att @ self.v(x)).flatten(1))))


def _cases():
    mlp, shape = mz.random_mlp([8, 24, 24, 24, 24, 6], seed=2)
    box = mz.random_box(shape, 0.2, seed=11, batch=2)
    block = _Block().eval()
    x0 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    # A CNN: its intermediate sweeps run on patches, where shared slopes ([B, 1, C, H, W]) give
    # each row its own window (seen as an IndexError in test_soundness's sri_resnet case when the
    # budget chose sharing under load).
    cnn, cshape = mz.random_cnn("basic", seed=4)
    cbox = mz.random_box(cshape, 0.3, seed=12, batch=2)
    return {"mlp": (mlp, shape, box), "attention": (block, (3, 4), (x0 - 0.25, x0 + 0.25)),
            "cnn": (cnn, cshape, cbox)}


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_shared_slopes_are_sound_and_never_looser_than_crown(name, one_thread):
    net, shape, (lo, hi) = CASES[name]
    m = dv.load(net, input_shape=shape)
    res = alpha_crown(m.graph, (lo, hi), opts=dv.AlphaOptions(iterations=8, patience=100, share_alphas=True))
    inter = [s for s in res.alphas if s != m.graph.output_name]
    assert inter, "no intermediate start node got slopes"
    for s in inter:                                 # one set per start node, broadcast over its rows
        assert all(a.shape[2] == 1 for a in res.alphas[s].values()), s
    assert all(a.shape[2] > 1 for a in res.alphas[m.graph.output_name].values())
    assert (res.lower >= res.crown_lower).all() and (res.upper <= res.crown_upper).all()
    ymin, ymax = attained(lambda x: net(x).flatten(1), lo, hi, n=2000)
    assert (res.lower <= ymin + 1e-5).all(), (res.lower - ymin).max()
    assert (res.upper >= ymax - 1e-5).all(), (ymax - res.upper).max()
    per_row = alpha_crown(m.graph, (lo, hi), opts=dv.AlphaOptions(iterations=8, patience=100, share_alphas=False))
    assert all(a.shape[2] > 1 for s in inter for a in per_row.alphas[s].values())


def test_plan_shares_only_what_does_not_fit(one_thread):
    """Room for everything per row: nothing shared. Room for every node's shared set and two
    nodes' per-row slopes: every node optimised, the cheapest upgrades per row, the rest shared.
    Less room than the shared sets: the costliest left out. share=False: fit_starts' choice."""
    net, shape, box = CASES["mlp"]
    g = dv.load(net, input_shape=shape).graph
    with torch.no_grad():
        _, rows = intermediate_bounds(g, box)
    costs = alpha_budget.start_costs(g, rows, 5, 2)
    out, inter = costs[0], costs[1:]
    assert len(inter) >= 3 and all(c.shared_bytes < c.bytes for c in inter)

    def plan(room, share=None):
        return alpha_budget.plan_starts(g, rows, 5, 2, torch.device("cpu"), share=share,
                                        free_bytes=lambda d: int(room / alpha_budget.FRACTION) + 2)

    everything = out.bytes + sum(c.bytes for c in inter)
    full = plan(everything)
    assert set(full.names) == set(rows) and full.shared == ()
    by_upgrade = sorted(inter, key=lambda c: c.bytes - c.shared_bytes)
    room = out.bytes + sum(c.shared_bytes for c in inter) + sum(c.bytes - c.shared_bytes for c in by_upgrade[:2])
    mixed = plan(room)
    assert set(mixed.names) == set(rows)
    assert set(mixed.shared) == {c.name for c in by_upgrade[2:]}
    assert mixed.bytes <= mixed.budget
    by_shared = sorted(inter, key=lambda c: c.shared_bytes)
    tight = plan(out.bytes + by_shared[0].shared_bytes + by_shared[1].shared_bytes)
    assert set(tight.names) == {by_shared[0].name, by_shared[1].name} and set(tight.shared) == set(tight.names)
    kept, _, _ = alpha_budget.fit_starts(g, rows, 5, 2, torch.device("cpu"),
                                         free_bytes=lambda d: int(room / alpha_budget.FRACTION) + 2)
    assert plan(room, share=False).names == kept and plan(room, share=False).shared == ()


@pytest.mark.parametrize("name", sorted(CASES))
def test_alpha_from_given_crown_bounds(name, one_thread, monkeypatch):
    """alpha-CROWN started from CROWN's intermediate bounds (the pipeline's CROWN stage) runs no
    intermediate CROWN pass and gives the bounds of a run that computes them (same start, same
    steps up to the rows it sweeps: within 1e-4), sound."""
    module = importlib.import_module("dtensor_verify.methods.alpha_crown")

    net, shape, (lo, hi) = CASES[name]
    m = dv.load(net, input_shape=shape)
    opts = dv.AlphaOptions(iterations=5, patience=100)
    ref = alpha_crown(m.graph, (lo, hi), opts=opts, want_upper=False)
    _, _, bounds = crown(m.graph, (lo, hi))
    given = {n: bounds[n] for n in list(m.graph.preactivation_nodes()) + [m.graph.output_name]}
    calls = []
    monkeypatch.setattr(module, "intermediate_bounds", lambda *a, **k: calls.append(1))
    res = alpha_crown(m.graph, (lo, hi), opts=opts, want_upper=False, crown_bounds=given)
    assert not calls
    assert torch.equal(res.crown_lower, ref.crown_lower)
    assert torch.allclose(res.lower, ref.lower, atol=1e-4), (res.lower - ref.lower).abs().max()
    ymin, _ = attained(lambda x: net(x).flatten(1), lo, hi, n=2000)
    assert (res.lower <= ymin + 1e-5).all()


def test_pipeline_computes_crown_bounds_once(one_thread, monkeypatch):
    """verify_instance with CROWN then alpha-CROWN: one intermediate CROWN pass per box in all
    (the CROWN stage's), and the same verdict as when alpha-CROWN computes its own."""
    alpha_module = importlib.import_module("dtensor_verify.methods.alpha_crown")
    crown_module = importlib.import_module("dtensor_verify.methods.crown")
    from dtensor_verify.specs import parse_vnnlib
    from dtensor_verify.verify import crown_reuse, verify_instance

    net, shape, (lo, hi) = CASES["mlp"]
    m = dv.load(net, input_shape=shape)
    lo, hi = lo[:1], hi[:1]
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(8))
    text += "".join(f"(declare-const Y_{i} Real)\n" for i in range(6))
    text += "".join(f"(assert (>= X_{i} {a!r}))\n(assert (<= X_{i} {b!r}))\n"
                    for i, (a, b) in enumerate(zip(lo.flatten().tolist(), hi.flatten().tolist())))
    # Y_0 >= t with t between what points attain and CROWN's upper bound: CROWN leaves it open.
    _, up, _ = crown(m.graph, (lo, hi))
    _, ymax = attained(lambda x: net(x).flatten(1), lo, hi, n=500)
    t = float(0.5 * (up[0, 0] + ymax[0, 0]))
    text += f"(assert (>= Y_0 {t!r}))\n"
    prop = parse_vnnlib(text, n_inputs=8, n_outputs=6)
    real = crown_module.intermediate_bounds
    calls = []

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(crown_module, "intermediate_bounds", counted)
    monkeypatch.setattr(alpha_module, "intermediate_bounds", counted)
    res = verify_instance(m, prop, None, timeout=60, attack=False, bab=False,
                          alpha_options=dv.AlphaOptions(iterations=3, patience=100))
    assert len(calls) == 1 and "alpha-crown" in res.bounds, (calls, res.bounds)
    calls.clear()
    monkeypatch.setattr(crown_reuse, "MAX_BYTES", 0)           # nothing kept: alpha computes its own
    again = verify_instance(m, prop, None, timeout=60, attack=False, bab=False,
                            alpha_options=dv.AlphaOptions(iterations=3, patience=100))
    assert len(calls) == 2
    assert (res.verdict, res.decided_by) == (again.verdict, again.decided_by)


@pytest.mark.slow
def test_plan_on_the_vit_at_an_eighth_of_a_gpu():
    """vit_2023 ibp_3_3_8 at 1/8 of 80 GB: per-row slopes alone fit 3 of its 24 start nodes (the
    first attention's q / k / v, which have no slope upstream); with shared slopes more nodes are
    optimised, none of them slope-free, within the budget."""
    from dtensor_verify.methods.alpha_budget import start_costs

    g = dv.load(mz.benchmarks_dir() / "vit_2023" / "onnx" / "ibp_3_3_8.onnx.gz").graph
    rows = {n: range(g[n].numel) for n in g.preactivation_nodes() if not g.affine_from_input(n)}
    free = (lambda d: (80 << 30) // 8)
    kept, _, _ = alpha_budget.fit_starts(g, rows, 9, 1, torch.device("cuda"), free_bytes=free)
    plan = alpha_budget.plan_starts(g, rows, 9, 1, torch.device("cuda"), free_bytes=free)
    slopes = {c.name: c.slopes for c in start_costs(g, rows, 9, 1)}
    assert len(kept) == 3 and all(slopes[n] == 0 for n in kept)
    assert len(plan.names) > len(kept) and all(slopes[n] > 0 for n in plan.names)
    assert plan.bytes <= plan.budget and plan.shared
