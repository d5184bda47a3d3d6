"""What every worker learns each round (see `comm.py`)."""
from __future__ import annotations

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
