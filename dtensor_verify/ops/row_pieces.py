"""A backward step run on pieces of the A-matrix rows, so that its temporaries stay small.

Rows of an A-matrix (dim 1) are independent through every backward rule: row k of a step's
result reads only row k of its A-matrices (and per-row parameters, which callers of this module
do not pass). A nonlinear step (ReLU's relaxation, a windowed step on patches) makes several
A-sized temporaries; run a piece of about `PIECE_ELEMENTS` at a time and written into buffers
of the whole result, the step's peak is its inputs and outputs plus one piece's temporaries.
Used without autograd only (the buffers are written in place).
"""
from __future__ import annotations

import torch

from .. import deadline
from .base import BackwardResult
from .patches import Patches, WindowGather

PIECE_ELEMENTS = 1 << 18
# A windowed step (`windowed_elementwise`) makes about nine piece-sized temporaries (two windows
# of the bounds, the relaxation's slopes, intercepts and masks, the rule's own), a dense ReLU
# step about two: its pieces are smaller.
WINDOWED_PIECE_ELEMENTS = 1 << 16


# Where the device has memory to spare (a GPU), a piece may hold up to this share of what this
# process may use (`device_share.free_memory_bytes`) in its temporaries: thousands of pieces of
# 2^16 elements were thousands of kernel launches and host syncs per step on a shared GPU.
PIECE_MEMORY_FRACTION = 0.25


def piece_size(like: torch.Tensor, temporaries: int, base: int = WINDOWED_PIECE_ELEMENTS) -> int:
    """Elements per piece for a step that makes `temporaries` piece-sized tensors: `base` on a CPU
    (small pieces stay in cache; the rows' cost is the same), else as many as fit in
    `PIECE_MEMORY_FRACTION` of the device memory this process may use, and never fewer than `base`."""
    if like.device.type == "cpu":
        return base
    from ..device_share import free_memory_bytes
    fits = int(free_memory_bytes(like.device) * PIECE_MEMORY_FRACTION) // (max(temporaries, 1) * like.element_size())
    return max(base, fits)


def _data(A) -> torch.Tensor:
    return A.P if isinstance(A, Patches) else A


