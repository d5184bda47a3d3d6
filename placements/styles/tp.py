"""`tp`: tensor parallel on the neuron dim.

At rest a layer's weight rows (its output neurons) are DTensor Shard(0). Inside a backward
sweep whose rows are not split over ranks, A-matrices w.r.t. the layer's output (and through
the elementwise ops it feeds: the layout gives those nodes to this style) are Shard on the
neuron dim, intermediate bounds and slopes too; the step A Shard(-1) @ W Shard(0) gives a
Partial A-matrix that `place_A` reduce-scatters. Elsewhere (IBP, forward, row-split sweeps) the
step gets the full weight for a moment. Intermediate bounds are real CROWN bounds.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from dtensor_verify.layout import StepWeights
from dtensor_verify.memory import tag

from ..rowjoin import RowJoin, chunk_bounds, contiguous_stride, n_rows_of, row_pieces
from .base import PlacementStyle


class TpStyle(PlacementStyle):
    name = "tp"
    summary = ("weights Shard(0) on the neuron dim; A-matrices Shard on the neuron dim; matmul gives "
               "Partial, reduce-scattered by DTensor; intermediate bounds are real CROWN bounds")
    shards_neurons = True

    def refuse(self, node, shard_size: int) -> str | None:
        if not node.op.caps.neuron_rows:
            what = "convolutions yet" if (node.layer_type or "").lower().startswith("conv") else \
                f"{node.layer_type or node.op.kind} layers"
            return (f"policy '{self.name}' does not shard {what} (it shards a layer's output neurons "
                    f"by weight rows: Linear layers)")
        if len(node.shape) != 1:
            return f"policy '{self.name}' needs a Linear layer with a flat output (this one: {list(node.shape)})"
        if node.shape[0] == 1 and shard_size > 1:
            # DTensor cannot view away a sharded dim of size 1 (the pipeline's [B, K, 1] -> [B, K]).
            # Uneven shards are fine: 2 outputs on 4 ranks (1, 1, 0, 0) give the one-process verdicts.
            return f"policy '{self.name}' cannot shard a layer with one output neuron over {shard_size} ranks"
        return None

    def shard(self, module, mesh) -> str:
        for name, p in list(module.named_parameters(recurse=False)):      # set-up only
            dt = distribute_tensor(p.detach(), mesh, [Shard(0)])
            module._parameters[name] = torch.nn.Parameter(dt, requires_grad=False)
        local = module.weight.to_local().shape
        return f"tp: weight Shard(0) rows, local {'x'.join(map(str, local))}"

    @contextmanager
    def weights(self, node, ctx, sweep=None):
        params = {name: p.detach() for name, p in node.op.module.named_parameters(recurse=False)}
        if sweep is not None and not sweep.row_split:
            yield RowSlicedWeights(node.op, params, ctx)        # the DTensor shards themselves
            return
        with tag("weights"):
            full = StepWeights(node.op, {name: p.full_tensor() for name, p in params.items()})
        try:
            yield full
        finally:
            full.params = None          # released here, whoever still holds the StepWeights

    # -- tensors through the tp zone ----------------------------------------------------------
    def place_A(self, A, node, sweep):
        if sweep.row_split:
            return super().place_A(A, node, sweep)
        if isinstance(A, DTensor):
            return A.redistribute(sweep.ctx.mesh, [Shard(A.dim() - 1)])    # Partial -> reduce-scatter
        return shard_local(A, A.dim() - 1, sweep.ctx.mesh)

    def place_bounds(self, bounds, node, sweep):
        if bounds is None or sweep.row_split:
            return bounds
        return tuple(shard_local(b, b.dim() - 1, sweep.ctx.mesh) for b in bounds)

    def place_alpha(self, alpha, relu_node, sweep):
        if sweep.row_split:
            return alpha
        shape = torch.Size((*alpha.shape[:-1], relu_node.shape[-1]))
        return DTensor.from_local(alpha, sweep.ctx.mesh, [Shard(alpha.dim() - 1)], run_check=False, shape=shape,
                                  stride=contiguous_stride(shape))

    def alpha_param(self, alpha, relu_node, ctx, row_split: bool):
        # Keep only this rank's neurons (slopes, their grads and Adam state all 1/P).
        if row_split:
            return alpha
        start, stop = chunk_bounds(alpha.shape[-1], ctx.world_size, ctx.rank)
        return alpha[..., start:stop]


def shard_local(t: torch.Tensor, dim: int, mesh) -> DTensor:
    """This rank's chunk of a replicated tensor as a Shard(dim) DTensor: no communication
    forward; backward all-gathers the gradient, so every rank's copy gets the same grad."""
    replicated = DTensor.from_local(t, mesh, [Replicate()], run_check=False)
    return replicated.redistribute(mesh, [Shard(dim)])


class RowSlicedWeights(StepWeights):
    """DTensor weight shards inside a neuron-sharded sweep. The rule (A Shard(-1) @ W Shard(0))
    yields a full-size Partial A-matrix on every rank until `place_A` reduce-scatters it, which
    would be the per-rank peak: the step runs on slices of the rows instead, so only a slice of
    it exists at a time. Every rank cuts the same slices, so the collectives match."""

    # Row slices per rank: the transient Partial A-matrix is about 1/(ROW_SLICES_PER_RANK * P) of
    # a full one. 8: the step's peak is its input and output shares plus 1/16 (P = 2) of a full
    # Partial, which keeps the per-rank peak near 1/P of one process's (1: 0.79x at P = 2 once
    # the ReLU step no longer set one process's peak).
    ROW_SLICES_PER_RANK = 16
    # Slice under autograd too (alpha / beta steps)? Off: measured in docs/memory/tp_slices/
    # (scripts/bench_memory_tp_slices.py), which sets it to time the alternative.
    SLICE_WITH_AUTOGRAD = False

    def __init__(self, op, params, ctx):
        super().__init__(op, params)
        self.ctx = ctx

    def rows(self, rows, batch):
        return None             # one-hot rows of a sharded weight: the generic rule

    def backward(self, step, lA, uA):
        n_rows = n_rows_of(lA, uA)
        if n_rows < 2 or (torch.is_grad_enabled() and not self.SLICE_WITH_AUTOGRAD):
            # Under autograd (alpha / beta steps) every slice's collectives are kept for the
            # backward pass: slicing would cost ROW_SLICES_PER_RANK x the reduce-scatters per step
            # (tp branch and bound timed out) for little memory.
            return step(lA, uA, self.params)
        n_slices = min(n_rows, self.ROW_SLICES_PER_RANK * self.ctx.world_size)
        joined = RowJoin(n_rows, self.ctx.local)
        for start, stop, part_lA, part_uA in row_pieces(lA, uA, n_rows, n_slices):
            joined.add(step(part_lA, part_uA, self.params), slice(start, stop))
        return joined.result()
