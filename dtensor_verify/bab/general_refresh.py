"""Intermediate bounds after general splits: the layers behind a cut interval, bounded again.

A general split narrows one neuron's interval; the op it feeds re-derives its relaxation from
that, but the nodes behind it keep their parent's intervals unless they are bounded again. On
the smooth networks of the tests that is what stops branch and bound from converging: a cut in
the first layer never tightens the second layer's relaxations. So the children of general splits
get a CROWN sweep for every carried pre-activation node downstream of a split node, with the
children's own (narrowed) intervals upstream, each intersected with what the child inherited.
Only downstream nodes: on networks of parallel branches (nn4sys pensieve_*_parallel: two nets
whose outputs are subtracted) the other branch's intervals cannot change, and sweeping them
(a 256-row layer behind a 2048-wide concat) took most of a round.

ReLU splits on such networks narrow intervals too: fixing a ReLU's phase fixes its output
interval (`_relu_outputs`: [relu(l), relu(u)] of the clamped pre-activation), and the layers
behind it (the powers and the normalising sum of pensieve's output) are bounded again the same
way when the ReLU reaches a node a general split may cut.

Sound: every interval used is valid on the child's region (inherited ones hold on the parent's
region, which contains it; the cut one holds there by definition), so every CROWN bound computed
from them holds on the child's region too; the intersection of two valid intervals is valid.
"""
from __future__ import annotations

import math

import torch

from ..methods.crown import CrownOptions, agreed_max_rows, node_bound_rows
from ..ops.softmax_sum import best_of_shifts
from .general_split import is_general, node_of
from .refresh_cost import affordable, downstream  # noqa: F401 (downstream re-exported)


def _relu_cuts(problem, decision: torch.Tensor) -> list[str]:
    """The ReLU nodes split by these decisions whose output reaches a general op (their carried
    successors' intervals may shrink: the split fixes the neuron's phase)."""
    codes = decision[:, 0]
    relus = codes[(codes >= 0) & (codes < len(problem.relus))].unique().tolist()
    reach = _reaching_relus(problem)
    return [problem.relus[int(i)] for i in relus if problem.relus[int(i)] in reach]


def _reaching_relus(problem) -> frozenset:
    """The ReLU nodes whose output reaches a node a general split may cut (cached on the problem)."""
    reach = getattr(problem, "_relus_reaching_general", None)
    if reach is None:
        general = set(problem.general)
        # ... and whose layers behind are affordable to bound again (bab/refresh_cost.py: on a
        # ViT a ReLU of the first block has every later attention behind it; skipped, its
        # children keep their parent's intervals there, as on a ReLU network: valid, looser).
        reach = frozenset(r for r in problem.relus if general & (downstream(problem.graph, [r]) | {r})
                          and affordable(problem, r))
        problem._relus_reaching_general = reach
    return reach


def cut_nodes(problem, decision: torch.Tensor | None) -> list[str]:
    """The nodes whose intervals these decisions narrowed: general-split nodes, and on networks
    with general ops, split ReLUs whose output reaches one (`_relu_cuts`); with no decisions
    (ranks in lockstep: the same sweeps whatever their domains), every node a general split may cut
    (those branching may cut: `refresh_cost.affordable`, the same on every rank)."""
    if decision is None:
        return [name for name in problem.general if affordable(problem, name)]
    codes = decision[:, 0]
    general = codes[is_general(codes)]
    cut = [problem.general[int(j)] for j in node_of(general).unique().tolist()] if general.numel() else []
    return cut + _relu_cuts(problem, decision)


def first_split_node(problem, decision: torch.Tensor | None) -> int | None:
    """The graph position of the earliest node cut by these decisions (`cut_nodes`), or None."""
    position = {n.name: i for i, n in enumerate(problem.graph.nodes)}
    cut = cut_nodes(problem, decision)
    return min(position[name] for name in cut) if cut else None


EMPTY_TOL = 1e-5         # lower above upper by more than this (relative) marks a region empty


def refresh_children(problem, kids, decision: torch.Tensor, lockstep: bool) -> None:
    """Bound again, in place, the layers behind the splits that made `kids` from parents with
    these decisions (`cut_nodes`); children whose region came out empty get the lower bound +inf
    (no input lies there: proved). Ranks in lockstep take the same sweeps whatever their domains:
    behind every node a general split may cut."""
    cut = cut_nodes(problem, None if lockstep else decision)
    if not cut:
        return
    kids.bounds, empty = refine_after(problem, kids, cut, lockstep)
    kids.lower = torch.where(empty.unsqueeze(1), torch.full_like(kids.lower, torch.inf), kids.lower)


def _relu_outputs(problem, out: dict, cut, empty: torch.Tensor) -> None:
    """A split ReLU's carried output interval, in place: intersected with relu of its (clamped)
    pre-activation interval (ReLU is monotone, so relu(l) <= relu(z) <= relu(u) on the region);
    children where that leaves lower > upper are marked in `empty` (no input lies there)."""
    for name in cut:
        if name in problem.pre_of and name in out:
            lo, up = out[name]
            pre_lo, pre_up = out[problem.pre_of[name]]
            lo, up = torch.maximum(lo, pre_lo.clamp(min=0)), torch.minimum(up, pre_up.clamp(min=0))
            tol = EMPTY_TOL * (1 + torch.maximum(lo.abs(), up.abs()))
            empty |= (lo > up + tol).flatten(1).any(1)
            out[name] = (torch.minimum(lo, up), torch.maximum(lo, up))


def refine_after(problem, kids, cut, lockstep: bool) -> tuple[dict, torch.Tensor]:
    """The children's bounds, with every carried node downstream of the `cut` nodes bounded again
    (all of its neurons; nodes elsewhere, e.g. a parallel branch, keep theirs), in graph order so
    each sweep sees the refined intervals before it; and [n] bool: children whose region is empty
    (a refined interval came out with lower > upper, by more than rounding: no input of the
    parent's region has its cut neuron in that half)."""
    graph = problem.graph
    out = dict(kids.bounds)
    batch = len(kids)
    empty = torch.zeros(batch, dtype=torch.bool, device=kids.pair.device)
    _relu_outputs(problem, out, cut, empty)
    bounds = problem.bounds_of(kids)
    bounds.update(out)
    behind = downstream(graph, cut)
    # Rows per sweep sized to this process's part of the device: every neuron of a wide node for
    # a whole batch of children at once asked a shared H100 for up to 295 GiB (ml4acopf 118-bus).
    opts = CrownOptions(skip_stable=not lockstep,
                        max_rows=agreed_max_rows(graph, batch, kids.pair.device, problem.layout))
    for name in (n.name for n in graph.nodes if n.name in behind and n.name in out):
        if graph.affine_from_input(name):
            continue
        lo, up = out[name]
        rows = torch.arange(math.prod(lo.shape[1:]), device=lo.device)
        with torch.no_grad():
            new_lo, new_up = best_of_shifts(graph, name, lambda: node_bound_rows(
                graph, name, rows, bounds, problem.layout, opts, batch))
        new_lo, new_up = new_lo.reshape(lo.shape), new_up.reshape(up.shape)
        lo, up = torch.maximum(lo, new_lo), torch.minimum(up, new_up)
        tol = EMPTY_TOL * (1 + torch.maximum(lo.abs(), up.abs()))
        empty |= (lo > up + tol).flatten(1).any(1)
        # Crossed by rounding only (or in an empty region): keep the relaxations well defined.
        out[name] = bounds[name] = (torch.minimum(lo, up), torch.maximum(lo, up))
    return out, empty
