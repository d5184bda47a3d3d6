"""ReLU's CROWN step (no optimised slopes, no splits) on patches, with the relaxation made once.

`row_pieces.windowed_elementwise` runs an op's ordinary rule on every (box, row) window of the
input bounds: per piece of the rows it gathers two windows of the bounds and recomputes the
relaxation (slopes, intercepts, masks) on them, about nine piece-sized temporaries, so a wide
sweep (TinyYOLO: 21125 rows of 16 x ~48 x 48 windows) went through thousands of small pieces.
The relaxation is elementwise in the bounds, so its window is the relaxation of the window: here
it is made once on the node ([B, C, H, W]: lower slope, upper slope, upper intercept), and each
piece takes its windows by one index and an `index_select` per map (`patches.WindowGather`,
contiguous in the layout of the piece) and applies, for the lower side (lA) and the upper side (uA),

    new A = A+ s + A- u,   bias = A- . b    (lower side; A- s + A+ u and A+ . b on the upper side)

with s CROWN's adaptive lower slope, u / b the upper line's slope / intercept: the terms of
`relu.lean_side` (one of the two terms is exactly 0 at each entry, so the coefficients are those
of its `where(A >= 0, s, u) * A`, bitwise), written into the result's buffers in place; A's two
parts are made once for both sides when lA is uA. Positions off the grid gather 0 for
s, u and b, and A is 0 there (the invariant of `ops/patches.py`): their coefficients stay 0.
Pieces are sized by `row_pieces.piece_size` (larger where the device has memory to spare).
"""
from __future__ import annotations

import torch

from .. import deadline
from .base import BackwardResult
from .patches import Patches, WindowGather
from .row_pieces import piece_size, row_pieces

# Piece-sized temporaries per piece (in A's elements): the three gathered windows, their int64
# index (2), A's positive and negative parts (2).
TEMPORARIES = 7


def applies(lA, uA, lower: torch.Tensor, upper: torch.Tensor) -> bool:
    """Without autograd only (the results are written into buffers in place): where a gradient is
    followed through the step, the rule on windows (`row_pieces.windowed_elementwise`) runs."""
    if not torch.is_grad_enabled():
        return True
    tensors = (lower, upper, None if lA is None else lA.P, None if uA is None else uA.P)
    return not any(t is not None and t.requires_grad for t in tensors)


def relu_patches_step(lA: Patches | None, uA: Patches | None, lower_slope: torch.Tensor,
                      up_slope: torch.Tensor, up_intercept: torch.Tensor) -> BackwardResult:
    """CROWN's ReLU step on patches (either side may be None; `lA is uA` allowed), given the
    relaxation on the node (`relu.relaxation` of the input's bounds [B, C, H, W]: the adaptive
    lower slope, the upper slope and intercept). The same values as `ReluOp.backward` on the windows."""
    ref = lA if lA is not None else uA
    windows = WindowGather(ref, *(t.to(ref.P.dtype) for t in (lower_slope, up_slope, up_intercept)))
    B = max(ref.P.shape[0], lower_slope.shape[0])
    K = ref.P.shape[1]
    outs = [None if A is None else (A.P.new_empty(B, K, *A.P.shape[2:]), A.P.new_empty(B, K))
            for A in (lA, uA)]
    size = piece_size(ref.P, TEMPORARIES)
    for rows in row_pieces(ref, size):
        deadline.check_fine()           # one step can be many pieces (TinyYOLO's 52 x 52 ReLUs)
        s, u, b = windows.rows(rows)
        if lA is uA:                    # CROWN's intermediate sweeps: one A, both sides
            pos, neg = lA.P[:, rows].clamp(min=0), lA.P[:, rows].clamp(max=0)
            _side(pos, neg, s, u, b, outs[0][0][:, rows], outs[0][1][:, rows])
            _side(neg, pos, s, u, b, outs[1][0][:, rows], outs[1][1][:, rows])
            del pos, neg
        else:
            for A, out, lower_side in ((lA, outs[0], True), (uA, outs[1], False)):
                if A is not None:
                    pos, neg = A.P[:, rows].clamp(min=0), A.P[:, rows].clamp(max=0)
                    _side(*((pos, neg) if lower_side else (neg, pos)), s, u, b, out[0][:, rows], out[1][:, rows])
                    del pos, neg
        del s, u, b

    def back(A, out):
        return None if A is None else A.with_P(out[0])

    return BackwardResult([(back(lA, outs[0]), back(uA, outs[1]))],
                          0.0 if lA is None else outs[0][1], 0.0 if uA is None else outs[1][1])


def _side(on_slope, on_upper, s, u, b, out_A, out_bias) -> None:
    """One side of the step on a piece: `on_slope` / `on_upper` the parts of A that take the lower
    slope s / the upper line (A+ / A- for the lower side, A- / A+ for the upper). Writes
    `out_A` = on_slope * s + on_upper * u [B, k, C, kh, kw] (at each entry one term is exactly 0:
    the value of `where(A >= 0, s, u) * A`) and `out_bias` = on_upper . b per row [B, k] (the
    batched dot product `relu._row_dot` takes on each window)."""
    B, k = out_A.shape[:2]
    torch.mul(on_slope, s, out=out_A)
    out_A.addcmul_(on_upper, u)
    n = on_upper[0, 0].numel() if k else 0
    dots = on_upper.expand(B, -1, -1, -1, -1).reshape(B * k, 1, n).bmm(
        b.expand(B, -1, -1, -1, -1).reshape(B * k, n, 1))
    out_bias.copy_(dots.view(B, k))
