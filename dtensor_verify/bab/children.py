"""A round's children: made from the parents (`children_of`), then, over several dp workers, spread
evenly before they are bounded (`shares_children`; `MeshComm.balance`). Functions of the solver, as
`exact_hooks.py`'s are: they read its problem, options and stats."""
from __future__ import annotations

from . import input_bab
from .domains import NO_DECISION, Domains, split
from .general_refresh import refresh_children
from .problem import PhaseTimer
from .split_kinds import needs_refresh
from .wide import split_wide


def shares_children(solver) -> bool:
    """Whether each round's children are spread over the workers (`comm.balance`): then every
    worker takes part in every round, with or without parents of its own."""
    return solver.comm.workers > 1 and solver.opts.balance_children


def children_of(solver, parents: Domains) -> Domains:
    """The round's children of `parents`: one split each, or a wide round's levels (the children a
    cheap bound proves between levels taken out, counted as bounded and proved), with their
    intermediate bounds made for their region (input and general splits: before the children can
    move to another worker, while each still sits next to its parent's decision)."""
    if len(parents) == 0 and not solver.lockstep:
        return parents          # (the empty template: a worker that only takes others' children)
    stats, p = solver.stats, solver.problem
    stats.rounds += 1
    # Only a domain stored after the clock ran out lacks a decision, and the run stops first.
    assert bool((parents.decision[:, 0] != NO_DECISION).all()), "a domain without a branching decision"
    if solver.width > 1:
        kids, _, pruned = split_wide(parents, solver.width, p.relus, p.pre_of, solver._proved_cheaply)
        stats.bounded += pruned
        stats.proved += pruned
        stats.wide_pruned += pruned
    else:
        kids = split(parents, parents.decision, p.relus, p.pre_of, p.general, p.beta_of)
    stats.widths[solver.width] = stats.widths.get(solver.width, 0) + 1
    if solver.mode == "input" and solver.opts.input_fill:
        kids = input_bab.fill_batch(kids, parents.decision, solver._room or 2 * solver.batch, p)
    with PhaseTimer(stats, "bounding"):
        if solver.mode == "input" or bool(needs_refresh(parents.decision).any()):
            kids.bounds = input_bab.refreshed(p, kids, solver.lockstep)
        if p.general:           # the layers behind general splits, bounded again
            refresh_children(p, kids, parents.decision, solver.lockstep)
    return kids
