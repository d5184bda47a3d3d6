"""How branch-and-bound workers agree: one worker per process, or several over the `dp` mesh dim.

A *worker* owns a queue of open domains. `LocalComm` is the one-worker case. `MeshComm` (in
`mesh_comm.py`) spreads workers over ranks. Both answer the solver's three questions each round:
`sync` (everyone's counts, worst margin and stop flags, reduced), `rebalance` (move open
domains from full queues to empty ones) and `balance` (spread the round's children evenly).
"""
from __future__ import annotations

import math

from .sync_state import SyncState


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

    def balance(self, kids, codec=None):
        """The round's children spread over the workers (here: all ours)."""
        return kids

    def agree_min(self, value: int) -> int:
        """The smallest of every worker's `value` (here: ours)."""
        return value

    def share_counterexample(self, found_here):
        """The counterexample found on some worker, on every worker (here: the one we have)."""
        return found_here or (None, None)


def comm_for(layout):
    """The workers' agreement for this layout: one worker unless its topology has several ranks
    (a shard group of more than one, or a `dp` mesh dim)."""
    if layout.topology.world == 1:
        return LocalComm()
    from .mesh_comm import MeshComm       # torch.distributed only when there are ranks
    return MeshComm(layout)


__all__ = ["LocalComm", "SyncState", "comm_for"]
