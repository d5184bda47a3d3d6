"""ConvTranspose2d's backward step on patches (cGAN generators).

`y = conv_transpose2d(x, W)` (stride s, padding p, dilation d, groups g) adds `x[i] W[k]` to
`y[i s - p + d k]`, so its adjoint is the convolution with the same weight:
`(J^T A)[i] = sum_k W[k] A[i s - p + d k]`. A row whose window on y covers rows [top, top + kh)
reaches the inputs i with `i s - p + d k` in that range for some k, i_lo <= i <= i_hi. Each row's
window is embedded, zero-filled, in a canvas of y that starts at `i_lo s - p` (i_lo =
floor((top + p - d (K - 1)) / s): aligned with the stride, at or before the window) and holds
the window and the reach of every input up to i_hi; the stride-s convolution of the canvas (no
padding) is then the row's window on x, from i_lo. Inputs off x's grid are masked to 0 (the invariant of `ops/patches.py`).
Exact: the canvas holds every coefficient of the row, the rest of it is 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .patches import Patches


def _axis(start: torch.Tensor, size: int, s: int, p: int, d: int, k: int):
    """(first input index per row, canvas length, input window length) along one axis: the
    inputs first .. last reach the window, and the canvas holds both their reach and the window."""
    reach = d * (k - 1)
    first = torch.div(start + p - reach, s, rounding_mode="floor")
    last = torch.div(start + size - 1 + p, s, rounding_mode="floor")
    canvas_start = first * s - p
    if not len(start):
        return first, reach + 1, 1
    n_in = int((last - first).max()) + 1
    need = int((start + size - canvas_start).max())          # the window inside the canvas
    n_in = max(n_in, -(-(need - reach - 1) // s) + 1, 1)
    return first, (n_in - 1) * s + reach + 1, n_in


def transposed_conv_step(module, in_shape, A: Patches) -> Patches | None:
    """J^T A for `module` (an nn.ConvTranspose2d) on patches, or None where the input windows
    would be no smaller than the dense input grid."""
    (sh, sw), (ph, pw), (dh, dw) = module.stride, module.padding, module.dilation
    w = module.weight.detach().to(A.P.device, A.P.dtype)
    kh_w, kw_w = w.shape[-2:]
    (kh, kw), (_, H, W) = A.window, in_shape
    top, canvas_h, n_h = _axis(A.top, kh, sh, ph, dh, kh_w)
    left, canvas_w, n_w = _axis(A.left, kw, sw, pw, dw, kw_w)
    if n_h * n_w >= H * W:
        return None
    canvas = A.embed(top * sh - ph, left * sw - pw, canvas_h, canvas_w).P
    B, K, C = canvas.shape[:3]
    back = F.conv2d(canvas.reshape(B * K, C, canvas_h, canvas_w), w, None, (sh, sw), 0, (dh, dw), module.groups)
    out = Patches(back.reshape(B, K, *back.shape[1:]), top, left, tuple(in_shape))
    return out.with_P(out.P * out.inside())
