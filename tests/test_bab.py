"""beta-CROWN and branch and bound (dtensor_verify.bab): sound on split regions, complete on
small networks whose answer is known, never `unsat` on a false property."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions, BabProblem, BabSolver, DomainStore, RootState, make_roots, split
from dtensor_verify.bab.domains import NO_DECISION
from dtensor_verify.methods.beta_crown import BetaOptions, beta_crown
from dtensor_verify.methods.crown import intermediate_bounds, output_bound
from dtensor_verify.specs import parse_vnnlib
from dtensor_verify.verify import verify_instance
from model_zoo import random_mlp


pytestmark = pytest.mark.usefixtures("one_thread")


def node_values(model, x):
    values = {model.graph.input_name: x}
    for node in model.graph.nodes:
        if node.op is not None:
            values[node.name] = node.op.forward(*[values[i] for i in node.inputs])
    return values


def root_problem(model, lo, hi, C, d):
    """A BabProblem with one pair and its CROWN root domain."""
    mask = torch.ones(d.shape, dtype=torch.bool)
    problem = BabProblem(model.graph, model.layout, model.forward, C, d, mask, lo, hi)
    with torch.no_grad():
        bounds, _ = intermediate_bounds(model.graph, (lo, hi))
        lower, _ = output_bound(model.graph, bounds, C)
    pre = model.graph.preactivation_nodes()
    roots = make_roots(problem, [0], [RootState({n: (bounds[n][0][0], bounds[n][1][0]) for n in pre})],
                       [lower[0] - d[0]])
    return problem, roots


def splits_matching(model, problem, roots, x0, n_splits, gen):
    """Split the root `n_splits` times on unstable neurons, always keeping the child that
    contains x0 (so the domain is not empty)."""
    values = node_values(model, x0)
    dom = roots
    for _ in range(n_splits):
        choices = []
        for li, relu in enumerate(problem.relus):
            lo, up = dom.bounds[problem.pre_of[relu]]
            unstable = ((lo < 0) & (up > 0)).flatten(1)[0].nonzero().flatten()
            choices += [(li, int(j)) for j in unstable]
        if not choices:
            break
        li, j = choices[int(torch.randint(len(choices), (1,), generator=gen))]
        z = values[problem.pre_of[problem.relus[li]]].flatten(1)[0, j]
        kids = split(dom, torch.tensor([[li, j]]), problem.relus, problem.pre_of)
        dom = kids.index(torch.tensor([0 if z >= 0 else 1]))
    return dom


def satisfies(model, problem, dom, x):
    """Mask of the rows of x that meet every split of `dom` (batch of one domain)."""
    values = node_values(model, x)
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for relu in problem.relus:
        s = dom.signs[relu][0].flatten()
        z = values[problem.pre_of[relu]].flatten(1)
        ok &= ((s > 0) & (z > 0)).sum(1) == 0          # sign +1: z <= 0
        ok &= ((s < 0) & (z < 0)).sum(1) == 0          # sign -1: z >= 0
    return ok


@pytest.mark.parametrize("seed", range(4))
def test_beta_bounds_hold_on_the_split_region(seed):
    net, shape = random_mlp([5, 20, 20, 20, 3], seed=seed)
    model = dv.load(net, input_shape=shape)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = -torch.ones(1, 5), torch.ones(1, 5)
    C = torch.randn(1, 2, 3, generator=gen)
    d = torch.zeros(1, 2)
    problem, roots = root_problem(model, lo, hi, C, d)
    x0 = lo + (hi - lo) * torch.rand(1, 5, generator=gen)
    dom = splits_matching(model, problem, roots, x0, 6, gen)
    res = beta_crown(model.graph, problem.bounds_of(dom), C, d, torch.ones(1, 2, dtype=torch.bool),
                     dom.alphas, dom.betas, dom.signs, opts=BetaOptions(iterations=40))
    # Samples of the box that meet the splits, then a projected descent on C y from them,
    # rejecting steps that leave the split region.
    x = torch.cat([x0, lo + (hi - lo) * torch.rand(20000, 5, generator=gen)])
    x = x[satisfies(model, problem, dom, x)][:512]
    assert x.shape[0] >= 1
    for _ in range(30):
        x = x.detach().requires_grad_(True)
        y = torch.einsum("kn,bn->bk", C[0], model.forward(x))
        g, = torch.autograd.grad(y.sum(), x)
        with torch.no_grad():
            cand = torch.max(torch.min(x - 0.05 * g.sign(), hi), lo)
            keep = satisfies(model, problem, dom, cand)
            x = torch.where(keep.unsqueeze(1), cand, x)
    with torch.no_grad():
        y = torch.einsum("kn,bn->bk", C[0], model.forward(x))
    assert bool((y >= res.lower[0] - 1e-5).all()), (float((y - res.lower[0]).min()))


class _SkipNet(torch.nn.Module):
    """y = w_h relu(z) + x with z = x: on the domain `z >= 0`, min y = 0 (w_h = 0), while the box
    [-1, 1] alone gives -1. Only the split constraint itself (beta) can close that gap."""

    def __init__(self):
        super().__init__()
        self.z, self.h, self.skip = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
        with torch.no_grad():
            for lin, w in ((self.z, 1.0), (self.h, 0.0), (self.skip, 1.0)):
                lin.weight.fill_(w)
                lin.bias.zero_()

    def forward(self, x):
        return self.h(torch.relu(self.z(x))) + self.skip(x)


def test_beta_uses_the_split_constraint():
    model = dv.load(_SkipNet().eval(), input_shape=(1,))
    lo, hi = -torch.ones(1, 1), torch.ones(1, 1)
    C, d = torch.ones(1, 1, 1), torch.zeros(1, 1)
    problem, roots = root_problem(model, lo, hi, C, d)
    kids = split(roots, torch.tensor([[0, 0]]), problem.relus, problem.pre_of)
    active = kids.index(torch.tensor([0]))                     # z >= 0
    mask = torch.ones(1, 1, dtype=torch.bool)
    args = (model.graph, problem.bounds_of(active), C, d, mask, active.alphas, active.betas, active.signs)
    without = beta_crown(*args, opts=BetaOptions(iterations=60, lr_beta=0.0)).lower
    with_beta = beta_crown(*args, opts=BetaOptions(iterations=60, lr_beta=0.1)).lower
    assert float(without) == pytest.approx(-1.0, abs=1e-5)
    assert float(with_beta) > -0.05 and float(with_beta) <= 1e-6


def test_split_clamps_the_neuron_and_children_never_loosen():
    net, shape = random_mlp([4, 16, 16, 2], seed=1)
    model = dv.load(net, input_shape=shape)
    lo, hi = -torch.ones(1, 4), torch.ones(1, 4)
    C, d = torch.tensor([[[1.0, -1.0]]]), torch.zeros(1, 1)
    problem, roots = root_problem(model, lo, hi, C, d)
    relu = problem.relus[0]
    pre = problem.pre_of[relu]
    j = int(((roots.bounds[pre][0] < 0) & (roots.bounds[pre][1] > 0))[0].nonzero()[0])
    kids = split(roots, torch.tensor([[0, j]]), problem.relus, problem.pre_of)
    assert len(kids) == 2 and kids.depth.tolist() == [1, 1]
    assert kids.signs[relu][:, j].tolist() == [-1.0, 1.0]
    assert float(kids.bounds[pre][0][0, j]) == 0.0 and float(kids.bounds[pre][1][1, j]) == 0.0
    assert kids.decision[:, 0].tolist() == [NO_DECISION] * 2
    # The rest of the bounds are the parent's.
    other = torch.ones(roots.bounds[pre][0].shape[1], dtype=torch.bool)
    other[j] = False
    assert torch.equal(kids.bounds[pre][0][:, other], roots.bounds[pre][0].expand(2, -1)[:, other])
    # Stored children are never looser than their parent.
    solver = BabSolver(problem, BabOptions(batch_size=4), lambda: 1e9, lambda *a: False)
    result = beta_crown(model.graph, problem.bounds_of(kids), C[kids.pair], d[kids.pair],
                        torch.ones(2, 1, dtype=torch.bool), kids.alphas, kids.betas, kids.signs,
                        opts=BetaOptions(iterations=0))
    parent = kids.lower.clone()
    solver._settle(kids, result, parent)
    if len(solver.store):
        assert bool((solver.store.domains.lower >= parent[: len(solver.store)] - 0).all())


def test_store_hands_out_worst_first():
    net, shape = random_mlp([3, 8, 2], seed=2)
    model = dv.load(net, input_shape=shape)
    lo, hi = -torch.ones(1, 3), torch.ones(1, 3)
    problem, roots = root_problem(model, lo, hi, torch.tensor([[[1.0, 0.0]]]), torch.zeros(1, 1))
    many = roots.index(torch.zeros(5, dtype=torch.long))
    store = DomainStore()
    store.push(many, torch.tensor([0.3, -2.0, 1.0, -0.5, 0.0]))
    _, m = store.pop_worst(2)
    assert sorted(m.tolist()) == [-2.0, -0.5]
    _, m = store.pop_best(1)
    assert m.tolist() == [1.0]
    assert len(store) == 2 and store.worst_margin() == 0.0


def _grid_min(model, n=401):
    g = torch.linspace(-1, 1, n)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    with torch.no_grad():
        y = model.forward(pts)[:, 0]
    return float(y.min()), pts[int(y.argmin())]


def _lipschitz(net) -> float:
    L = 1.0
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            L *= float(torch.linalg.matrix_norm(m.weight.detach(), ord=2))
    return L


def _threshold_property(t: float) -> str:
    return ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
            "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
            f"(assert (<= Y_0 {t!r}))\n")


def certain_instance(seed: int = 10):
    """A 2-24-24-1 network on [-1, 1]^2, its grid minimum, and a threshold property certainly true
    (below the minimum by the grid's Lipschitz margin): (model, grid minimum, property)."""
    net, shape = random_mlp([2, 24, 24, 1], seed=seed)
    model = dv.load(net, input_shape=shape)
    gmin, _ = _grid_min(model)
    certain = gmin - _lipschitz(net) * (2.0 / 400) * math.sqrt(2) / 2 - 1e-3
    return model, gmin, parse_vnnlib(_threshold_property(certain), n_inputs=2, n_outputs=1)


@pytest.mark.parametrize("split", ["relu", "input"])
@pytest.mark.parametrize("seed", range(3))
def test_bab_decides_small_networks_as_ground_truth_says(seed, split):
    """y = net(x) on [-1, 1]^2 with a dense grid for the truth: a threshold certified below
    the minimum must be proved (by branch and bound when the bounds alone fail), a threshold
    above the grid's minimum must never be proved."""
    net, shape = random_mlp([2, 24, 24, 1], seed=10 + seed)
    model = dv.load(net, input_shape=shape)
    gmin, _ = _grid_min(model)
    h = 2.0 / 400
    certain = gmin - _lipschitz(net) * h * math.sqrt(2) / 2 - 1e-3     # below the true minimum
    prop = parse_vnnlib(_threshold_property(certain), n_inputs=2, n_outputs=1)
    res = verify_instance(model, prop, None, timeout=60, bab_options=BabOptions(batch_size=64, split=split))
    assert res.verdict == "unsat", (res.verdict, res.message, res.bounds)
    no_bab = verify_instance(model, prop, None, timeout=60, bab=False)
    if no_bab.verdict == "unknown":
        assert res.decided_by == "bab" and res.bounds["bab"]["domains_visited"] > 0

    false = parse_vnnlib(_threshold_property(gmin + 1e-3), n_inputs=2, n_outputs=1)
    res = verify_instance(model, false, None, timeout=60, bab_options=BabOptions(batch_size=64, split=split))
    assert res.verdict == "sat", (res.verdict, res.message)
    x, y = res.counterexample
    assert y[0] <= gmin + 1e-3 and np.all(np.abs(x) <= 1)


def test_bab_alone_never_proves_a_false_property():
    """Without the attack, branch and bound must not answer unsat on a violated property; it
    may find the counterexample itself (box vertices of its domains) or stay undecided."""
    net, shape = random_mlp([2, 16, 16, 1], seed=3)
    model = dv.load(net, input_shape=shape)
    gmin, _ = _grid_min(model)
    false = parse_vnnlib(_threshold_property(gmin + 0.05), n_inputs=2, n_outputs=1)
    res = verify_instance(model, false, None, timeout=20, attack=False, bab_options=BabOptions(batch_size=32))
    assert res.verdict in ("sat", "unknown", "timeout"), res.verdict


def test_bab_respects_the_time_limit():
    net, shape = random_mlp([20, 64, 64, 64, 64, 2], seed=4)
    model = dv.load(net, input_shape=shape)
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(20))
    text += "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(assert (<= Y_0 Y_1))\n"
    prop = parse_vnnlib(text, n_inputs=20, n_outputs=2)
    t = 3.0
    res = verify_instance(model, prop, None, timeout=t, attack=False)
    assert res.verdict in ("timeout", "unsat", "unknown")
    assert res.seconds < t + 1.5, res.seconds