def row_pieces(A, piece_elements: int = PIECE_ELEMENTS) -> list[slice]:
    """Slices of the rows (dim 1) that together cover them, each about `piece_elements` in size."""
    data = _data(A)
    K = data.shape[1]
    per_row = max(data[:, :1].numel(), 1)
    step = max(1, piece_elements // per_row)
    return [slice(s, min(s + step, K)) for s in range(0, K, step)] or [slice(0, 0)]


def rows_of(A, rows: slice):
    if A is None:
        return None
    if isinstance(A, Patches):
        return Patches(A.P[:, rows], A.top[rows], A.left[rows], A.shape)
    return A[:, rows]


def in_row_pieces(run, lA, uA, piece_elements: int | None = None) -> BackwardResult:
    """`run(lA, uA)` (an elementwise op's step: its results have A's rows and, for patches, A's
    windows) on pieces of the rows (of `piece_elements` elements; default: `PIECE_ELEMENTS`, more where the
    device has memory to spare). One piece (or autograd on): a plain call."""
    ref = lA if lA is not None else uA
    size = piece_size(_data(ref), 3, PIECE_ELEMENTS) if piece_elements is None else piece_elements
    pieces = row_pieces(ref, size)
    if len(pieces) == 1 or (torch.is_grad_enabled() and _data(ref).requires_grad):
        return run(lA, uA)
    result = None
    for r in pieces:
        deadline.check_fine()       # one op can be minutes of pieces (TinyYOLO's first ReLU on a shared GPU)
        part_l = rows_of(lA, r)
        part = run(part_l, part_l if uA is lA else rows_of(uA, r))
        if result is None:
            result = _empty_result(part, _data(ref).shape[1], ref)
        _write_rows(result, part, r)
        del part
    return result


def _buffer(piece, K: int, ref):
    if piece is None:
        return None
    data = _data(piece)
    out = data.new_empty(data.shape[0], K, *data.shape[2:])
    return Patches(out, ref.top, ref.left, piece.shape) if isinstance(piece, Patches) else out


def _empty_result(part: BackwardResult, K: int, ref) -> BackwardResult:
    """Buffers for a step's result over all K rows, shaped like one piece's result."""
    inputs = []
    for p_l, p_u in part.input_A:
        out_l = _buffer(p_l, K, ref)
        inputs.append((out_l, out_l if p_u is p_l else _buffer(p_u, K, ref)))

    def bias(b):
        return b.new_empty(b.shape[0], K) if isinstance(b, torch.Tensor) else b

    lb = bias(part.lbias)
    return BackwardResult(inputs, lb, lb if part.ubias is part.lbias else bias(part.ubias))


def _write_rows(result: BackwardResult, part: BackwardResult, rows: slice) -> None:
    for (out_l, out_u), (p_l, p_u) in zip(result.input_A, part.input_A):
        if out_l is not None:
            _data(out_l)[:, rows] = _data(p_l)
        if out_u is not None and out_u is not out_l:
            _data(out_u)[:, rows] = _data(p_u)
    if isinstance(result.lbias, torch.Tensor):
        result.lbias[:, rows] = part.lbias
    if isinstance(result.ubias, torch.Tensor) and result.ubias is not result.lbias:
        result.ubias[:, rows] = part.ubias


def concretize_patches(A: Patches, box):
    """(min, max) of A . x over the box [B, C, H, W] (the windows of its centre and radius, one
    gather of both per piece of the rows)."""
    x_lower, x_upper = box
    center, radius = (x_upper + x_lower) / 2, (x_upper - x_lower) / 2
    windows = WindowGather(A, center, radius)
    mids, devs = [], []
    for rows in row_pieces(A, piece_size(A.P, 6, PIECE_ELEMENTS)):
        P = A.P[:, rows]
        B, k = P.shape[:2]
        c, r = (w.expand(B, -1, -1, -1, -1) for w in windows.rows(rows))
        flat = P.reshape(B * k, 1, -1)
        mids.append(flat.bmm(c.reshape(B * k, -1, 1)).reshape(B, k))
        devs.append(flat.abs().bmm(r.reshape(B * k, -1, 1)).reshape(B, k))
    mid, dev = torch.cat(mids, 1), torch.cat(devs, 1)
    return mid - dev, mid + dev


def windowed_elementwise(op, lA, uA, input_bounds) -> BackwardResult:
    """An elementwise op's ordinary backward rule run on windows: each (box, row) pair becomes one
    box of the rule's batch, with the window of the input bounds as its bounds. Valid for rules
    that read nothing node-shaped but the bounds (ReLU). Runs a piece of the rows at a time
    (the rule makes several bound-sized temporaries, here as large as the patches)."""
    ref = lA if lA is not None else uA
    return in_row_pieces(lambda part_l, part_u: _windowed_piece(op, part_l, part_u, input_bounds), lA, uA,
                         piece_size(ref.P, 9))


def _windowed_piece(op, lA, uA, input_bounds) -> BackwardResult:
    ref = lA if lA is not None else uA
    B, K, C, kh, kw = ref.P.shape
    lower, upper = input_bounds[0]
    win = [ref.gather(t).expand(B, -1, -1, -1, -1).reshape(B * K, C, kh, kw) for t in (lower, upper)]

    def flat(A):
        return None if A is None else A.P.reshape(B * K, 1, C, kh, kw)

    flat_l = flat(lA)
    flat_u = flat_l if uA is lA else flat(uA)
    return windows_back(op.backward(flat_l, flat_u, [tuple(win)]), ref)


def windows_back(result: BackwardResult, ref: Patches) -> BackwardResult:
    """A rule's result on the flattened (box x row) windows of `ref`, as patches again."""
    B, K, C, kh, kw = ref.P.shape
    (new_l, new_u), = result.input_A

    def back(A):
        return None if A is None else ref.with_P(A.reshape(B, K, C, kh, kw))

    def bias(b):
        return b.reshape(B, K) if isinstance(b, torch.Tensor) else b

    return BackwardResult([(back(new_l), back(new_u))], bias(result.lbias), bias(result.ubias))
