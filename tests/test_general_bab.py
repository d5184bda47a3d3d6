"""General splits (bab/general_split.py, branching/general.py): the interval of a sigmoid / tanh /
sin / GELU / product-operand neuron cut in two, a split kind of the one solver. Every child's bound
(beta-CROWN, with the cut intervals' constraints as beta terms) holds on its region (sampled and
attacked points whose split neurons lie in the child's intervals), children are never looser than their parent, and on small smooth networks branch and
bound agrees with a dense grid (Lipschitz margin) on random instances near the decision boundary."""
from __future__ import annotations

import random

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions, BabSolver, split
from dtensor_verify.bab.general_split import GENERAL_SPLIT, code_of, split_point
from dtensor_verify.methods.beta_crown import BetaOptions, beta_crown
from smooth_nets import KINDS, grid_truth, smooth_net
from test_bab import node_values, root_problem

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(net, n_in, t, width=1.0):
    model = dv.load(net, input_shape=(n_in,))
    lo, hi = -width * torch.ones(1, n_in), width * torch.ones(1, n_in)
    C, d = torch.ones(1, 1, 1), torch.tensor([[t]])
    problem, roots = root_problem(model, lo, hi, C, d)
    return model, problem, roots, lo, hi


def _in_region(model, problem, dom, x):
    """Rows of x whose values at every general node lie in the domain's intervals."""
    values = node_values(model, x)
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for name in problem.general:
        lo, up = (t[0].flatten() for t in dom.bounds[name])
        z = values[name].flatten(1)
        ok &= ((z >= lo - 1e-6) & (z <= up + 1e-6)).all(1)
    return ok


def _general_choices(problem, dom):
    out = []
    for j, name in enumerate(problem.general):
        lo, up = (t[0].flatten() for t in dom.bounds[name])
        out += [(j, int(i)) for i in ((up - lo) > 1e-3).nonzero().flatten()]
    return out


def test_general_split_cuts_one_interval_and_covers_the_parent():
    net = smooth_net("sigmoid", 2, seed=0)
    model, problem, roots, lo, hi = _problem(net, 2, 0.0)
    assert problem.relus == [] and len(problem.general) == 2
    name = problem.general[1]
    l0, u0 = (t[0, 3].item() for t in roots.bounds[name])
    kids = split(roots, torch.tensor([[code_of(1), 3]]), problem.relus, problem.pre_of, problem.general, problem.beta_of)
    p = float(split_point(torch.tensor(l0), torch.tensor(u0)))
    assert l0 < p < u0
    assert kids.bounds[name][0][:, 3].tolist() == pytest.approx([p, l0])
    assert kids.bounds[name][1][:, 3].tolist() == pytest.approx([u0, p])
    for other in problem.general:             # nothing else changes; the parent is untouched
        for side in range(2):
            a, b = kids.bounds[other][side].clone(), roots.bounds[other][side].expand_as(kids.bounds[other][side])
            if other == name:
                a[:, 3] = b[:, 3]
            assert torch.equal(a, b)
    assert roots.bounds[name][0][0, 3].item() == l0 and int(kids.depth.max()) == 1
    assert code_of(1) < GENERAL_SPLIT + 0 and split_point(torch.tensor(-1.0), torch.tensor(3.0)) == 0


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "sin", "product", "gelu", "mixed"])
def test_general_children_hold_on_their_region_and_are_tighter(kind):
    """Random general splits down to depth 4 (keeping the child with a chosen point): beta-CROWN's
    bound of each child holds on sampled and attacked points of its region, and the solver's
    children are never looser than their parent (and tighter on the whole)."""
    gen = torch.Generator().manual_seed(7)
    net = smooth_net(kind, 3, seed=11)
    model, problem, roots, lo, hi = _problem(net, 3, 0.0)
    x0 = lo + (hi - lo) * torch.rand(1, 3, generator=gen)
    dom, gains, used_beta = roots, [], False
    for depth in range(4):
        choices = _general_choices(problem, dom)
        j, i = choices[int(torch.randint(len(choices), (1,), generator=gen))]
        kids = split(dom, torch.tensor([[code_of(j), i]]), problem.relus, problem.pre_of, problem.general, problem.beta_of)
        res = beta_crown(model.graph, problem.bounds_of(kids), problem.C[kids.pair], problem.d[kids.pair],
                         problem.row_mask[kids.pair], kids.alphas, kids.betas, kids.signs,
                         opts=BetaOptions(iterations=10))
        gains.append(float((res.lower[:, 0] - dom.lower[0, 0]).sum()))
        used_beta = used_beta or any(bool((b != 0).any()) for b in res.betas.values())
        for c in range(2):
            child = kids.index(torch.tensor([c]))
            x = torch.cat([x0, lo + (hi - lo) * torch.rand(20000, 3, generator=gen)])
            x = x[_in_region(model, problem, child, x)][:256]
            x = _descend(model, problem, child, x, lo, hi)
            if x.shape[0]:
                with torch.no_grad():
                    y = model.forward(x)[:, 0]
                assert float(y.min()) >= float(res.lower[c, 0]) - 1e-4, (kind, depth, c)
        keep = 0 if _in_region(model, problem, kids.index(torch.tensor([0])), x0).all() else 1
        kids.lower = torch.maximum(res.lower, kids.lower)
        assert bool((kids.lower >= dom.lower[0]).all())
        dom = kids.index(torch.tensor([keep]))
    assert sum(gains) > 0, gains           # cutting intervals tightens the relaxations
    assert used_beta or kind == "product"  # the cut intervals' constraints entered the bound