def test_mnist_instances_that_need_branch_and_bound():
    """The mnist-net_256x2 instances CROWN and alpha-CROWN leave open (all expected unsat)."""
    from test_verify import bench, model_of

    model, onnx = model_of("mnist_fc", "onnx", "mnist-net_256x2.onnx.gz")
    for name in ("prop_6_0.03", "prop_8_0.03", "prop_9_0.05", "prop_10_0.05", "prop_11_0.05", "prop_14_0.05"):
        from dtensor_verify.specs import read_vnnlib
        prop = read_vnnlib(bench("mnist_fc", "vnnlib", f"{name}.vnnlib.gz"), model.n_inputs, model.n_outputs)
        res = verify_instance(model, prop, onnx, timeout=120)
        assert res.verdict == "unsat", (name, res.verdict, res.message)
        assert res.decided_by == "bab", (name, res.decided_by)


def test_out_of_memory_halves_the_batch_and_loses_no_domain(monkeypatch):
    """A round that runs out of memory puts its parents back and goes on with half the batch
    (seen on an H100 with --bab-batch 32768: CUDA out of memory became `error`). Simulated here:
    bounding more than 16 children raises the allocator's error. The verdict must not change,
    and on a false property the run must still never say unsat."""
    from dtensor_verify.bab import solver as solver_module

    real = solver_module.BabSolver._bound
    seen = []

    def small_memory(self, domains, iterations):
        seen.append(len(domains))
        if len(domains) > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, domains, iterations)

    monkeypatch.setattr(solver_module.BabSolver, "_bound", small_memory)
    model, gmin, prop = certain_instance()
    # ReLU splitting (2 inputs would pick input splitting, whose few rounds stay under 16 children).
    res = verify_instance(model, prop, None, timeout=60, attack=False,
                          bab_options=BabOptions(batch_size=64, split="relu"))
    assert res.verdict == "unsat", (res.verdict, res.message)
    stats = res.bounds["bab"]
    assert stats["memory_retries"] >= 1 and stats["batch_per_worker"] <= 8, stats
    assert max(seen) > 16                                  # the large rounds were tried, and redone

    false = parse_vnnlib(_threshold_property(gmin + 1e-3), n_inputs=2, n_outputs=1)
    res = verify_instance(model, false, None, timeout=20, attack=False,
                          bab_options=BabOptions(batch_size=64, split="relu"))
    assert res.verdict in ("sat", "unknown", "timeout"), res.verdict


