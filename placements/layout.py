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


class PlacedLayout(Layout):
    # An attack evaluates the network thousands of times; gathering each layer per call is then
    # mostly collective latency. Up to this many bytes of such weights (the whole model, per
    # rank), `network_function` gathers them once for the attack instead; larger models keep
    # gathering (or streaming) layer by layer, so an attack never holds more than a bound step.
    GATHER_ONCE_BYTES = 256 * 2**20

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
        self.held = frozenset()              # layers gathered for a whole attack
        self._gather_orders = {}

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
        return self._gather_orders[key]

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

    @contextmanager
    def network_function(self):
        layers = [n for n in self.graph.layers() if self.style(n).gathers_at_rest]
        full_bytes = sum(p.numel() * p.element_size() for n in layers for p in n.op.module.parameters())
        if self.held or not layers or full_bytes > self.GATHER_ONCE_BYTES:
            yield
            return
        with tag("weights"):
            for n in layers:                      # the same order on every rank: collectives
                self.style(n).gather(n)
        self.held = frozenset(n.name for n in layers)
        try:
            yield
        finally:
            self.held = frozenset()
            for n in layers:
                self.style(n).release(n)

    @contextmanager
    def domain_batches(self):
        # Branch and bound gives each rank its own domains (or, with tp, the same ones): the
        # rows of a bound stay whole on the rank that bounds them.
        view = copy.copy(self)
        view.for_domains = True
        yield view

    @property
    def splits_domains(self) -> bool:
        return not any(s.shards_neurons for s in self.layer_styles.values())
