"""Intermediate bounds after general splits: the layers behind a cut interval, bounded again.

A general split narrows one neuron's interval; the op it feeds re-derives its relaxation from
that, but the nodes behind it keep their parent's intervals unless they are bounded again. On
the smooth networks of the tests that is what stops branch and bound from converging: a cut in
the first layer never tightens the second layer's relaxations. So the children of general splits
get a CROWN sweep for every carried pre-activation node after the earliest split node, with the
children's own (narrowed) intervals upstream, each intersected with what the child inherited.

Sound: every interval used is valid on the child's region (inherited ones hold on the parent's
region, which contains it; the cut one holds there by definition), so every CROWN bound computed
from them holds on the child's region too; the intersection of two valid intervals is valid.
"""
from __future__ import annotations

import math

import torch

from ..methods.crown import CrownOptions, node_bound_rows
from ..ops.softmax_sum import best_of_shifts
from .general_split import is_general, node_of


def first_split_node(problem, decision: torch.Tensor | None) -> int | None:
    """The graph position of the earliest node cut by these decisions, or None (no general split);
    with no decisions, that of the first node a general split may cut."""
    position = {n.name: i for i, n in enumerate(problem.graph.nodes)}
    if decision is None:
        return min(position[name] for name in problem.general) if problem.general else None
    codes = decision[:, 0]
    general = codes[is_general(codes)]
    if general.numel() == 0:
        return None
    return min(position[problem.general[int(j)]] for j in node_of(general).unique().tolist())


EMPTY_TOL = 1e-5         # lower above upper by more than this (relative) marks a region empty


def refresh_children(problem, kids, decision: torch.Tensor, lockstep: bool) -> None:
    """Bound again, in place, the layers behind the general splits that made `kids` from parents
    with these decisions; children whose region came out empty get the lower bound +inf (no input
    lies there: proved). Ranks in lockstep take the same sweeps whatever their domains: from the
    first node a general split may cut."""
    start = first_split_node(problem, None if lockstep else decision)
    if start is None:
        return
    kids.bounds, empty = refine_after(problem, kids, start, lockstep)
    kids.lower = torch.where(empty.unsqueeze(1), torch.full_like(kids.lower, torch.inf), kids.lower)


def refine_after(problem, kids, start: int, lockstep: bool) -> tuple[dict, torch.Tensor]:
    """The children's bounds, with every carried node after graph position `start` bounded again
    (all of its neurons), in graph order so each sweep sees the refined intervals before it; and
    [n] bool: children whose region is empty (a refined interval came out with lower > upper, by
    more than rounding: no input of the parent's region has its cut neuron in that half)."""
    graph = problem.graph
    bounds = problem.bounds_of(kids)
    out = dict(kids.bounds)
    opts = CrownOptions(skip_stable=not lockstep)
    batch = len(kids)
    empty = torch.zeros(batch, dtype=torch.bool, device=kids.pair.device)
    for i, node in enumerate(graph.nodes):
        name = node.name
        if i <= start or name not in out or graph.affine_from_input(name):
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