def test_out_of_memory_on_one_domain_is_an_error_not_a_verdict(monkeypatch):
    from dtensor_verify.bab import solver as solver_module

    def no_memory(self, domains, iterations):
        if iterations > 0 and len(domains) > 0:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, domains, iterations)

    real = solver_module.BabSolver._bound
    monkeypatch.setattr(solver_module.BabSolver, "_bound", no_memory)
    net, shape = random_mlp([2, 24, 24, 1], seed=10)
    model = dv.load(net, input_shape=shape)
    gmin, _ = _grid_min(model)
    prop = parse_vnnlib(_threshold_property(gmin - 0.05), n_inputs=2, n_outputs=1)
    res = verify_instance(model, prop, None, timeout=20, attack=False, bab_options=BabOptions(batch_size=4))
    assert res.verdict in ("unsat", "error"), res.verdict
    if res.verdict == "unsat":
        assert res.decided_by != "bab"                     # decided before branch and bound ran
    else:
        assert "out of memory" in res.message.lower()


@pytest.mark.parametrize("derive_bounds,memory,limits", [(False, 4_000_000, (100, 200)),
                                                         (True, 1_600_000, (120, 180))])
def test_queue_limit_follows_memory_and_ends_unknown(monkeypatch, derive_bounds, memory, limits):
    """The open-domain queue is limited by what `store_fraction` of the free memory holds (an
    oval21 queue at VNN-COMP's 720 s would otherwise outgrow a GPU); reaching it ends the search
    as unknown (never unsat), and a crowded queue serves its most promising domains first."""
    from dtensor_verify.bab import solver as solver_module

    from dtensor_verify.bab import store_limit

    monkeypatch.setattr(solver_module, "free_memory_bytes", lambda device: 4_000_000)
    # The store's limit: free memory now, floored by the device's total (both `memory` here).
    monkeypatch.setattr(store_limit, "free_memory_bytes", lambda device: memory)
    monkeypatch.setattr(store_limit, "total_memory_bytes", lambda device: memory)
    net, shape = random_mlp([20, 64, 64, 64, 64, 2], seed=4)
    model = dv.load(net, input_shape=shape)
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(20))
    text += "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(assert (<= Y_0 Y_1))\n"
    prop = parse_vnnlib(text, n_inputs=20, n_outputs=2)
    res = verify_instance(model, prop, None, timeout=30, attack=False,
                          bab_options=BabOptions(batch_size=8, derive_bounds=derive_bounds))
    stats = res.bounds["bab"]
    # A stored domain here: pre-activation bounds (2 x 256), slopes, multipliers and signs
    # (3 x 256 floats), a few scalars: about 5 KB, so 0.2 x 4 MB holds about 155. Kept without
    # its bounds and with int8 signs (bab/domain_codec.py): about 2.3 KB, so 0.2 x 1.6 MB about 140.
    assert limits[0] < stats["open_domain_limit"] < limits[1], stats
    assert res.verdict == "unknown", (res.verdict, stats)
    assert "too many open domains (limit" in res.message
    assert stats["open_domains"] <= stats["open_domain_limit"] + 2 * 8


def test_clock_inside_a_round_keeps_the_counts(monkeypatch):
    """One process: the clock may stop a round from inside (deadline.py). The row is still a
    timeout (never a verdict), and it keeps what the search did: domains bounded, the worst
    open margin (TinyYOLO on a CPU had a `timeout (in bab)` with no branch-and-bound columns)."""
    from dtensor_verify.bab import solver as solver_module
    from dtensor_verify.errors import TimeLimitReached

    real, calls = solver_module.BabSolver.round, []

    def round_then_clock(self):
        calls.append(1)
        if len(calls) > 3:
            raise TimeLimitReached()
        return real(self)

    monkeypatch.setattr(solver_module.BabSolver, "round", round_then_clock)
    model, _, prop = certain_instance()
    res = verify_instance(model, prop, None, timeout=60, attack=False,
                          bab_options=BabOptions(batch_size=2, split="relu", split_width=1))
    assert res.verdict == "timeout" and "(in bab)" in res.message, (res.verdict, res.message)
    stats = res.bounds["bab"]
    assert stats["domains_visited"] > 0 and stats["reason"] == "time limit reached inside a round", stats
    assert stats["global_margin"] < 0, stats
