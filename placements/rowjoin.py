"""Joining a backward step that was run in parts: on slices of the rows (tp's row slices, spec's
one-hot rows per shard) or on slices of a weight (spec's streamed shards).

Rows of an A-matrix (dim 1) are independent linear functions, so a step run on subsets of them
and joined is the step on all of them; a step run on weight-row slices is a sum of the parts
(ops declaring `Capabilities.sums_over_weight_rows`).
"""
from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from dtensor_verify.ops.base import BackwardResult


def chunk_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """This rank's [start, stop) of n items split like DTensor's Shard (torch.chunk semantics)."""
    size = math.ceil(n / world) if n else 0
    start = min(n, rank * size)
    return start, min(n, start + size)


def contiguous_stride(shape) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= s
    return tuple(reversed(stride))


def n_rows_of(lA, uA) -> int:
    A = lA if lA is not None else uA
    return 0 if A is None else A.shape[1]


def narrow_rows(A, start, stop):
    return None if A is None else A.narrow(1, start, stop - start)


def row_pieces(lA, uA, n_rows: int, n_pieces: int):
    """(start, stop, lA rows, uA rows) for `n_pieces` near-equal pieces of the rows (empty pieces
    skipped; uA's piece is lA's when uA is lA)."""
    for i in range(n_pieces):
        start, stop = chunk_bounds(n_rows, n_pieces, i)
        if start == stop:
            continue
        part_lA = narrow_rows(lA, start, stop)
        yield start, stop, part_lA, (part_lA if uA is lA else narrow_rows(uA, start, stop))


def narrow_columns(A, start, stop):
    """A's slice on the node's first dim (Linear features, conv channels): dim 2 of [B, K, *S]."""
    return None if A is None else A.narrow(2, start, stop - start)


def add_results(total: BackwardResult | None, part: BackwardResult) -> BackwardResult:
    """Sum of two step results over the same rows (in place into `total`: no autograd here)."""
    if total is None:
        return part
    for (t_l, t_u), (p_l, p_u) in zip(total.input_A, part.input_A):
        if t_l is not None:
            t_l.add_(p_l)
        if t_u is not None and t_u is not t_l:
            t_u.add_(p_u)
    shared = total.ubias is total.lbias
    total.lbias = total.lbias + part.lbias
    total.ubias = total.lbias if shared else total.ubias + part.ubias
    return total


def add_rows_into(total: BackwardResult, part: BackwardResult, start: int, stop: int) -> None:
    """Add `part`, a step's result over rows [start, stop) of `total`'s, into those rows of
    `total` in place (no autograd here); a shared pair or bias is added once."""
    for (t_l, t_u), (p_l, p_u) in zip(total.input_A, part.input_A):
        if t_l is not None:
            narrow_rows(t_l, start, stop).add_(p_l)
        if t_u is not None and t_u is not t_l:
            narrow_rows(t_u, start, stop).add_(p_u)
    shared = total.ubias is total.lbias
    for side in ("lbias", "ubias")[:1 if shared else 2]:
        t, p = getattr(total, side), getattr(part, side)
        if isinstance(t, torch.Tensor):
            t.narrow(1, start, stop - start).add_(p)
        else:
            setattr(total, side, t + p)     # a number (0.0) on every part
    if shared:
        total.ubias = total.lbias


class RowBuffer:
    """One A-matrix (or bias) assembled from parts over subsets of its rows (dim 1), each copied
    into a local buffer as it arrives (so the parts need not all be alive at once); wrapped as a
    DTensor again if the parts were. Every row must be written once."""

    def __init__(self, n_rows: int):
        self.n_rows = n_rows
        self.buffer = None
        self.dtensor_spec = None       # (mesh, placements, global shape) of DTensor slices
        self.joined = None

    def write(self, part, rows):
        """`rows`: a slice, or an index tensor (then no autograd: index_copy_ is in place)."""
        local = part
        if isinstance(part, DTensor):
            # Each rank holds whole rows of its shard: rows must not be split or pending a sum.
            assert not any(p.is_shard(1) or p.is_partial() for p in part.placements), part.placements
            local = part.to_local()
            if self.dtensor_spec is None:
                shape = torch.Size((part.shape[0], self.n_rows, *part.shape[2:]))
                self.dtensor_spec = (part.device_mesh, part.placements, shape)
        if self.buffer is None:
            self.buffer = local.new_empty((local.shape[0], self.n_rows, *local.shape[2:]))
        if isinstance(rows, slice):
            self.buffer[:, rows].copy_(local)     # differentiable (CopySlices)
        else:
            self.buffer.index_copy_(1, rows, local)

    def tensor(self):
        if self.joined is None:
            self.joined = self.buffer
            if self.dtensor_spec is not None:
                mesh, placements, shape = self.dtensor_spec
                self.joined = DTensor.from_local(self.buffer, mesh, placements, run_check=False, shape=shape,
                                                 stride=contiguous_stride(shape))
        return self.joined


class RowJoin:
    """The BackwardResult of a step run on subsets of the rows: A-matrices joined per input and
    side (a pair shared by both sides stays shared), biases [B, k] made local and joined."""

    def __init__(self, n_rows: int, local):
        self.n_rows = n_rows
        self.local = local
        self.slots = None
        self.biases = [None, None]     # per side: a _RowBuffer, or the float every part had
        self.bias_shared = False

    def _slots_for(self, pair):
        lower = None if pair[0] is None else RowBuffer(self.n_rows)
        upper = lower if pair[1] is pair[0] else (None if pair[1] is None else RowBuffer(self.n_rows))
        return lower, upper

    def add(self, result: BackwardResult, rows):
        """`rows`: where `result`'s rows go (a slice, or an index tensor)."""
        if self.slots is None:
            self.slots = [self._slots_for(pair) for pair in result.input_A]
            self.bias_shared = result.ubias is result.lbias
        for (lower, upper), (part_lA, part_uA) in zip(self.slots, result.input_A):
            if lower is not None:
                lower.write(part_lA, rows)
            if upper is not None and upper is not lower:
                upper.write(part_uA, rows)
        for side, bias in enumerate((result.lbias, result.ubias)[:1 if self.bias_shared else 2]):
            bias = self.local(bias)
            if isinstance(bias, torch.Tensor):
                if self.biases[side] is None:
                    self.biases[side] = RowBuffer(self.n_rows)
                self.biases[side].write(bias, rows)
            else:
                self.biases[side] = bias

    def result(self) -> BackwardResult:
        input_A = [tuple(None if slot is None else slot.tensor() for slot in pair) for pair in self.slots]
        lbias, ubias = (b.tensor() if isinstance(b, RowBuffer) else b for b in self.biases)
        return BackwardResult(input_A, lbias, lbias if self.bias_shared else ubias)
