"""Growing branch and bound's batch from what its rounds measured.

The first batch comes from an estimate of a child's bytes (`budget.bytes_per_domain`), which must
hold for every network and so is pessimistic: on TinyYOLO it says 94 MiB a child where a measured
beta-CROWN call takes 52 MiB (`scripts/bench_bab_domain_bytes.py`), and with several processes on
one GPU the estimate left yolo's rounds with a handful of parents. Here each full round on a CUDA
device measures its peak bytes over what was allocated when it began (children, their bounds,
the branching trials, autograd), and the next batch is what the headroom left to this process
holds at that many bytes a child, at most twice the last one and never above a batch that ran
out of memory. A CPU's batch is about time, not memory (options.input_cpu_batch); where a round
that runs out of memory is an error rather than a retry (lockstep ranks, dp workers sharing their
children) the batch stays; a batch the user fixed is kept.

A round's peak has two parts, measured apart: bounding all its children, and choosing the open
children's next splits (the branching heuristic bounds trial splits of each). A round where most
children were proved measures little branching, so the next one, where they are not, may
overshoot: the suspected cause (not yet confirmed on a GPU) of processes at 1.3-2.6x their share
in branch and bound on TinyYOLO (a shared H100, session 10, out of memory). The estimate is
therefore a child's bounding bytes or, if larger, its part of what was held when branching began
plus branching's bytes per *open* child, as if every child were open.

Soundness: only the number of parents a round takes changes; an overshoot is the solver's
out-of-memory retry (the parents go back to the queue), never a lost domain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..device_share import free_memory_bytes


def _peak_since_reset(device) -> tuple[int, int]:
    return torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)


@dataclass
class BatchGrowth:
    """`start()` before a round, `after(batch, children)` once it ended: the next batch."""
    device: torch.device
    cap: int                          # options' max_batch
    fraction: float = 0.8             # of the headroom the next round's measured need may take
    peak: Callable = _peak_since_reset        # (device) -> (peak allocated, allocated now)
    # (device, held) -> bytes a round may add to `held` (allocated when it began): free now with
    # this process's cached blocks, within its share of the device less `held`
    headroom: Callable = free_memory_bytes
    reset: Callable = torch.cuda.reset_peak_memory_stats    # (device) -> None: peak counter back to now
    ceiling: int | None = None        # parents: below a batch that ran out of memory
    _base: int = 0
    grown: int = 0                    # rounds that raised the batch
    _active: bool = False             # between start() and after()
    _children: int = 0
    _per_bound: float = 0.0           # bytes a child took while the round's children were bounded
    _per_branch: float = 0.0          # ... and at branching, as if every child were open
    _at_branch: int = 0

    def start(self):
        self.reset(self.device)
        self._base = self.peak(self.device)[1]
        self._active, self._children, self._per_bound, self._per_branch = True, 0, 0.0, 0.0

    def bounded(self, children: int):
        """The round's children are bounded: their peak, per child."""
        if self._active and children > 0:
            self._children = children
            self._per_bound = max(0, self.peak(self.device)[0] - self._base) / children

    def branching(self):
        """Branching begins: its peak is measured from here."""
        if self._active:
            self.reset(self.device)
            self._at_branch = self.peak(self.device)[1]

    def branched(self, open_children: int):
        """Branching ended on `open_children`: per child as if all were open."""
        if self._active and open_children > 0 and self._children > 0:
            extra = max(0, self.peak(self.device)[0] - self._at_branch) / open_children
            held = max(0, self._at_branch - self._base) / self._children
            self._per_branch = held + extra

    def out_of_memory(self, batch_after: int):
        """The round ran out of memory; the solver retries with `batch_after` parents."""
        self.ceiling = batch_after if self.ceiling is None else min(self.ceiling, batch_after)

    def after(self, batch: int, children: int) -> int:
        """The batch for the next round. Only a full round (its 2 x `batch` children, or nearly:
        wide rounds' pruned children count) says what a full one needs."""
        self._active = False
        if children < 1.8 * batch:
            return batch
        used = max(1, self.peak(self.device)[0] - self._base)
        per_child = max(used / children, self._per_bound, self._per_branch)
        fits = int(self.headroom(self.device, self._base) * self.fraction / per_child) // 2
        limit = min(self.cap, 2 * batch, self.ceiling if self.ceiling is not None else self.cap)
        new = max(batch, min(fits, limit))
        if new > batch:
            self.grown += 1
        return new


def growth_for(opts, device, no_retry: bool, mode: str) -> BatchGrowth | None:
    """The solver's growth rule, or None where the batch stays as it starts: input splitting sizes
    its rounds by time as well (`input_bab.room_this_round`, from a larger first batch), and where
    an out-of-memory round cannot be retried with fewer parents (`no_retry`: lockstep ranks, or dp
    workers that take each other's children, `children.shares_children`) a batch near the memory's
    edge would end the run as an error."""
    if device.type != "cuda" or no_retry or mode == "input" or opts.batch_size is not None \
            or not opts.grow_batch:
        return None
    return BatchGrowth(device, opts.max_batch)
