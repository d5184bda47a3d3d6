"""Counters and phase timers of one branch-and-bound worker (the `stats` of its result)."""
from __future__ import annotations

import math
import time


class _Stats:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.rounds = 0
        self.bounded = 0           # children bounded (domains visited)
        self.proved = 0            # children proved
        self.max_depth = 0
        self.batch_sizes: list[int] = []
        self.phases = {"branching": 0.0, "bounding": 0.0, "attack": 0.0, "bookkeeping": 0.0}
        self.iterations = 0
        self.global_margin = -math.inf
        self.visited_all = 0       # domains bounded by all workers (from the last sync)
        self.memory_retries = 0    # rounds redone with half the batch after running out of memory

    def as_dict(self, store_len: int) -> dict:
        seconds = time.perf_counter() - self.t0
        return {"rounds": self.rounds, "domains_visited": self.bounded, "domains_proved": self.proved,
                "open_domains": store_len, "max_depth": self.max_depth,
                "batch_size": max(self.batch_sizes) if self.batch_sizes else 0,
                "beta_iterations": self.iterations, "seconds": seconds,
                "domains_per_second": self.bounded / seconds if seconds > 0 else 0.0,
                "phases": dict(self.phases), "global_margin": self.global_margin,
                "domains_visited_all_workers": self.visited_all, "memory_retries": self.memory_retries}


class _Timer:
    def __init__(self, stats, phase):
        self.stats, self.phase = stats, phase

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.stats.phases[self.phase] += time.perf_counter() - self.t
