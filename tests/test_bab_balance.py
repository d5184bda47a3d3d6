"""Each round's children spread evenly over the dp workers (`MeshComm.balance`), on CPU gloo ranks.

Parents are shared out whole by `rebalance`, but a wide round's cheap bound prunes a different number
of each parent's children, and in the first round one worker holds the only root: without `balance`
the other worker waits. Checked: the children are conserved (none lost, none doubled) and end up
within one of each other; in a whole search the worker without the root bounds children in its first
round and the verdict is one process's."""
from __future__ import annotations

import pytest
import torch

from dist_utils import run_distributed
from model_zoo import random_mlp

START = "forkserver"
WIDTHS, SEED = [3, 30, 30, 30, 1], 5


def _comm(rank):
    import dtensor_verify as dv
    from dtensor_verify.bab.comm import comm_for
    from placements import apply_plan, mesh_from_process_group

    net, shape = random_mlp(WIDTHS, seed=SEED)
    model = dv.load(net, input_shape=shape)
    apply_plan(model, "replicate", mesh_from_process_group(f"{torch.distributed.get_world_size()}x1"))
    return model, comm_for(model.layout)


def _kids(n: int, tag0: int):
    """`n` tagged children (depth = a unique tag) with a tensor in every kind of field."""
    from dtensor_verify.bab.domains import Domains

    tags = torch.arange(tag0, tag0 + n)
    return Domains(pair=torch.zeros(n, dtype=torch.long), lower=tags.float().unsqueeze(1),
                   bounds={"z": (tags.float().unsqueeze(1) - 1, tags.float().unsqueeze(1) + 1)},
                   signs={"r": torch.zeros(n, 4)}, alphas={"r": tags.float().view(n, 1, 1).expand(n, 1, 4).clone()},
                   betas={"r": torch.zeros(n, 1, 4)}, depth=tags.clone(),
                   decision=torch.full((n, 2), -1, dtype=torch.long))


def _balance_on_ranks(rank, world, counts):
    torch.set_num_threads(1)
    _, comm = _comm(rank)
    start = sum(counts[:rank])
    kids = comm.balance(_kids(counts[rank], 1000 + start))
    # every field moved together with its child
    assert torch.equal(kids.lower[:, 0].long(), kids.depth)
    assert torch.equal(kids.alphas["r"][:, 0, 0].long(), kids.depth)
    assert torch.equal(kids.bounds["z"][0][:, 0].long() + 1, kids.depth)
    return sorted(kids.depth.tolist())


@pytest.mark.parametrize("counts", [(8, 0), (40, 9, 2)])
def test_children_are_conserved_and_spread_evenly(tmp_path, counts):
    res = run_distributed(_balance_on_ranks, len(counts), tmp_path, list(counts), timeout_s=120,
                          start_method=START)
    total = sum(counts)
    got = sorted(t for tags in res for t in tags)
    assert got == list(range(1000, 1000 + total))        # none lost, none doubled
    sizes = [len(tags) for tags in res]
    assert max(sizes) - min(sizes) <= 1, sizes


def _near_even_on_ranks(rank, world):
    torch.set_num_threads(1)
    _, comm = _comm(rank)
    kids = comm.balance(_kids([21, 20][rank], 1000 + 21 * rank))
    return len(kids), comm.moved_children


def test_nearly_even_children_do_not_move(tmp_path):
    res = run_distributed(_near_even_on_ranks, 2, tmp_path, timeout_s=120, start_method=START)
    assert res == [(21, 0), (20, 0)]


def _threshold():
    import dtensor_verify as dv

    net, shape = random_mlp(WIDTHS, seed=SEED)
    model = dv.load(net, input_shape=shape)
    pts = torch.rand(200000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        return float(model.forward(pts)[:, 0].min()) - 0.1


def _solve(model, threshold, comm=None, balance=True):
    from dtensor_verify.bab import BabOptions, BabSolver
    from test_bab import root_problem

    lo, hi = -torch.ones(1, 3), torch.ones(1, 3)
    problem, roots = root_problem(model, lo, hi, torch.ones(1, 1, 1), torch.tensor([[threshold]]))
    if comm is not None:
        with model.layout.domain_batches() as layout:
            problem.layout = layout
    solver = BabSolver(problem, BabOptions(batch_size=64, split="relu", balance_children=balance, pgd_points=4),
                       lambda: 1e9, lambda *a: None, comm=comm)
    out = solver.solve(roots)
    first = out.stats.batch_sizes[0] if out.stats.batch_sizes else 0
    return (out.status, getattr(solver.comm, "moved_children", 0), first, out.stats.visited_all,
            solver.store.shared_codec, getattr(solver.comm, "moved", 0))


def _search_on_ranks(rank, world, threshold, balance):
    torch.set_num_threads(1)
    model, comm = _comm(rank)
    return _solve(model, threshold, comm, balance)


@pytest.mark.parametrize("balance", [True, False])
def test_the_worker_without_the_root_bounds_children_in_the_first_round(tmp_path, balance):
    import dtensor_verify as dv

    torch.set_num_threads(1)
    threshold = _threshold()
    net, shape = random_mlp(WIDTHS, seed=SEED)
    one = _solve(dv.load(net, input_shape=shape), threshold)
    assert one[0] == "proved" and one[3] > 8, one
    res = run_distributed(_search_on_ranks, 2, tmp_path, threshold, balance, timeout_s=180, start_method=START)
    assert [r[0] for r in res] == ["proved", "proved"], res
    # Both workers' stores derive bounds from the same roots: domains travelled packed
    # (bab/domain_codec.py), children (balance) and parents (rebalance) alike.
    assert all(r[4] for r in res), res
    if not balance:
        assert sum(r[5] for r in res) > 0, res
    if balance:
        assert res[1][1] > 0, res          # rank 1 received children
        # rank 0 kept half of its first round's children and rank 1 bounded the other half
        assert res[1][2] > 0 and abs(res[0][2] - res[1][2]) <= 1, res
    else:
        assert res[1][1] == 0, res
