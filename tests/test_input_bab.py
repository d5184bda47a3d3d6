"""Input-space branch and bound (bab/input_bab.py, split_kinds.py, branching/input_*.py): sub-boxes
are split kinds of the one solver; every child's bound holds on its sub-box (sampled and attacked
points), a child is never looser than its parent, and small networks with an exact answer (MILP)
agree with branch and bound."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions, BabProblem, BabSolver, RootState, make_roots, split
from dtensor_verify.bab.domains import INPUT_SPLIT, NO_DECISION
from dtensor_verify.bab.input_bab import refreshed, with_boxes

from dtensor_verify.bab.split_kinds import resolve_mode
from dtensor_verify.methods.beta_crown import BetaOptions, beta_crown
from dtensor_verify.methods.crown import intermediate_bounds, output_bound
from dtensor_verify.specs import parse_vnnlib
from dtensor_verify.verify import verify_instance
from exact_milp import exact_min
from model_zoo import random_mlp
from test_bab import root_problem

pytestmark = pytest.mark.usefixtures("one_thread")


def input_root(model, lo, hi, C, d):
    problem, roots = root_problem(model, lo, hi, C, d)
    return problem, with_boxes(problem, roots)


def test_input_split_halves_cover_the_parent():
    net, shape = random_mlp([3, 8, 2], seed=2)
    model = dv.load(net, input_shape=shape)
    lo, hi = torch.tensor([[-1.0, 0.0, 2.0]]), torch.tensor([[1.0, 0.5, 2.0]])
    problem, roots = input_root(model, lo, hi, torch.tensor([[[1.0, -1.0]]]), torch.zeros(1, 1))
    kids = split(roots, torch.tensor([[INPUT_SPLIT, 1]]), problem.relus, problem.pre_of)
    (klo, khi) = kids.box
    assert klo.tolist() == [[-1.0, 0.0, 2.0], [-1.0, 0.25, 2.0]]
    assert khi.tolist() == [[1.0, 0.25, 2.0], [1.0, 0.5, 2.0]]
    assert kids.depth.tolist() == [1, 1] and kids.decision[:, 0].tolist() == [NO_DECISION] * 2
    assert all(torch.equal(kids.signs[r], torch.zeros_like(kids.signs[r])) for r in problem.relus)
    assert roots.box[0].tolist() == lo.tolist()                  # the parent is not changed


def test_auto_mode_picks_input_splitting_for_few_inputs():
    assert resolve_mode("auto", 300, 5, 16) == "input"            # acasxu: 300 ReLU neurons, 5 inputs
    assert resolve_mode("auto", 20, 3, 16) == "relu"              # few ReLUs: ReLU splits + exact leaves
    assert resolve_mode("auto", 5, 784, 16) == "relu"
    assert resolve_mode("auto", 0, 784, 16) == "input"           # nothing else to split
    assert resolve_mode("relu", 5, 2, 16) == "relu"
    with pytest.raises(ValueError):
        resolve_mode("sideways", 5, 2, 16)


def _attack_min(model, lo, hi, C, steps=40, restarts=8, seed=0):
    """min over sampled and PGD-attacked points of the box of C y (per domain, per row)."""
    from dtensor_verify.attack import pgd

    gen = torch.Generator().manual_seed(seed)
    n = lo.shape[0]
    pts = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(n, 256, lo.shape[1], generator=gen)
    with torch.no_grad():
        sampled = torch.einsum("nkm,nsm->nsk", C, model.forward(pts.reshape(-1, lo.shape[1])).reshape(n, 256, -1))
    attacked = torch.stack([pgd(model.forward, lo, hi, lambda y, k=k: torch.einsum("nm,rnm->rn", C[:, k], y),
                                steps=steps, restarts=restarts, seed=seed)[1] for k in range(C.shape[1])], 1)
    return torch.minimum(sampled.min(1).values, attacked.detach())


@pytest.mark.parametrize("seed", range(3))
def test_child_box_bounds_hold_and_never_loosen(seed):
    """Split the root's box on random dimensions four times (16 sub-boxes); each child's
    refreshed intermediate bounds lie inside its parent's, its beta-CROWN bound holds for sampled
    and attacked points of its own sub-box, and the solver stores it no looser than its parent."""
    net, shape = random_mlp([3, 16, 16, 2], seed=20 + seed)
    model = dv.load(net, input_shape=shape)
    lo, hi = -torch.ones(1, 3), torch.ones(1, 3)
    C, d = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]), torch.zeros(1, 2)
    problem, dom = input_root(model, lo, hi, C, d)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(4):
        dims = torch.randint(3, (len(dom),), generator=gen)
        decision = torch.stack([torch.full_like(dims, INPUT_SPLIT), dims], 1)
        kids = split(dom, decision, problem.relus, problem.pre_of)
        fresh = refreshed(problem, kids, lockstep=False)
        for name, (l_new, u_new) in fresh.items():
            l_old, u_old = kids.bounds[name]
            assert bool((l_new >= l_old).all() and (u_new <= u_old).all())
        kids.bounds = fresh
        result = beta_crown(model.graph, problem.bounds_of(kids), C[kids.pair], d[kids.pair],
                            problem.row_mask[kids.pair], kids.alphas, kids.betas, kids.signs,
                            opts=BetaOptions(iterations=5))
        truth = _attack_min(model, *kids.box, C[kids.pair], seed=seed)
        assert bool((result.lower <= truth + 1e-4).all()), (result.lower - truth).max()
        kids.lower = torch.maximum(result.lower, kids.lower)
        kids.alphas, kids.betas = result.alphas, result.betas
        dom = kids
    parent = dom.lower.clone()
    solver = BabSolver(problem, BabOptions(batch_size=64, split="input"), lambda: 1e9, lambda *a: False)
    solver._settle(dom, result, parent)
    if len(solver.store):
        assert bool((solver.store.domains.lower >= parent.min()).all())
        assert bool((solver.store.domains.decision[:, 0] == INPUT_SPLIT).all())


def _property(lo, hi, t: float) -> str:
    n = len(lo)
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(n)) + "(declare-const Y_0 Real)\n"
    text += "".join(f"(assert (>= X_{i} {lo[i]!r}))\n(assert (<= X_{i} {hi[i]!r}))\n" for i in range(n))
    return text + f"(assert (<= Y_0 {t!r}))\n"


def _agrees_with_milp(seed: int, timeout: float = 30.0, strict: bool = True):
    """A random tiny ReLU net, a random box and a threshold t near the exact minimum of y:
    "exists x with y <= t" is sat iff t >= min. BaB (input splits, no attack first) must never
    say unsat above the minimum nor sat below it, and (`strict`) must say unsat below it."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(2, 4))
    net, shape = random_mlp([n_in, 10, 10, 1], seed=100 + seed)
    model = dv.load(net, input_shape=shape)
    centre = rng.uniform(-1, 1, n_in)
    radius = rng.uniform(0.1, 1.0, n_in)
    lo, hi = (centre - radius).astype(np.float32), (centre + radius).astype(np.float32)
    m, _ = exact_min(net, lo.astype(float), hi.astype(float), np.array([1.0]))
    scale = max(1e-2, abs(m))
    delta = float(rng.uniform(2e-3, 3e-2)) * scale * (1 if rng.random() < 0.5 else -1)
    prop = parse_vnnlib(_property(lo.tolist(), hi.tolist(), m + delta), n_inputs=n_in, n_outputs=1)
    res = verify_instance(model, prop, None, timeout=timeout, attack=False,
                          bab_options=BabOptions(batch_size=64, split="input"))
    if delta < 0:
        assert res.verdict in (("unsat",) if strict else ("unsat", "unknown", "timeout")), \
            (seed, m, delta, res.verdict, res.message)
    else:
        assert res.verdict in ("sat", "unknown", "timeout"), (seed, m, delta, res.verdict)
        if res.verdict == "sat":
            x, y = res.counterexample
            assert y[0] <= m + delta and np.all(x >= lo) and np.all(x <= hi)
    return ("unsat" if delta < 0 else "sat") == res.verdict