def _descend(model, problem, dom, x, lo, hi, steps=20):
    """A projected sign descent on y from x, rejecting steps that leave the domain's region."""
    for _ in range(steps):
        if x.shape[0] == 0:
            return x
        x = x.detach().requires_grad_(True)
        g, = torch.autograd.grad(model.forward(x)[:, 0].sum(), x)
        with torch.no_grad():
            cand = torch.max(torch.min(x - 0.03 * g.sign(), hi), lo)
            ok = _in_region(model, problem, dom, cand)
            x = torch.where(ok.unsqueeze(1), cand, x)
    return x.detach()


def _decide(net, n_in, t, seconds=20.0, split_mode="relu", rounds=400):
    """Branch and bound on `net(x) >= t` over [-1, 1]^n; sat only with a point that violates."""
    model, problem, roots, lo, hi = _problem(net, n_in, t)
    if float(roots.lower[0, 0]) - t > 0:
        return "proved", 0

    def confirm(x, pair, y):
        with torch.no_grad():
            bad = net(x)[:, 0] < t
        return [x[bad][0]] if bool(bad.any()) else None

    def pgd(x, pair):
        """A short projected sign descent from the solver's most promising points (as the
        pipeline's attack does), then `confirm`."""
        if x.shape[0] == 0:
            return None
        for _ in range(20):
            x = x.detach().requires_grad_(True)
            g, = torch.autograd.grad(net(x)[:, 0].sum(), x)
            x = torch.max(torch.min(x - 0.02 * g.sign(), hi), lo)
        return confirm(x.detach(), pair, None)

    import time
    t0 = time.perf_counter()
    solver = BabSolver(problem, BabOptions(batch_size=32, split=split_mode, max_rounds=rounds, pgd_every=2),
                       lambda: seconds - (time.perf_counter() - t0), confirm, pgd=pgd)
    out = solver.solve(roots)
    if out.status == "sat":
        with torch.no_grad():
            assert float(net(out.counterexample[0].unsqueeze(0))[0, 0]) < t
    return out.status, out.stats.bounded


def _instance(rng: random.Random, index: int):
    """A random (net, n_in, threshold, expected) near the decision boundary."""
    kind = KINDS[index % len(KINDS)]
    n_in = 2 + rng.randrange(2)
    net = smooth_net(kind, n_in, seed=1000 + index, scale=rng.uniform(1.0, 2.0))
    gmin, certain = grid_truth(net, -torch.ones(n_in), torch.ones(n_in), 40_000 if n_in == 2 else 64_000)
    if rng.random() < 0.5:
        return kind, net, n_in, certain - rng.uniform(0.002, 0.03), "proved"
    return kind, net, n_in, gmin + rng.uniform(0.001, 0.02), "sat"


def _sweep(indices, seconds):
    rng = random.Random(21)
    rows = []
    for index in range(max(indices) + 1):
        inst = _instance(rng, index)
        if index not in indices:
            continue
        kind, net, n_in, t, expected = inst
        status, visited = _decide(net, n_in, t, seconds)
        rows.append((kind, n_in, expected, status, visited))
        # Zero wrong verdicts: a true property never gets sat, a false one never proved.
        assert status != ("sat" if expected == "proved" else "proved"), rows[-1]
    return rows


def test_general_bab_agrees_with_the_grid_on_a_fixed_sample():
    rows = _sweep([0, 4, 5, 6, 7, 8, 10, 11], seconds=20.0)
    decided = sum(r[3] == r[2] for r in rows)
    assert decided >= len(rows) - 1, rows                 # complete in practice on these
    assert any(r[4] > 0 and r[3] == "proved" for r in rows), rows   # some needed splits


@pytest.mark.slow
def test_general_bab_agrees_with_the_grid_sweep():
    rows = _sweep(list(range(200)), seconds=8.0)
    decided = sum(r[3] == r[2] for r in rows)
    # Measured on the first 48 (2-core VM at load 10): 36 decided, the rest timeouts (tanh, GELU
    # and sin near their minimum); the wrong-verdict check above is the hard one.
    assert decided >= 0.6 * len(rows), (decided, len(rows))


