"""Wide rounds: split a domain on several ReLU neurons at once when the batch has room to spare.

A round of branch and bound costs a fixed part (the optimiser's steps over the graph, branching,
settling, the workers' meeting) plus a part per child. While the open frontier (over all dp
workers) is far below what the workers' batches hold, the second worker's capacity (and one
worker's too, in the first rounds) sits idle and the number of rounds, hence the fixed part,
does not shrink. A wide round splits each parent on its `w` best neurons (the branching
heuristic's ranking, `branching.choose_ranked`) into the 2^w sign patterns, each child with
its `w` split constraints (beta-CROWN takes any number): the search descends `w` levels in one
round. Between levels, one cheap sound bound (no optimisation: the parent's slopes and multipliers,
one backward sweep) takes out the children it already proves, so they are not split again.

Soundness: the 2^w children of a parent are the parent with each sign pattern of `w` distinct
neurons, unstable in the parent (its bounds are only clamped at split neurons, so a neuron
unstable in the parent stays unstable in each child until it is split), so they cover the
parent exactly; a parent with fewer than `w` ranked neurons is split on those it has.

The width is a rule of capacity and frontier only (`width_for`), so one process gets wide rounds
too where its batch has room; `max_width` 1 turns them off.
"""
from __future__ import annotations

from typing import Callable

import torch

from .domains import NO_DECISION, Domains, split


def width_for(frontier: int, capacity: int, max_width: int) -> int:
    """Neurons to split each parent on this round: the largest w <= max_width whose children
    (frontier x 2^w, over all workers) fit in `capacity` (children per round, over all workers).
    At least 1 (a frontier above capacity is taken a batch at a time, as before)."""
    width = 1
    while width < max_width and frontier * 2 ** (width + 1) <= capacity:
        width += 1
    return width


def parents_for(batch: int, width: int) -> int:
    """Parents one worker takes in a round of this width: its 2 x batch children, shared out."""
    return max(1, (2 * batch) >> width)


def split_wide(parents: Domains, width: int, relus: list[str], pre_of: dict,
               prune: Callable[[Domains], torch.Tensor] | None = None) -> tuple[Domains, torch.Tensor, int]:
    """The children of each parent on its `decision` and its next `width - 1` ranked splits
    (`parents.more`), the parent index of each child, and how many `prune` took out. Every split
    is a ReLU split. `prune(kids) -> [m] bool`: children already proved by a cheap sound bound;
    they leave before the next level (their own children would be proved too). The same number
    of levels (and `prune` calls, collectives under lockstep) on every rank, whatever its domains."""
    n = len(parents)
    more = parents.more
    kids = split(parents, parents.decision, relus, pre_of)
    owner = torch.arange(n, device=parents.pair.device).repeat(2)
    pruned = 0
    for j in range(width - 1):
        if more is None or j >= more.shape[1]:
            break
        if prune is not None:
            keep = ~prune(kids)
            pruned += len(kids) - int(keep.sum())
            kids, owner = kids.index(keep), owner[keep]
        dec = more[owner, j]                                     # [m, 2]
        ok = dec[:, 0] >= 0
        halves = split(kids.index(ok), dec[ok], relus, pre_of)
        kids = Domains.cat([halves, kids.index(~ok)])
        owner = torch.cat([owner[ok], owner[ok], owner[~ok]])
    return kids, owner, pruned


def with_more(domains: Domains, extra: int) -> Domains:
    """`domains` carrying room for `extra` ranked splits after their decision (none yet)."""
    if extra <= 0:
        return domains
    n = len(domains)
    domains.more = torch.full((n, extra, 2), NO_DECISION, dtype=torch.long, device=domains.pair.device)
    return domains


def max_width_for(opts, problem, mode: str, branching: str) -> int:
    """The widest split of a run: `opts.split_width` on ReLU-only splitting by a ranking
    heuristic, else 1 (input and general splits keep one split per round)."""
    from .branching import RANKED

    if mode != "relu" or problem.general or branching not in RANKED:
        return 1
    return max(1, int(opts.split_width))
