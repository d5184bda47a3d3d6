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

Many rows, small windows (a generator's first layers: 18892 rows of 2x2 windows of a 6x6 map, in a
canvas of 6x6): the canvas of every row would be as large as the dense A-matrix. A row's canvas
offset (window top minus canvas top) is one of `stride` values per axis, so the rows fall in
`sh * sw` phases, and within a phase the step is one linear map of the window's `C kh kw`
coefficients: a basis (the canvas convolution of the identity, `C kh kw` rows) and one matmul
per phase, without canvases. The step takes whichever form holds fewer elements. The same
matmul keeps the step on patches where the input windows cover the whole input grid (the last
generator layer before a 2x2 map): the sweep then makes them dense at the input grid, not at
the (larger) output grid as the dense rule would.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict

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
    """J^T A for `module` (an nn.ConvTranspose2d) on patches, or None where the dense rule holds
    fewer elements (the input windows are no smaller than the input grid, and the result as
    patches would be larger than the dense A-matrix the dense rule starts from)."""
    (sh, sw), (ph, pw), (dh, dw) = module.stride, module.padding, module.dilation
    w = module.weight.detach().to(A.P.device, A.P.dtype)
    kh_w, kw_w = w.shape[-2:]
    (kh, kw), (_, H, W), (C, H_out, W_out) = A.window, in_shape, A.shape
    top, canvas_h, n_h = _axis(A.top, kh, sh, ph, dh, kh_w)
    left, canvas_w, n_w = _axis(A.left, kw, sw, pw, dw, kw_w)
    B, K = A.P.shape[:2]
    if n_h * n_w >= H * W and w.shape[0] * n_h * n_w >= C * H_out * W_out:
        return None
    # Phases: a basis and a copy of A.P beside the result; canvases: every row's canvas.
    by_phases = C * kh * kw * w.shape[0] * n_h * n_w + A.P.numel()
    if n_h * n_w >= H * W or by_phases < B * K * C * canvas_h * canvas_w:
        P = _by_phases(module, w, A, top * sh - ph, left * sw - pw, (canvas_h, canvas_w), (n_h, n_w))
    else:
        canvas = A.embed(top * sh - ph, left * sw - pw, canvas_h, canvas_w).P
        back = F.conv2d(canvas.reshape(B * K, C, canvas_h, canvas_w), w, None, (sh, sw), 0, (dh, dw), module.groups)
        P = back.reshape(B, K, *back.shape[1:])
    out = Patches(P, top, left, tuple(in_shape))
    return out.with_P(out.P.mul_(out.inside()))


_BASES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# Bases kept per module (LRU): a sweep meets each phase of a layer once per window size, and
# alpha-CROWN's iterations, beta-CROWN's rounds and row chunks meet the same ones again.
BASES_PER_MODULE = 64


def _phase_basis(module, w, C, kh, kw, oh, ow, canvas, like):
    """[C kh kw, C_in n_h n_w]: the step of a window at offset (oh, ow) of its canvas, one row per
    window coefficient (the canvas convolution of the identity), kept per module, geometry and
    device / dtype (the weight's storage and version are in the key, so a changed weight is never
    served an old basis)."""
    weight = module.weight
    key = (C, kh, kw, oh, ow, tuple(canvas), like.dtype, like.device, weight.data_ptr(), weight._version)
    cache = _BASES.setdefault(module, OrderedDict())
    basis = cache.get(key)
    if basis is None:
        basis = _basis(module, w, C, kh, kw, oh, ow, canvas, like)
        cache[key] = basis
        while len(cache) > BASES_PER_MODULE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return basis


def _taps(offset: int, n_win: int, n_in: int, s: int, d: int, k: int, device) -> torch.Tensor:
    """[n_win, n_in]: the kernel tap joining window position `offset + i` of the canvas to input
    i' (`offset + i = i' s + d u`), or k where none does."""
    t = offset + torch.arange(n_win, device=device).view(-1, 1) - s * torch.arange(n_in, device=device).view(1, -1)
    u = torch.div(t, d, rounding_mode="floor")
    return torch.where((t % d == 0) & (u >= 0) & (u < k), u, torch.full_like(u, k))


def _basis(module, w, C, kh, kw, oh, ow, canvas, like):
    """The canvas convolution of the identity, read off the weight: window coefficient (c, i, j)
    reaches input (c', a, b) with weight w[c', c, u, v] where `oh + i = a s + d u` (and likewise
    for j, v), within c's group; every other entry is 0. (The convolution of one-hot canvases
    sums one such product with zeros: the same values, bitwise.)"""
    (sh, sw), (dh, dw), g = module.stride, module.dilation, module.groups
    c_in, c_group, k_h, k_w = w.shape
    n_h = (canvas[0] - dh * (k_h - 1) - 1) // sh + 1
    n_w = (canvas[1] - dw * (k_w - 1) - 1) // sw + 1
    rows_h = _taps(oh, kh, n_h, sh, dh, k_h, like.device)
    cols_w = _taps(ow, kw, n_w, sw, dw, k_w, like.device)
    full = like.new_zeros(c_in, C, k_h + 1, k_w + 1)      # tap k: no tap (0)
    per = c_in // g
    for gi in range(g):
        full[gi * per:(gi + 1) * per, gi * c_group:(gi + 1) * c_group, :k_h, :k_w] = w[gi * per:(gi + 1) * per]
    b = full[:, :, rows_h.view(kh, n_h, 1, 1), cols_w.view(1, 1, kw, n_w)]     # [C_in, C, kh, n_h, kw, n_w]
    return b.permute(1, 2, 4, 0, 3, 5).reshape(C * kh * kw, -1)


def _by_phases(module, w, A: Patches, canvas_top, canvas_left, canvas, n_in):
    """[B, K, C_in, n_h, n_w]: each phase's rows (same window offset in the canvas) times that
    phase's basis. One phase (stride 1): a single matmul, no copy of the rows."""
    B, K, C, kh, kw = A.P.shape
    off_h, off_w = A.top - canvas_top, A.left - canvas_left
    phase = off_h * (kw + canvas[1]) + off_w
    flat = A.P.reshape(B, K, C * kh * kw)
    keys = torch.unique(phase).tolist()
    if len(keys) == 1:
        basis = _phase_basis(module, w, C, kh, kw, int(off_h[0]), int(off_w[0]), canvas, A.P)
        return (flat @ basis).reshape(B, K, w.shape[0], *n_in)
    out = A.P.new_zeros(B, K, w.shape[0], *n_in)
    for key in keys:
        rows = (phase == key).nonzero().squeeze(1)
        i = int(rows[0])
        basis = _phase_basis(module, w, C, kh, kw, int(off_h[i]), int(off_w[i]), canvas, A.P)
        part = flat.index_select(1, rows) @ basis
        out.index_copy_(1, rows, part.reshape(B, len(rows), *out.shape[2:]))
    return out
