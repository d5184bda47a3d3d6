"""Convolution A-matrices as local patches: the sparse form of `[B, K, C, H, W]` that a conv's
backward pass produces from few rows.

Row k of a CROWN A-matrix started at neuron (c, h, w) of a conv layer is non-zero only in the
conv's receptive field of (h, w): a window of the node's spatial grid. `Patches` keeps, per row,
that window and where it sits:

    P       [B, K, C, kh, kw]   the coefficients inside each row's window
    top     [K], left [K]       node coordinates of each window's top-left corner (may lie
                                outside the grid, in the zero padding of the conv that follows)
    shape   (C, H, W)           the node's per-sample shape (what `to_dense` gives back)

Invariant: coefficients at window positions outside the grid are 0, so sums over a window equal
sums over the dense row. A window grows by each conv it passes backward through
(`(kh - 1) * stride + dilation * (k - 1) + 1`); once it is as large as the grid the dense form is
no larger and the sweep converts (`smaller_as_dense`). auto_LiRPA 0.3 keeps the same coefficients
per output position ("patches" mode); here every row carries its own window, so the rows that
CROWN bounds (only the unstable neurons) need not form a full grid.

Ops that can take patches define `backward_patches(lA, uA, input_bounds, params=None)` returning a
`BackwardResult` whose input A-matrices are `Patches` (or None where they cannot: the sweep then
converts to dense and uses the op's ordinary rule).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(eq=False)
class Patches:
    P: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    shape: tuple[int, int, int]

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def identity(rows: torch.Tensor, shape, batch: int, dtype, device) -> "Patches":
        """One-hot rows selecting the flattened neurons `rows` of a [C, H, W] node: 1x1 windows."""
        C, H, W = shape
        rows = rows.to(device)
        c, rest = rows // (H * W), rows % (H * W)
        P = torch.zeros(len(rows), C, 1, 1, dtype=dtype, device=device)
        P[torch.arange(len(rows), device=device), c] = 1.0
        P = P.unsqueeze(0).expand(batch, -1, -1, -1, -1)
        return Patches(P, rest // W, rest % W, (C, H, W))

    def with_P(self, P: torch.Tensor) -> "Patches":
        return Patches(P, self.top, self.left, self.shape)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def window(self) -> tuple[int, int]:
        return self.P.shape[-2], self.P.shape[-1]

    def same_geometry(self, other: "Patches") -> bool:
        return (self.window == other.window and self.shape == other.shape and self.top is other.top
                and self.left is other.left) or (
            self.window == other.window and self.shape == other.shape
            and torch.equal(self.top, other.top) and torch.equal(self.left, other.left))

    def smaller_as_dense(self) -> bool:
        """Is the dense [B, K, C, H, W] form no larger than the windows?"""
        kh, kw = self.window
        return kh * kw >= self.shape[1] * self.shape[2]

    def _indices(self):
        """Padding (top, bottom, left, right) that puts every window inside the grid, and the
        padded-grid row / column indices of each window, [K, kh] and [K, kw]."""
        kh, kw = self.window
        _, H, W = self.shape
        dev = self.top.device
        pad_t = max(0, -int(self.top.min())) if len(self.top) else 0
        pad_b = max(0, int(self.top.max()) + kh - H) if len(self.top) else 0
        pad_l = max(0, -int(self.left.min())) if len(self.left) else 0
        pad_r = max(0, int(self.left.max()) + kw - W) if len(self.left) else 0
        ih = (self.top + pad_t).unsqueeze(1) + torch.arange(kh, device=dev)
        iw = (self.left + pad_l).unsqueeze(1) + torch.arange(kw, device=dev)
        return (pad_t, pad_b, pad_l, pad_r), ih, iw

    def inside(self) -> torch.Tensor:
        """[1, K, 1, kh, kw] mask of the window positions that lie on the grid."""
        kh, kw = self.window
        _, H, W = self.shape
        dev = self.top.device
        h = self.top.unsqueeze(1) + torch.arange(kh, device=dev)
        w = self.left.unsqueeze(1) + torch.arange(kw, device=dev)
        ok = ((h >= 0) & (h < H)).unsqueeze(2) & ((w >= 0) & (w < W)).unsqueeze(1)
        return ok.unsqueeze(0).unsqueeze(2)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Each row's window of a node-shaped tensor `t` [B, C, H, W] (B may be 1):
        [B, K, C, kh, kw], zero outside the grid."""
        return WindowGather(self, t).rows(slice(None))[0]

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Each row's window of its own row of a per-row tensor `t` [B, K, C, H, W] (slopes, split
        multipliers): [B, K, C, kh, kw], zero outside the grid; differentiable in `t`."""
        (pt, pb, pl, pr), ih, iw = self._indices()
        padded = F.pad(t, (pl, pr, pt, pb)) if pt or pb or pl or pr else t
        k = torch.arange(ih.shape[0], device=ih.device).view(-1, 1, 1)
        win = padded[:, k, :, ih.unsqueeze(2), iw.unsqueeze(1)]   # [K, kh, kw, B, C]
        return win.permute(3, 0, 4, 1, 2)

    def to_dense(self, onto: torch.Tensor | None = None) -> torch.Tensor:
        """The A-matrix [B, K, C, H, W] (one dense allocation: written in place through a view);
        with `onto` (a dense A-matrix of the same node), `onto` + this, `onto` left unchanged."""
        B, K, C, kh, kw = self.P.shape
        _, H, W = self.shape
        dev = self.P.device
        if onto is not None:
            B = max(B, onto.shape[0])
            out = self.P.new_empty(B, K, C, H, W)
            out.copy_(onto)
        else:
            out = self.P.new_zeros(B, K, C, H, W)
        h = self.top.unsqueeze(1) + torch.arange(kh, device=dev)          # [K, kh]
        w = self.left.unsqueeze(1) + torch.arange(kw, device=dev)         # [K, kw]
        # Positions off the grid hold 0 (the invariant): they are added, harmlessly, to a clamped
        # position; on the grid each row's positions are distinct, so the sum is the value.
        pos = h.clamp(0, H - 1).unsqueeze(2) * W + w.clamp(0, W - 1).unsqueeze(1)   # [K, kh, kw]
        k = torch.arange(K, device=dev).view(K, 1).expand(K, kw).reshape(-1)
        view = out.view(B, K, C, H * W).permute(1, 3, 0, 2)                # [K, HW, B, C]
        P = self.P.expand(B, -1, -1, -1, -1)
        for i in range(kh):             # one window row at a time: its copy is 1/kh of the windows
            values = P[:, :, :, i, :].permute(1, 3, 0, 2).reshape(-1, B, C)
            view.index_put_((k, pos[:, i, :].reshape(-1)), values, accumulate=True)
        return out

    # -- arithmetic the sweep and the placement styles need -------------------------------------
    def __neg__(self) -> "Patches":
        return self.with_P(-self.P)

    def narrow(self, dim: int, start: int, length: int) -> "Patches":
        """A slice of the channels (dim 2), as the `spec` style streams a conv's weight rows."""
        if dim != 2:
            raise ValueError("patches narrow only on the channel dim (2)")
        return Patches(self.P.narrow(2, start, length), self.top, self.left,
                       (length, *self.shape[1:]))

    def uniform_offset(self, top: torch.Tensor, left: torch.Tensor) -> tuple[int, int] | None:
        """(rows, columns) from `top` / `left` to every row's window when it is the same for all
        rows (the windows of a residual block's branches: a conv grows each window alike), else
        None. One host sync."""
        if not len(self.top):
            return None
        dt, dl = self.top - top, self.left - left
        t0, t1, l0, l1 = torch.stack((dt.min(), dt.max(), dl.min(), dl.max())).tolist()
        return (t0, l0) if t0 == t1 and l0 == l1 else None

    def embed(self, top: torch.Tensor, left: torch.Tensor, kh: int, kw: int) -> "Patches":
        """The same coefficients in larger windows [kh, kw] at `top` / `left` (each containing
        this row's window): a slice of the new windows where every row sits at the same offset,
        else a scatter per row."""
        B, K, C, h, w = self.P.shape
        offset = self.uniform_offset(top, left)
        if offset is not None:
            grid = self.P.new_zeros(B, K, C, kh, kw)
            grid[:, :, :, offset[0]:offset[0] + h, offset[1]:offset[1] + w] = self.P
            return Patches(grid, top, left, self.shape)
        dt, dl = self.top - top, self.left - left
        k = torch.arange(K, device=self.P.device).view(K, 1, 1)
        ih = dt.unsqueeze(1) + torch.arange(h, device=dt.device)
        iw = dl.unsqueeze(1) + torch.arange(w, device=dl.device)
        grid = self.P.new_zeros(K, kh, kw, B, C)
        grid[k, ih.unsqueeze(2), iw.unsqueeze(1)] = self.P.permute(1, 3, 4, 0, 2)
        return Patches(grid.permute(3, 0, 4, 1, 2), top, left, self.shape)

    def add_(self, other: "Patches") -> "Patches":
        if not self.same_geometry(other):
            raise ValueError("in-place sum of patches with different windows")
        self.P = self.P + other.P
        return self


