"""`spec`: weights as `fsdp` at rest; each rank bounds a slice of the rows (neurons / outputs) of
every bound started at its layers, slopes sharded the same way; no A-matrix communication.

Without autograd (IBP, CROWN, alpha-CROWN's CROWN start, the attack's last step) a layer whose op
`sums_over_weight_rows` is never gathered whole: its steps fetch the weight one rank's Shard(0)
rows at a time (broadcast from that rank) and sum (backward) or fill the output slice (IBP,
forward). With autograd the layer is gathered like fsdp (its regather hooks work on whole layers).
A layer held for a whole search (`placements/hold.py`) is used whole, never streamed: the same
weight, summed as one process sums it.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist

from dtensor_verify.layout import StepWeights
from dtensor_verify.memory import tag
from dtensor_verify.ops.patches import Patches

from .. import hold
from ..rowjoin import RowJoin, add_results, add_rows_into, chunk_bounds, n_rows_of, narrow_columns, row_pieces
from .fsdp import FsdpStyle


class SpecStyle(FsdpStyle):
    name = "spec"
    summary = ("weights as fsdp; each rank bounds a slice of the rows (neurons / outputs) of the bound, "
               "alphas sharded the same way; no A-matrix communication; IBP and CROWN steps stream the "
               "weight one rank's shard at a time")
    splits_rows = True

    def __init__(self):
        super().__init__(prefetch=False)

    def streams(self, node) -> bool:
        return not torch.is_grad_enabled() and node.op.caps.sums_over_weight_rows and rows_lead(node)

    def gathers_in_step(self, node) -> bool:
        return not self.streams(node)

    def weights(self, node, ctx, sweep=None):
        if node.name not in ctx.held and self.streams(node):
            return nullcontext(StreamedWeights(node, ctx))
        return super().weights(node, ctx, sweep)


def rows_lead(node) -> bool:
    """Whether the weight's Shard(0) rows are the node's first dim (what streaming slices: a
    Linear on [B, F], a conv's channels); a Linear over the last dim of tokens [B, T, F] (a ViT)
    is not, and is gathered like fsdp instead."""
    if isinstance(node.op.module, torch.nn.Linear):
        return len(node.shape) == 1
    return node.shape[0] == node.op.module.weight.shape[0]


def over_weight_shards(node, ctx, use) -> None:
    """For each rank k of the shard group in turn: `use(start, stop, params)` with rank k's
    Shard(0) rows of `node`'s parameters (broadcast from k; its own are used in place). The
    shard is dropped before the next one is fetched, so one shard besides the rank's own is
    resident at a time (a generator would keep the previous one alive in the caller's loop
    variable while fetching the next). The module is never written."""
    params = dict(node.op.module.named_parameters(recurse=False))
    n_rows = params["weight"].shape[0]
    group = ctx.topology.shard_group
    for k in range(ctx.world_size):
        start, stop = chunk_bounds(n_rows, ctx.world_size, k)
        if start == stop:
            continue
        shard = {}
        for name, p in params.items():
            if k == ctx.rank:
                t = p.to_local().detach().contiguous()
            else:
                with tag("weights"):
                    t = torch.empty((stop - start, *p.shape[1:]), dtype=p.dtype, device=ctx.device)
            # Outside the tag: the meter counts writes under "weights" as new memory (FSDP's
            # refills), and the owner's shard is already counted as resident.
            dist.broadcast(t, src=dist.get_global_rank(group, k), group=group)
            hold.count("broadcast")
            shard[name] = t
        use(start, stop, shard)
        del shard


class StreamedWeights(StepWeights):
    """A spec layer's rules run shard by shard (see the module docstring)."""

    def __init__(self, node, ctx):
        super().__init__(node.op, None)
        self.node = node
        self.ctx = ctx

    def ibp(self, intervals):
        return self._outputs_by_shard(lambda params: self.op.ibp(*intervals, params=params))

    def forward(self, inputs):
        out, = self._outputs_by_shard(lambda params: (self.op.forward(*inputs, params=params),))
        return out

    def rows(self, rows, batch):
        if not self.op.has_rows_rule():
            return None
        joined = RowJoin(len(rows), self.ctx.local)

        def use(start, stop, params):
            inside = ((rows >= start) & (rows < stop)).nonzero().flatten()
            joined.add(self.op.backward_rows(rows[inside] - start, batch, params=params), inside)

        over_weight_shards(self.node, self.ctx, use)
        return joined.result()

    # A shard's step after the first runs on this many pieces of the rows, each added into the
    # first shard's result in place: the step's temporary is a piece, not a whole A-matrix.
    ROW_PIECES = 8

    def backward(self, step, lA, uA):
        """The step as a sum over weight shards: shard k's rows of W against A's columns [start, stop)."""
        total = [None]

        def use(start, stop, params):
            part_lA = narrow_columns(lA, start, stop)
            part_uA = part_lA if uA is lA else narrow_columns(uA, start, stop)
            n_rows = n_rows_of(lA, uA)
            if total[0] is None or n_rows < 2 or isinstance(lA if lA is not None else uA, Patches):
                # (Patches: a window-sized step, whose temporaries are small already.)
                total[0] = add_results(total[0], step(part_lA, part_uA, params))
                return
            n_pieces = max(1, min(n_rows, self.ROW_PIECES))
            for r0, r1, piece_lA, piece_uA in row_pieces(part_lA, part_uA, n_rows, n_pieces):
                add_rows_into(total[0], step(piece_lA, piece_uA, params), r0, r1)

        over_weight_shards(self.node, self.ctx, use)
        return total[0]

    def _outputs_by_shard(self, rule):
        """Run `rule(params)` (a tuple of [B, k, ...] outputs for one shard's k output rows) per
        weight shard and join the slices along dim 1 into full [B, *node.shape] outputs."""
        full = []

        def use(start, stop, params):
            parts = rule(params)
            if not full:
                full.extend(p.new_empty((p.shape[0], *self.node.shape)) for p in parts)
            for whole, part in zip(full, parts):
                whole.narrow(1, start, stop - start).copy_(part)

        over_weight_shards(self.node, self.ctx, use)
        return tuple(full)
