"""`fsdp` (and `fsdp-prefetch`): weights Shard(0) at rest via `fully_shard`, gathered around each
step that uses them (`unshard()` / `reshard()`).

Bitwise identical to one process at the same thread count: the gathered weight is the whole
weight and the op runs on it unchanged. With `prefetch`, a step inside a sweep starts the
all-gather of the layer the sweep gathers next (`unshard(async_op=True)`) so it overlaps this
step's compute; one more gathered layer per rank. Every rank runs the same sweeps over the same
graph, so the collectives are issued in the same order.

A layer the layout holds for a whole search (`placements/hold.py`: an optimisation loop, branch
and bound, an attack; within a memory budget) is used as it is: no gather, no regather hooks.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from dtensor_verify.layout import local_weights
from dtensor_verify.memory import tag, track_existing

from .. import hold
from ..regather import RegatherSavedWeights
from .base import PlacementStyle


class FsdpStyle(PlacementStyle):
    name = "fsdp"
    summary = ("weights Shard(0) at rest via fully_shard, unshard()/reshard() around each bound step; "
               "bitwise identical to one process at the same thread count (a one-process run with more "
               "threads than each rank sums in another order)")
    gathers_at_rest = True

    def __init__(self, prefetch: bool = False, name: str | None = None, summary: str | None = None):
        self.prefetch = prefetch
        self.name = name or self.name
        self.summary = summary or self.summary

    def shard(self, module, mesh) -> str:
        from torch.distributed.fsdp import fully_shard

        fully_shard(module, mesh=mesh, reshard_after_forward=True)
        local = module.weight.to_local().shape
        return f"fully_shard: weight Shard(0), local {'x'.join(map(str, local))}"

    def gathers_in_step(self, node) -> bool:
        return True

    def gather(self, node) -> None:
        node.op.module.unshard()

    def release(self, node) -> None:
        node.op.module.reshard()

    @contextmanager
    def weights(self, node, ctx, sweep=None):
        if node.name in ctx.held:                 # gathered for a whole search (placements/hold.py)
            yield local_weights(node.op)
            return
        module = node.op.module
        handle = sweep.prefetched.pop(node.name, None) if sweep is not None else None
        with tag("weights"):
            if handle is not None:
                handle.wait()
            else:
                module.unshard()
                hold.count("step")
        for p in module.parameters(recurse=False):
            track_existing(p, "weights")
        if sweep is not None and self.prefetch:
            _prefetch_after(node, ctx, sweep)
        try:
            # alpha-CROWN's autograd saves the weights: re-gather them when its backward needs them.
            hooks = RegatherSavedWeights(module, lambda: node.name in ctx.held)
            with hooks if torch.is_grad_enabled() else nullcontext():
                yield local_weights(node.op)
        finally:
            module.reshard()


def _prefetch_after(node, ctx, sweep) -> None:
    """Start the all-gather of the layer `sweep` gathers after `node` (its order lists only
    layers whose style gathers in the step: fully_shard modules)."""
    order = sweep.gather_order
    if node.name not in order:
        return
    i = order.index(node.name) + 1
    if i == len(order) or order[i] in sweep.prefetched:
        return
    with tag("weights"):
        sweep.prefetched[order[i]] = ctx.graph[order[i]].op.module.unshard(async_op=True)
    hold.count("prefetch")
