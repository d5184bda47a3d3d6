"""The placement style protocol (`torch.distributed.tensor.parallel.ParallelStyle`'s idiom).

A style is one policy for one layer, stateless and shared: every call gets the placed layout
(`ctx`: mesh, rank, graph, held layers) and, inside a backward sweep, the `sweep` value
(`placements.layout.PlacedSweep`: whether its rows are split over ranks, which layers it
gathers and in what order, pending prefetches). A style answers four things:

* which layers it accepts (`refuse`, with its own message);
* how a layer is kept at rest (`shard`, at set-up: the only place a module is written);
* how the layer's weights are made usable for one step and released after (`weights`, a context
  yielding the op's `StepWeights`: the op receives the parameters as an argument);
* how A-matrices, intermediate bounds and slopes flowing through the nodes it lays out are
  placed (`place_A`, `place_bounds`, `place_alpha`, `alpha_param`).

This base class is the replicated answer to all of them; a style overrides what it changes.
Adding a style is one module in this folder and one line in `styles/__init__.py`'s registry.
"""
from __future__ import annotations

from contextlib import nullcontext

from torch.distributed.tensor import DTensor

from dtensor_verify.layout import local_weights


class PlacementStyle:
    name = "replicate"
    summary = "weights and A-matrices full on every rank (reference)"
    # A-matrices, bounds and slopes sharded on the neuron dim through the layers of this style
    # (and the elementwise ops they feed): the layout gives those nodes to this style.
    shards_neurons = False
    # The rows of a bound started at (or after) this style's layers are split over ranks.
    splits_rows = False
    # The layer's weights are sharded at rest and `gather` / `release` can hold them whole.
    gathers_at_rest = False

    def __repr__(self):
        return f"<style {self.name}>"

    # -- which layers ------------------------------------------------------------------------
    def refuse(self, node, shard_size: int) -> str | None:
        """Why this style cannot place `node`'s layer over `shard_size` ranks, or None."""
        return None

    # -- at rest (set-up) ---------------------------------------------------------------------
    def shard(self, module, mesh) -> str:
        """Lay `module`'s parameters out at rest on `mesh`; returns a line for the report."""
        return "replicated"

    # -- one step ----------------------------------------------------------------------------
    def weights(self, node, ctx, sweep=None):
        """Context yielding `node`'s StepWeights for one step (inside `sweep`, or outside any)."""
        return nullcontext(local_weights(node.op))

    def gathers_in_step(self, node) -> bool:
        """Does a step of `node` gather its whole weight with a collective (prefetch order)?"""
        return False

    def gather(self, node) -> None:
        """Hold `node`'s weights whole until `release` (an attack's many forward passes)."""

    def release(self, node) -> None:
        """Undo `gather`."""

    # -- tensors through the nodes this style lays out ----------------------------------------
    def place_A(self, A, node, sweep):
        return A.full_tensor() if isinstance(A, DTensor) else A

    def place_bounds(self, bounds, node, sweep):
        return bounds

    def place_alpha(self, alpha, relu_node, sweep):
        return alpha

    def alpha_param(self, alpha, relu_node, ctx, row_split: bool):
        """The part of a full slope tensor this rank stores (`row_split`: the sweep's rows are
        already this rank's slice)."""
        return alpha