@pytest.mark.parametrize("seed", range(4))
def test_input_bab_agrees_with_exact_milp(seed):
    _agrees_with_milp(seed)


@pytest.mark.slow
def test_input_bab_agrees_with_exact_milp_on_hundreds():
    """200 instances: no wrong verdict on any; a decision (the exact answer) on nearly all (a gap
    of 1e-4 below the minimum may need more than the 30 s)."""
    decided = [_agrees_with_milp(seed, strict=False) for seed in range(1000, 1200)]
    assert sum(decided) >= 0.9 * len(decided), sum(decided)


def test_relu_split_mode_still_available_from_the_cli():
    from dtensor_verify.cli import build_parser
    from dtensor_verify.cli_common import bab_options as _bab_options

    args = build_parser().parse_args(["run", "--onnx", "a", "--vnnlib", "b", "--results", "c", "--timeout", "1",
                                      "--bab-split", "input"])
    assert _bab_options(args).split == "input"


def test_out_of_time_round_stops_the_run_at_the_next_sync():
    """A round that stores its sub-boxes unbranched (its reserve said: out of time) must stop the
    run at the next sync, even if the reserve shrinks meanwhile (a domain without a decision
    would otherwise be popped: 'a domain without a branching decision')."""
    net, shape = random_mlp([3, 16, 16, 2], seed=5)
    model = dv.load(net, input_shape=shape)
    lo, hi = -torch.ones(1, 3), torch.ones(1, 3)
    C, d = torch.tensor([[[1.0, -1.0]]]), torch.full((1, 1), 100.0)      # never proved
    problem, roots = input_root(model, lo, hi, C, d)
    clock = [3.0]
    solver = BabSolver(problem, BabOptions(batch_size=8, split="input"), lambda: clock[0], lambda *a: None)
    solver._round_seconds = 5.0
    solver.add_roots(roots)
    assert len(solver.store) == 1 and int(solver.store.domains.decision[0, 0]) == NO_DECISION
    solver._round_seconds, clock[0] = 0.0, 100.0
    assert solver._out_of_time()
    res = solver.solve(roots)
    assert res.status == "timeout", res.status
