"""Taking a round's parents from the open-domain store, with one retry on out of memory.

Worst first, or, with the queue over half its limit (`crowded`), the most promising (input
splitting: the deepest, `input_bab.pop_crowded`). Taking them copies the device's part of the
store, outside the bounding step that the solver retries on out of memory; on a GPU shared with
other processes that copy is what failed (TinyYOLO, session 10). `DomainStore._take` changes the
store only once its copies exist, so after an out-of-memory error the store is whole: the cached
blocks are freed and it is tried once more with half the parents (and the batch capped there).
Under lockstep ranks an error is raised as before (the ranks would fall out of step).
"""
from __future__ import annotations

from . import input_bab
from .budget import out_of_memory, release_cached_memory


def pop_parents(solver, k: int, crowded: bool):
    """(parents, margins) for this round, or (None, None) when the store is empty."""
    store = solver.store
    for attempt in range(2):
        try:
            if crowded and solver.mode == "input":
                store.refill(k)
                return input_bab.pop_crowded(store, k)
            return (store.pop_best if crowded else store.pop_worst)(k)
        except Exception as exc:
            if attempt or solver.lockstep or not out_of_memory(exc):
                raise
            release_cached_memory(solver.problem.d.device)
            k = max(1, k // 2)
            solver.batch = max(1, min(solver.batch, k))
            if solver.growth is not None:
                solver.growth.out_of_memory(solver.batch)
            solver.stats.memory_retries += 1
            solver.log(f"bab: out of memory taking the round's parents; batch now {solver.batch}")
