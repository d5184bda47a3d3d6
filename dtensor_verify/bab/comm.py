"""How branch-and-bound workers agree: one worker per process, or several over the `dp` mesh dim.

A *worker* owns a queue of open domains. `LocalComm` is the one-worker case. `MeshComm` (in
`mesh_comm.py`) spreads workers over ranks. Both answer the solver's two questions each round:
`sync` (everyone's counts, worst margin and stop flags, reduced) and `rebalance` (move open
domains from full queues to empty ones).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class SyncState:
    open: int                 # open domains over all workers
    worst_margin: float       # smallest margin of an open domain anywhere (inf when none)
    found: bool               # a worker confirmed a counterexample
    exhausted: int            # open domains given up (nothing left to split), all workers
    visited: int              # domains bounded, all workers
    most_open: int            # the largest queue of one worker
    time_up: bool = False     # some worker's clock ran out

    def too_many(self, limit: int) -> bool:
        return self.most_open > limit


class LocalComm:
    """A single worker: nothing to agree on."""
    owns_roots = True
    is_leader = True
    workers = 1

    def sync(self, n_open: int, worst_margin: float, found: bool, exhausted: int, visited: int,
             time_up: bool) -> SyncState:
        return SyncState(n_open, worst_margin if n_open else math.inf, found, exhausted, visited, n_open, time_up)

    def rebalance(self, store, batch: int) -> None:
        return None

    def agree_min(self, value: int) -> int:
        """The smallest of every worker's `value` (here: ours)."""
        return value

    def share_counterexample(self, found_here):
        """The counterexample found on some worker, on every worker (here: the one we have)."""
        return found_here or (None, None)


def comm_for(layout):
    """The workers' agreement for this layout: one worker unless the model was placed on several
    ranks (a shard group of more than one, or a `dp` mesh dim)."""
    if getattr(layout, "world_size", 1) == 1 and getattr(layout, "dp_mesh", None) is None:
        return LocalComm()
    from .mesh_comm import MeshComm
    return MeshComm(layout)
