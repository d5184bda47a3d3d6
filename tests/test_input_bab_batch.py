"""A sub-box's bounds do not depend on which boxes share its batch (input splitting).

`input_bab.refreshed` swept the neurons unstable in *any* box of the batch (`skip_stable`), and a box
kept the CROWN bounds of neurons stable in its own IBP box too, which tightened the IBP of the layers
after them: the same sub-box got other bounds in another batch, and two dp workers (half batches
each) grew another tree than one process (acasxu 4_7 prop_1: 5036 vs 3686 sub-boxes). It now sweeps
every neuron: each box's bounds are those of the box bounded alone.
"""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import split
from dtensor_verify.bab.domains import INPUT_SPLIT
from dtensor_verify.bab.input_bab import refreshed
from dtensor_verify.methods.crown import CrownOptions, intermediate_bounds
from model_zoo import random_mlp
from test_bab import node_values
from test_input_bab import input_root

pytestmark = pytest.mark.usefixtures("one_thread")


def _sub_boxes(seed: int, depth: int = 4):
    """A random 3-16-16-16-2 network's problem and 2**depth sub-boxes of its root box (random dims)."""
    net, shape = random_mlp([3, 16, 16, 16, 2], seed=40 + seed)
    model = dv.load(net, input_shape=shape)
    lo, hi = -torch.ones(1, 3), torch.ones(1, 3)
    C, d = torch.tensor([[[1.0, -1.0]]]), torch.zeros(1, 1)
    problem, dom = input_root(model, lo, hi, C, d)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(depth):
        dims = torch.randint(3, (len(dom),), generator=gen)
        dom = split(dom, torch.stack([torch.full_like(dims, INPUT_SPLIT), dims], 1), problem.relus, problem.pre_of)
    return model, problem, dom


def _max_gap(a: dict, b: dict) -> float:
    return max(float((a[n][i] - b[n][i]).abs().max()) for n in a for i in (0, 1))


def _bounds_alone(problem, dom) -> list[dict]:
    """Each box refreshed in a batch of its own."""
    return [refreshed(problem, dom.index(torch.tensor([i])), lockstep=False) for i in range(len(dom))]


def _row(bounds: dict, i: int) -> dict:
    return {n: (lo[i:i + 1], up[i:i + 1]) for n, (lo, up) in bounds.items()}


@pytest.mark.parametrize("seed", range(3))
def test_a_sub_box_gets_the_same_bounds_in_any_batch(seed):
    _, problem, dom = _sub_boxes(seed)
    whole = refreshed(problem, dom, lockstep=False)
    halves = [refreshed(problem, dom.index(idx), lockstep=False)
              for idx in (torch.arange(0, len(dom), 2), torch.arange(1, len(dom), 2))]
    swept_all = refreshed(problem, dom, lockstep=True)            # every neuron swept (lockstep ranks)
    for i, alone in enumerate(_bounds_alone(problem, dom)):
        assert _max_gap(_row(whole, i), alone) <= 1e-6, i
        assert _max_gap(_row(halves[i % 2], i // 2), alone) <= 1e-6, i
        assert _max_gap(_row(swept_all, i), alone) <= 1e-6, i


def test_sweeping_the_batch_unstable_neurons_changes_a_box_bounds():
    """The check above can fail: the sweep of the neurons unstable in some box of the batch
    (`skip_stable`, what `refreshed` did) gives some box other bounds in a batch than alone."""
    gaps = []
    for seed in range(3):
        model, problem, dom = _sub_boxes(seed)
        opts = CrownOptions(skip_stable=True)
        with torch.no_grad():
            whole, _ = intermediate_bounds(model.graph, dom.box, opts=opts)
            for i in range(len(dom)):
                alone, _ = intermediate_bounds(model.graph, dom.index(torch.tensor([i])).box, opts=opts)
                gaps.append(_max_gap(_row(whole, i), alone))
    assert max(gaps) > 1e-4


@pytest.mark.parametrize("seed", range(2))
def test_own_rows_bounds_hold_on_sampled_points(seed):
    """Soundness: every sub-box's intermediate bounds contain the values of points sampled in it."""
    model, problem, dom = _sub_boxes(seed)
    fresh = refreshed(problem, dom, lockstep=False)
    lo, hi = dom.box
    gen = torch.Generator().manual_seed(seed)
    pts = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(len(dom), 200, lo.shape[1], generator=gen)
    with torch.no_grad():
        values = node_values(model, pts.reshape(-1, lo.shape[1]))
    for name, (l_b, u_b) in fresh.items():
        v = values[name].reshape(len(dom), 200, -1)
        assert bool((v >= l_b.flatten(1).unsqueeze(1) - 1e-5).all()), name
        assert bool((v <= u_b.flatten(1).unsqueeze(1) + 1e-5).all()), name