def test_mixed_network_splits_both_kinds():
    """A ReLU + sigmoid network: the one ranking picks ReLU and general splits in one run."""
    net = smooth_net("mixed", 2, seed=3, scale=2.0)
    gmin, certain = grid_truth(net, -torch.ones(2), torch.ones(2), 40_000)
    model, problem, roots, lo, hi = _problem(net, 2, certain - 0.005)
    assert problem.relus and problem.general
    kinds = set()
    solver = BabSolver(problem, BabOptions(batch_size=8, split="relu", max_rounds=30), lambda: 30.0,
                       lambda *a: None)
    original = solver._bound_children

    def spy(parents):
        kinds.update("relu" if c >= 0 else "general" for c in parents.decision[:, 0].tolist())
        return original(parents)

    solver._bound_children = spy
    out = solver.solve(roots)
    assert out.status in ("proved", "unknown", "timeout")
    assert solver.branching == "mixed_fsb" and kinds, kinds


def test_general_network_input_splitting():
    """split='input' on a sigmoid network (the auto choice for few inputs) decides it too."""
    net = smooth_net("sigmoid", 2, seed=5, scale=2.0)
    gmin, certain = grid_truth(net, -torch.ones(2), torch.ones(2), 40_000)
    assert _decide(net, 2, certain - 0.005, 20.0, "input")[0] == "proved"
    assert _decide(net, 2, gmin + 0.005, 20.0, "input")[0] == "sat"


def test_general_score_follows_gap_times_weight():
    """The score of a neuron is its relaxation's mean gap times |lA| at the op's output: a neuron
    the bound does not use scores (almost) nothing, a wider interval scores more; the decision
    codes name general splits."""
    from dtensor_verify.bab.branching import context_for
    from dtensor_verify.bab.branching.general import general_scores, mixed_sr
    from dtensor_verify.bab.general_split import node_of

    net = smooth_net("sigmoid", 2, seed=0)
    model, problem, roots, lo, hi = _problem(net, 2, 0.0)
    ctx = context_for(problem, None, 3)
    op = problem.general_ops[0]
    name = problem.general[0]
    A = torch.zeros(1, 1, 6)
    A[0, 0, 2], A[0, 0, 4] = 1.0, -1.0
    lA = {op: A, problem.general_ops[1]: torch.zeros(1, 1, 6)}
    bounds = dict(roots.bounds)
    l, u = bounds[name]
    l, u = l.clone(), u.clone()
    l[0, 2], u[0, 2], l[0, 4], u[0, 4] = -3.0, 3.0, -0.5, 0.5
    roots.bounds = {**bounds, name: (l, u)}
    s = general_scores(roots, lA, ctx)[0][0]
    assert s[2] > s[4] > 100 * s[0] >= 0
    decision = mixed_sr(roots, lA, ctx)
    assert decision.tolist() == [[decision[0, 0].item(), 2]] and node_of(decision[0, 0]).item() == 0


@pytest.mark.parametrize("kind, seed, split_mode", [("tanh", 2, "relu"), ("product", 2, "relu"), ("sigmoid", 4, "auto")])
def test_pipeline_runs_general_bab(kind, seed, split_mode):
    """End to end (`verify_instance`): branch and bound is no longer skipped on a non-ReLU network;
    it starts from alpha-CROWN's slopes of the general ops and proves a threshold below the
    grid's certified minimum that the bounds alone leave open; a false threshold is never proved."""
    from dtensor_verify.specs import parse_vnnlib
    from dtensor_verify.verify import verify_instance
    from test_bab import _threshold_property

    net = smooth_net(kind, 2, seed=seed, scale=2.0)
    model = dv.load(net, input_shape=(2,))
    gmin, certain = grid_truth(net, -torch.ones(2), torch.ones(2), 40_000)
    opts = BabOptions(batch_size=32, split=split_mode)
    prop = parse_vnnlib(_threshold_property(certain - 0.05), n_inputs=2, n_outputs=1)
    res = verify_instance(model, prop, None, timeout=40, bab_options=opts)
    assert res.verdict == "unsat", (res.verdict, res.message, res.bounds.get("bab"))
    if verify_instance(model, prop, None, timeout=40, bab=False).verdict == "unknown":
        assert res.decided_by == "bab" and res.bounds["bab"]["domains_visited"] > 0
    assert "skipped" not in str(res.bounds.get("bab", {}).get("reason", ""))
    false = parse_vnnlib(_threshold_property(gmin + 0.002), n_inputs=2, n_outputs=1)
    res = verify_instance(model, false, None, timeout=20, bab_options=opts)
    assert res.verdict in ("sat", "timeout", "unknown"), res.verdict
