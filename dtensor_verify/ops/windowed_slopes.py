"""An elementwise relaxation step on patches with per-row slopes (alpha-CROWN) and split
multipliers (beta-CROWN).

`row_pieces.windowed_elementwise` runs an op's ordinary rule on windows: each (box, row) pair of
a `Patches` A-matrix becomes one box of the rule's batch, with its window of the input bounds as
its bounds. Slopes and split multipliers are per row (`[B, K, C, H, W]`): here each row gets its
own row's window of them (`Patches.gather_rows`), split signs (`[B, C, H, W]`, per neuron) the
node window, and the rule runs once on all rows (no pieces: autograd follows the slopes through
the windows, and the slopes' rows would have to be cut with the A-matrix's).

Valid for rules that read nothing node-shaped but the bounds, the slopes and the splits (ReLU).
Positions of a window off the grid have zero bounds, slopes and signs, so their coefficients stay
0 (the invariant of `ops/patches.py`).

A split term `beta * sign` lands on every split neuron, also outside a row's window (where the
A-matrix itself is 0): it is representable as patches only when each row's non-zero terms lie in
its window. `splits_inside_windows` checks that exactly; where it fails the sweep goes dense
(`None` from the rule), so the bounds are always those of the dense step. Multipliers being
optimised go dense too: a multiplier outside the window is 0 in value but not in gradient (its
term would reach the bound through the dense A-matrix), which patches cannot give.
"""
from __future__ import annotations

import torch

from .base import BackwardResult
from .patches import Patches
from .row_pieces import windows_back


def _flat_rows(ref: Patches, t: torch.Tensor | None, B: int) -> torch.Tensor | None:
    """A per-row tensor [B', K, C, H, W] as each row's window, [B * K, 1, C, kh, kw]. Slopes shared
    by the rows (`share_alphas`: [B', 1, C, H, W]) are one per neuron: each row takes its window."""
    if t is None:
        return None
    if t.shape[1] == 1 and ref.P.shape[1] != 1:
        flat = _flat_node(ref, t[:, 0], B)
        return flat.reshape(flat.shape[0], 1, *flat.shape[1:])
    win = ref.gather_rows(t)
    _, K, C, kh, kw = win.shape
    return win.expand(B, -1, -1, -1, -1).reshape(B * K, 1, C, kh, kw)


def _flat_node(ref: Patches, t: torch.Tensor, B: int) -> torch.Tensor:
    """A per-neuron tensor [B', C, H, W] as each row's window, [B * K, C, kh, kw]."""
    win = ref.gather(t)
    _, K, C, kh, kw = win.shape
    return win.expand(B, -1, -1, -1, -1).reshape(B * K, C, kh, kw)


def splits_inside_windows(ref: Patches, beta) -> bool:
    """Does every row's split term (multipliers [B', K, *S] x signs [B', *S]) vanish outside the
    row's window? (Counted exactly: non-zero entries in the windows against in the whole grid.)"""
    multipliers, signs = beta
    if multipliers.requires_grad and torch.is_grad_enabled():
        return False            # their gradient lives on the whole grid (see the module docstring)
    whole = int(torch.count_nonzero(multipliers.detach() * signs.unsqueeze(1)))
    if whole == 0:
        return True
    inside = ref.gather_rows(multipliers.detach()) * ref.gather(signs).expand(multipliers.shape[0], -1, -1, -1, -1)
    return int(torch.count_nonzero(inside)) == whole


def windowed_with_slopes(op, lA, uA, input_bounds, alpha=None, beta=None) -> BackwardResult | None:
    """`op.backward` on the windows of `lA` / `uA` (Patches) with `alpha` (a pair or a `[2, ...]`
    tensor of per-row slopes, entries may be None) and `beta` (multipliers, signs). None where a
    split term falls outside a row's window (see `splits_inside_windows`)."""
    ref = lA if lA is not None else uA
    if beta is not None and not splits_inside_windows(ref, beta):
        return None
    B, K, C, kh, kw = ref.P.shape
    lower, upper = input_bounds[0]
    win = tuple(_flat_node(ref, t, B) for t in (lower, upper))

    def flat(A):
        return None if A is None else A.P.reshape(B * K, 1, C, kh, kw)

    flat_l = flat(lA)
    flat_u = flat_l if uA is lA else flat(uA)
    kwargs = {}
    if alpha is not None:
        kwargs["alpha"] = tuple(_flat_rows(ref, alpha[i], B) for i in (0, 1))
    if beta is not None:
        multipliers, signs = beta
        kwargs["beta"] = (_flat_rows(ref, multipliers, B), _flat_node(ref, signs, B))
    return windows_back(op.backward(flat_l, flat_u, [win], **kwargs), ref)
