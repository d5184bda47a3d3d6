"""What stays fixed while branch and bound's domains come and go, and what it reports."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..graph import BoundGraph
from ..layout import Layout
from ..margin import margin


@dataclass
class BabProblem:
    """The network, its layout and the property."""
    graph: BoundGraph
    layout: Layout
    forward: Callable[[torch.Tensor], torch.Tensor]   # x [m, *S] -> y [m, n_out] (under its layout)
    C: torch.Tensor                     # [P, K, n_out] rows of each (region, disjunct) pair (padded)
    d: torch.Tensor                     # [P, K]
    row_mask: torch.Tensor              # [P, K] real rows
    box_lower: torch.Tensor             # [P, *S] input box of each pair
    box_upper: torch.Tensor

    def __post_init__(self):
        nonlinear = [n for n in self.graph.nodes if n.op is not None and n.op.needs_input_bounds]
        # ReLUs (split by sign, with beta) and the other nonlinear ops (sigmoid, sin, products, ...)
        self.relus = [n.name for n in nonlinear if getattr(n.op, "splittable", False)]
        self.pre_of = {r: self.graph[r].inputs[0] for r in self.relus}
        self.general_ops = [n.name for n in nonlinear if not getattr(n.op, "splittable", False)]
        # General splits cut the interval of a neuron of one of these nodes: the inputs of the
        # general ops (both operands of a product), in graph order (bab/general_split.py).
        feeds = {i for name in self.general_ops for i in self.graph[name].inputs}
        self.general = [n for n in self.graph.preactivation_nodes() if n in feeds and n != self.graph.input_name]
        # The elementwise op that carries each general node's split constraints (beta): its first
        # consumer with a scalar relaxation (products carry none: their nodes are split without).
        self.beta_of = {}
        for name in self.general:
            ops = [c for c in self.graph.consumers[name] if c in self.general_ops
                   and hasattr(self.graph[c].op, "fn") and len(self.graph[c].inputs) == 1]
            if ops:
                self.beta_of[name] = ops[0]
        # Nodes whose lower A-matrix branching heuristics read (BetaResult.lA).
        self.scored = set(self.pre_of) | set(self.general_ops) | {self.graph.input_name}

    def bounds_of(self, domains) -> dict:
        bounds = dict(domains.bounds)
        bounds[self.graph.input_name] = self.box_of(domains)
        return bounds

    def box_of(self, domains) -> tuple:
        """Each domain's input box: its own sub-box (input splitting) or its pair's."""
        if domains.box is not None:
            return domains.box
        return self.box_lower[domains.pair], self.box_upper[domains.pair]

    def margins(self, lower: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """[n]: the best row's `lower - d` of each domain (proved when > 0)."""
        return margin(lower, self.d[pair], self.row_mask[pair])


@dataclass
class BabStats:
    """One worker's counts (domains bounded, proved, ...) and the agreed state of the last sync."""
    t0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)     # this process's CPU seconds at the start
    rounds: int = 0
    bounded: int = 0                   # children bounded (domains visited)
    proved: int = 0                    # children proved
    max_depth: int = 0
    batch_sizes: list = field(default_factory=list)
    widths: dict = field(default_factory=dict)     # split width (neurons per parent) -> rounds (wide.py)
    wide_pruned: int = 0               # children a wide round's cheap bound proved between levels (counted
                                       # in bounded and proved too)
    # sync: the workers' per-round meeting (comm.sync, rebalancing), waiting for the slowest included
    phases: dict = field(default_factory=lambda: {"branching": 0.0, "bounding": 0.0, "attack": 0.0,
                                                  "bookkeeping": 0.0, "sync": 0.0})
    iterations: int = 0
    global_margin: float = -math.inf
    visited_all: int = 0               # domains bounded by all workers (from the last sync)
    memory_retries: int = 0            # rounds redone with half the batch after running out of memory
    rows: tuple | None = None          # (rows bounded, of the open disjuncts' rows) when focus_rows dropped some
    first_batch: int = 0               # parents per round per worker at the start (from memory) ...
    batch_grown: int = 0               # ... and rounds that raised it from their measured bytes
    # Filled in when the search ends:
    open_domains: int = 0
    exhausted: int = 0                 # open domains with no neuron left to split
    batch_per_worker: int = 0
    open_domain_limit: int = 0
    spilled: int = 0                   # open domains in host memory at the end (a GPU's store) ...
    spills: int = 0                    # ... chunks moved there, and brought back
    refills: int = 0
    workers: int = 1
    reason: str | None = None          # why the search stopped short of a verdict
    split: str = "relu"                # the kind of split: 'relu' | 'input'
    ended: float | None = None         # perf_counter when the search ended
    cpu_ended: float | None = None     # process_time when the search ended
    exact_lp: dict | None = None       # leaf domains decided by the exact LP (bab/exact.py)

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.perf_counter()) - self.t0

    @property
    def cpu_seconds(self) -> float:
        """This process's CPU seconds in the search (all its threads): on a loaded machine, where
        ranks wait for cores, the work a rank did (`seconds` counts the waiting too)."""
        return (self.cpu_ended if self.cpu_ended is not None else time.process_time()) - self.cpu0

    def as_dict(self) -> dict:
        """The JSON form (`VerifyResult.bounds['bab']`)."""
        seconds = self.seconds
        out = {"rounds": self.rounds, "domains_visited": self.bounded, "domains_proved": self.proved,
               "open_domains": self.open_domains, "max_depth": self.max_depth,
               "batch_size": max(self.batch_sizes) if self.batch_sizes else 0,
               "beta_iterations": self.iterations, "seconds": seconds, "cpu_seconds": self.cpu_seconds,
               "domains_per_second": self.bounded / seconds if seconds > 0 else 0.0,
               "phases": dict(self.phases), "global_margin": self.global_margin,
               "domains_visited_all_workers": self.visited_all, "memory_retries": self.memory_retries,
               "exhausted_domains": self.exhausted, "batch_per_worker": self.batch_per_worker,
               "first_batch": self.first_batch, "batch_grown": self.batch_grown,
               "rows_bounded": None if self.rows is None else {"kept": self.rows[0], "of": self.rows[1]},
               "open_domain_limit": self.open_domain_limit, "spilled": self.spilled, "spills": self.spills,
               "refills": self.refills, "workers": self.workers, "split": self.split,
               "split_widths": {str(w): n for w, n in sorted(self.widths.items())},
               "max_split_width": max(self.widths, default=1), "wide_pruned": self.wide_pruned}
        if self.reason:
            out["reason"] = self.reason
        if self.exact_lp is not None:
            out["exact_lp"] = self.exact_lp
        return out


@dataclass
class BabResult:
    status: str                          # 'proved' | 'sat' | 'timeout' | 'unknown'
    stats: BabStats
    counterexample: object = None        # what the confirm function returned on 'sat' (this worker)


class PhaseTimer:
    """Adds the seconds of a `with` block to one phase of the stats."""

    def __init__(self, stats: BabStats, phase: str):
        self.stats, self.phase = stats, phase

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.stats.phases[self.phase] += time.perf_counter() - self.t
