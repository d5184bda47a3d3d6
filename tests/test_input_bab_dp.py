"""Input branch and bound over 2 dp workers (CPU gloo) grows one process's tree: a sub-box's bounds do
not depend on the boxes that share its batch (`input_bab.refreshed`), so while every worker takes all
its open boxes each round, the two workers bound exactly the sub-boxes one process bounds.

An end-to-end check (processes, gloo, the rebalancing); the mechanism itself is tested in one process
by test_input_bab_batch.py (this small network does not tell the old batch-dependent sweep apart: its
union of unstable neurons covers the same rows in half a batch; acasxu 4_7 prop_1 did, 5036 vs 3686
sub-boxes, now 4600 on both, docs/bab_scaling/dp_s4/README.md)."""
from __future__ import annotations

import pytest
import torch

from dist_utils import run_distributed
from model_zoo import random_mlp

START = "forkserver"
WIDTHS, SEED = [3, 30, 30, 30, 30, 1], 5


def _instance(threshold_shift: float = -0.01):
    """The network and a property `Y_0 >= min - shift` over [-1, 1]^3 (min by dense sampling, so
    the property is true and needs a few hundred sub-boxes)."""
    import dtensor_verify as dv

    net, shape = random_mlp(WIDTHS, seed=SEED)
    model = dv.load(net, input_shape=shape)
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(200000, 3, generator=gen) * 2 - 1
    with torch.no_grad():
        low = float(model.forward(pts)[:, 0].min())
    return net, shape, low + threshold_shift


def _solve(model, threshold: float, comm=None):
    from dtensor_verify.bab import BabOptions, BabSolver
    from test_bab import root_problem

    lo, hi = -torch.ones(1, 3), torch.ones(1, 3)
    problem, roots = root_problem(model, lo, hi, torch.ones(1, 1, 1), torch.tensor([[threshold]]))
    if comm is not None:
        with model.layout.domain_batches() as layout:
            problem.layout = layout
    solver = BabSolver(problem, BabOptions(batch_size=512, split="input", pgd_points=4), lambda: 1e9,
                       lambda *a: None, comm=comm)
    out = solver.solve(roots)
    return out.status, out.stats.visited_all, solver.comm.workers


def _on_ranks(rank, world, threshold):
    import dtensor_verify as dv
    from dtensor_verify.bab.comm import comm_for
    from placements import apply_plan, mesh_from_process_group

    torch.set_num_threads(1)
    net, shape = random_mlp(WIDTHS, seed=SEED)
    model = dv.load(net, input_shape=shape)
    apply_plan(model, "replicate", mesh_from_process_group("2x1"))
    return _solve(model, threshold, comm_for(model.layout))


@pytest.mark.slow
def test_two_dp_workers_bound_the_sub_boxes_of_one_process(tmp_path):
    import dtensor_verify as dv

    torch.set_num_threads(1)
    net, shape, threshold = _instance()
    status, visited, _ = _solve(dv.load(net, input_shape=shape), threshold)
    assert status == "proved" and 50 < visited < 1000, (status, visited)
    res = run_distributed(_on_ranks, 2, tmp_path, threshold, timeout_s=120, start_method=START)
    for status2, visited2, workers in res:
        assert (status2, workers) == ("proved", 2)
        assert visited2 == visited