class WindowGather:
    """The windows of `ref`'s rows in node-shaped tensors `ts` (each [B, C, H, W]), for a step
    that reads them a piece of the rows at a time: the padding, the padded tensors and each row's
    positions in them are made once (one host sync for the padding); each piece is one index
    (channel offset + window position, in the layout of `ref.P`) and one `index_select` per
    tensor, whose result is contiguous like the piece of `ref.P`. Exact: pure indexing."""

    def __init__(self, ref: Patches, *ts: torch.Tensor):
        (pt, pb, pl, pr), ih, iw = ref._indices()
        padded = [F.pad(t, (pl, pr, pt, pb)) if pt or pb or pl or pr else t for t in ts]
        hp, wp = padded[0].shape[-2:]
        self.grids = [p.reshape(p.shape[0], -1) for p in padded]           # [B, C Hp Wp] each
        self.window = ref.window
        self.channels = ts[0].shape[1]
        self.pos = ih.unsqueeze(2) * wp + iw.unsqueeze(1)                    # [K, kh, kw]
        self.channel_start = torch.arange(self.channels, device=ih.device).view(-1, 1, 1) * (hp * wp)

    def rows(self, rows: slice) -> list[torch.Tensor]:
        """[B, k, C, kh, kw] per tensor (contiguous): the windows of the rows `rows`, zero off the grid."""
        pos = self.pos[rows]
        index = (pos.unsqueeze(1) + self.channel_start).reshape(-1)          # [k C kh kw]
        shape = (pos.shape[0], self.channels, *self.window)
        return [g.index_select(1, index).view(g.shape[0], *shape) for g in self.grids]


