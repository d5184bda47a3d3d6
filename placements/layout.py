"""The placed layout: answers the engine's protocols (`dtensor_verify/layout.py`) by asking each
node's placement style.

It holds only what the graph pass decided (which style places each layer, which style lays out
the tensors through each node, which style decides the row split of a bound started at each
node) and the topology. What belongs to one backward sweep (its row split, the layers it
gathers in order, pending prefetches) is a `PlacedSweep` value made by `sweep()` and passed
along by the engine; nothing about a sweep is kept here.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Partial, Shard

from dtensor_verify.layout import Layout, RowSplit, Sweep
from dtensor_verify.memory import tag

from . import hold
from .rowjoin import chunk_bounds
from .styles import STYLES, PlacementStyle

REPLICATE: PlacementStyle = STYLES["replicate"]


@dataclass(eq=False)
class PlacedSweep(Sweep):
    """One backward sweep: an explicit value, made by `PlacedLayout.sweep`."""
    ctx: "PlacedLayout"
    start: str
    row_split: bool                          # each rank bounds a slice of the rows (spec)
    gather_order: tuple[str, ...] = ()       # layers this sweep gathers, in the order it visits them
    prefetched: dict = field(default_factory=dict)   # layer -> pending async unshard

    def weights(self, node):
        return self.ctx.style(node).weights(node, self.ctx, self)

    def place_A(self, A, node):
        return self.ctx.zone(node).place_A(A, node, self)

    def place_bounds(self, bounds, node):
        return self.ctx.zone(node).place_bounds(bounds, node, self)

    def place_alpha(self, alpha, relu_node):
        return self.ctx.zone(relu_node).place_alpha(alpha, relu_node, self)

    def close(self, finished: bool):
        """Wait for and release the prefetches nobody used (skipped while an error unwinds:
        do not wait on collectives then)."""
        prefetched, self.prefetched = self.prefetched, {}
        if finished:
            for name, handle in prefetched.items():
                handle.wait()
                self.ctx.graph[name].op.module.reshard()


@dataclass(frozen=True)
class ShardedRows(RowSplit):
    """Rows split over the shard group like DTensor's Shard(1)."""
    n: int = 0
    mesh: object = None

    def gather(self, t, differentiable: bool = False):
        shape = torch.Size((t.shape[0], self.n))
        dt = DTensor.from_local(t.contiguous(), self.mesh, [Shard(1)], run_check=False, shape=shape,
                                stride=(self.n, 1))
        # Each rank's later use of the gathered rows differs (its own slice of the next bound),
        # so the gradient arriving here is a partial sum over ranks.
        return dt.full_tensor(grad_placements=[Partial()] if differentiable else None)


class _Holding:
    """What the layout holds gathered now, shared by its views (`domain_batches` copies the
    layout: a layer held for the search must read as held through every copy)."""

    def __init__(self):
        self.names = frozenset()
        self.bytes = 0
        self.budget = None               # the shard group's budget, agreed at the first search
        self.choices = []                # HoldChoice of each outermost search (the JSON's stats)