def add_A(a, b):
    """Sum of two A-matrices w.r.t. the same node, dense or patches (patches of the same geometry
    stay patches; otherwise the sum is dense)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Patches) and isinstance(b, Patches):
        if a.same_geometry(b):
            return a.with_P(a.P + b.P)
        joined = _common_windows(a, b)
        if joined is not None:
            return joined
    if isinstance(b, Patches):
        return b.to_dense(onto=dense(a))
    if isinstance(a, Patches):
        return a.to_dense(onto=b)
    return a + b


def _common_windows(a: Patches, b: Patches) -> Patches | None:
    """a + b as patches whose windows cover both (branches of a residual block meet with windows
    of different sizes), or None where the union is no smaller than dense."""
    if a.shape != b.shape or a.P.shape[:2] != b.P.shape[:2]:
        return None
    top, left = torch.minimum(a.top, b.top), torch.minimum(a.left, b.left)
    (ah, aw), (bh, bw) = a.window, b.window
    kh = int(torch.maximum(a.top + ah, b.top + bh).sub(top).max()) if len(top) else 1
    kw = int(torch.maximum(a.left + aw, b.left + bw).sub(left).max()) if len(left) else 1
    if kh * kw >= a.shape[1] * a.shape[2]:
        return None
    joined = a.embed(top, left, kh, kw)
    offset = b.uniform_offset(top, left)
    if offset is None:
        joined.P = joined.P + b.embed(top, left, kh, kw).P
    else:       # b added into its slice of the joined windows (the same sums, no embedded copy of b)
        (h, w), (t, l) = b.window, offset
        joined.P[:, :, :, t:t + h, l:l + w] += b.P
    return joined


def window_dot(A: Patches, t: torch.Tensor) -> torch.Tensor:
    """[B, K]: each row's window of A times the node-shaped constant `t` [C, H, W], summed. A `t`
    constant over each channel's grid (a conv's bias, BatchNorm's shift) needs no window of it:
    entries off the grid are 0 (the invariant), so the sum is the window sums @ t's channels."""
    if t.dim() == 3 and torch.equal(t, t[:, :1, :1].expand_as(t)):
        return A.P.sum((-2, -1)) @ t[:, 0, 0].to(A.P.dtype)
    return (A.P * A.gather(t.unsqueeze(0))).flatten(2).sum(-1)


def dense(A):
    return A.to_dense() if isinstance(A, Patches) else A