class PlacedLayout(Layout):
    def __init__(self, graph, topology, layer_styles: dict, zone_styles: dict, row_styles: dict,
                 for_domains: bool = False):
        self.graph = graph
        self.topology = topology
        self.mesh = topology.shard_mesh
        self.world_size = topology.shard
        self.rank = topology.shard_rank
        self.device = topology.device
        self.layer_styles = layer_styles     # layer node -> style placing its weights
        self.zone_styles = zone_styles       # node -> style laying out A / bounds / slopes there
        self.row_styles = row_styles         # start node -> style deciding a bound's row split
        self.for_domains = for_domains       # branch and bound: rows of a bound are never split
        self._holding = _Holding()           # layers gathered for a whole search (placements/hold.py)
        self._gather_orders = {}

    @property
    def held(self) -> frozenset:
        """Layers gathered for the search running now: their steps use the whole weight as is."""
        return self._holding.names

    def style(self, node) -> PlacementStyle:
        return self.layer_styles.get(node.name, REPLICATE)

    def zone(self, node) -> PlacementStyle:
        return self.zone_styles.get(node.name, REPLICATE)

    # -- protocol ---------------------------------------------------------------------------
    def weights(self, node):
        return self.style(node).weights(node, self, None)

    def _splits_rows(self, start_name: str) -> bool:
        style = self.row_styles.get(start_name)
        return not self.for_domains and style is not None and style.splits_rows

    def gather_order(self, start_name: str) -> tuple[str, ...]:
        """The layers a sweep from `start_name` gathers, in the order it visits them (reverse
        topological over the start's ancestors: the backward sweep visits every one)."""
        key = (start_name, torch.is_grad_enabled())
        if key not in self._gather_orders:
            ancestors = self.graph.ancestors(start_name)
            self._gather_orders[key] = tuple(
                n.name for n in reversed(self.graph.nodes)
                if n.name in ancestors and n.name in self.layer_styles and self.style(n).gathers_in_step(n))
        held = self.held
        return tuple(n for n in self._gather_orders[key] if n not in held) if held else self._gather_orders[key]

    @contextmanager
    def sweep(self, start_name: str):
        sweep = PlacedSweep(self, start_name, self._splits_rows(start_name), self.gather_order(start_name))
        finished = False
        try:
            yield sweep
            finished = True
        finally:
            sweep.close(finished)

    def rows(self, start_name: str, n_rows: int) -> RowSplit:
        if not self._splits_rows(start_name):
            return RowSplit(slice(0, n_rows), n_rows)
        mine = slice(*chunk_bounds(n_rows, self.world_size, self.rank))
        return ShardedRows(mine, math.ceil(n_rows / self.world_size), n_rows, self.mesh)

    def alpha_param(self, alpha, relu_node, start_name):
        return self.zone(relu_node).alpha_param(alpha, relu_node, self, self._splits_rows(start_name))

    def local(self, t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.topology.shard_group)
        return bool(t.item())

    def smallest(self, n: int) -> int:
        t = torch.tensor([n], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.topology.shard_group)
        return int(t.item())

    # -- weights held for a search (placements/hold.py) ---------------------------------------
    @contextmanager
    def holding(self):
        """Hold the layers `hold.choose` picks (of those not held already) gathered for this
        context; yields the `HoldChoice`. Every rank of the shard group enters at the same point
        (the gathers are collectives, issued in graph order); the release is local."""
        state = self._holding
        sizes = [(n.name, hold.layer_bytes(n.op.module)) for n in self.graph.layers()
                 if n.name not in state.names and self.style(n).gathers_at_rest]
        if not sizes:                            # replicate / tp, or everything held already
            yield hold.choose(sizes, 0)
            return
        if state.budget is None:
            state.budget = self._agreed_budget()
        choice = hold.choose(sizes, state.budget - state.bytes)
        if not state.names:
            state.choices = [*state.choices[-7:], choice]
        outer, gathered = (state.names, state.bytes), []
        try:
            with tag("weights"):
                for name in choice.layers:
                    self.style(self.graph[name]).gather(self.graph[name])
                    gathered.append(name)
                    hold.count("hold")
            state.names, state.bytes = state.names | frozenset(choice.layers), state.bytes + choice.held_bytes
            yield choice
        finally:
            state.names, state.bytes = outer
            for name in gathered:
                self.style(self.graph[name]).release(self.graph[name])

    def _agreed_budget(self) -> int:
        budget = hold.hold_budget(self.device)
        if self.world_size > 1 and self.topology.shard_group is not None:
            t = torch.tensor([budget], dtype=torch.int64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.topology.shard_group)
            budget = int(t.item())
        return budget

    @contextmanager
    def search_weights(self):
        with self.holding():
            yield

    @contextmanager
    def network_function(self):
        # An attack evaluates the network thousands of times: each layer gathered per call would
        # be mostly collective latency.
        with self.holding():
            yield

    @contextmanager
    def domain_batches(self):
        # Branch and bound gives each rank its own domains (or, with tp, the same ones): the
        # rows of a bound stay whole on the rank that bounds them. Its weights are held for the
        # whole search where they fit the budget (every rank of the shard group starts it).
        view = copy.copy(self)
        view.for_domains = True
        with self.holding():
            yield view

    def hold_stats(self) -> dict:
        """Weight collectives of this rank so far and the searches' hold choices (JSON)."""
        return {**hold.gather_counts(), "searches": [c.as_dict() for c in self._holding.choices],
                "budget_bytes": self._holding.budget}

    @property
    def splits_domains(self) -> bool:
        return not any(s.shards_neurons for s in self.layer_styles.values())
