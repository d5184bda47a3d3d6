"""Exact linear (affine) maps given as a function: Transpose, Slice, Concat, Gather, Pad, pools...

`LinearMapOp` wraps any batch-generic function `fn(*xs)` that is affine in its inputs,
`fn(x) = J x + c`. Its CROWN step is the adjoint: `A -> J^T A`, computed as the vector-Jacobian
product of `fn` (autograd, with the A-matrix's rows as the batch), and the bias `A . c` with
`c = fn(0)`. Nothing is approximated, so bounds pass through exactly.

IBP: with `nonnegative=True` (every coefficient of J >= 0: selections, sums, averages, copies)
the box maps to `[fn(lo), fn(hi)]`; otherwise `abs_fn` (x -> |J| x) gives the radius.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BackwardResult, BoundOp, Capabilities, per_row_sum
from .patches import Patches, window_dot
from .conv_transpose_patches import transposed_conv_step
from .window_maps import probe_shift


class LinearMapOp(BoundOp):
    kind = "linear_map"
    # Set for padding / pooling (ops/window_maps.py): the map on each channel is a constant-weight
    # convolution, so its backward step works on patches.
    window_map = None
    # Set for a bare nn.ConvTranspose2d (ops/structural.py): its adjoint is a convolution, which
    # works on patches too (ops/conv_transpose_patches.py).
    transposed_conv = None

    def __init__(self, name, fn, nonnegative=True, abs_fn=None, kind=None, elementwise=False, owned=()):
        super().__init__(name, None)
        self.fn = fn
        # Modules built for this op alone (e.g. the |W| copy behind `abs_fn`): not in the graph's
        # module, so `to` moves them with the op.
        self.owned = list(owned)
        self.nonnegative = nonnegative
        self.abs_fn = abs_fn
        self.offset = None            # fn(0) per sample, or None when it is 0 (set by finalize)
        # Weights (ConvTranspose's) are constants captured at build time, not module parameters;
        # a general linear map mixes neurons, so it needs whole tensors on a sharded dim.
        self.caps = Capabilities(elementwise=elementwise)
        if kind:
            self.kind = kind
        if not nonnegative and abs_fn is None:
            raise ValueError("a linear map with signed coefficients needs abs_fn for IBP")

    def finalize(self, dtype=torch.float32, device="cpu"):
        zeros = [torch.zeros(1, *s, dtype=dtype, device=device) for s in self.in_shapes]
        with torch.no_grad():
            c = self.fn(*zeros)
        self.offset = c[0].detach() if bool((c != 0).any()) else None
        if self.window_map is None and self.kind == "pad" and len(self.in_shapes) == 1:
            self.window_map = probe_shift(self.fn, tuple(self.in_shapes[0]), tuple(self.out_shape), self.offset)

    def to(self, device):
        if self.offset is not None:
            self.offset = self.offset.to(device)
        for m in self.owned:
            m.to(device)

    def forward(self, *xs):
        return self.fn(*xs)

    def ibp(self, *intervals):
        if self.nonnegative:
            return self.fn(*[i[0] for i in intervals]), self.fn(*[i[1] for i in intervals])
        mid = self.fn(*[(i[0] + i[1]) / 2 for i in intervals])
        rad = self.abs_fn(*[(i[1] - i[0]) / 2 for i in intervals])
        return mid - rad, mid + rad

    def adjoint(self, A):
        """J^T A for each perturbed input: A [B, K, *out] -> list of [B, K, *in_i]."""
        B, K = A.shape[:2]
        flat = A.reshape(B * K, *A.shape[2:])
        xs = [torch.zeros(B * K, *s, dtype=A.dtype, device=A.device, requires_grad=True) for s in self.in_shapes]
        with torch.enable_grad():
            y = self.fn(*xs)
            if self.offset is not None:
                y = y - self.offset
            grads = torch.autograd.grad(y, xs, flat, create_graph=A.requires_grad, allow_unused=True)
        out = []
        for g, s in zip(grads, self.in_shapes):
            g = torch.zeros(B * K, *s, dtype=A.dtype, device=A.device) if g is None else g
            out.append(g.reshape(B, K, *s))
        return out

    def backward(self, lA, uA, input_bounds, alpha=None):
        n = len(self.in_shapes)
        l_in = self.adjoint(lA) if lA is not None else [None] * n
        u_in = l_in if uA is lA else (self.adjoint(uA) if uA is not None else [None] * n)

        def bias(A):
            if A is None or self.offset is None:
                return 0.0
            return per_row_sum(A * self.offset)

        lb = bias(lA)
        return BackwardResult(list(zip(l_in, u_in)), lb, lb if uA is lA else bias(uA))

    def backward_patches(self, lA, uA, input_bounds, params=None):
        """The step on patches for a window map: a transposed convolution of each channel's
        window with the map's constant kernel (as `Conv2dOp.backward_patches`, depthwise)."""
        g = self.window_map
        ref = lA if lA is not None else uA
        if g is None and self.transposed_conv is not None and len(self.in_shapes) == 1:
            return self._transposed_conv_patches(lA, uA)
        if g is None or len(self.in_shapes) != 1 or len(self.in_shapes[0]) != 3:
            return None
        in_shape = tuple(self.in_shapes[0])
        grown = [(n - 1) * s + k for n, s, k in zip(ref.window, g.stride, g.kernel)]
        if in_shape[0] != ref.shape[0] or grown[0] * grown[1] >= in_shape[1] * in_shape[2]:
            return None
        kernel = ref.P.new_full((1, 1, *g.kernel), g.scale)

        def step(A):
            if A is None:
                return None
            B, K, C, kh, kw = A.P.shape
            if tuple(g.kernel) == tuple(g.stride):
                # Non-overlapping windows (a k x k pool with stride k): each entry is copied k x k
                # times, times the scale (one pass: the product of a broadcast view).
                k0, k1 = g.kernel
                spread = A.P.reshape(B, K, C, kh, 1, kw, 1).expand(B, K, C, kh, k0, kw, k1)
                back = torch.mul(spread, g.scale).reshape(B, K, C, kh * k0, kw * k1)
            else:
                back = F.conv_transpose2d(A.P.reshape(B * K * C, 1, kh, kw), kernel, None, g.stride)
            out = Patches(back.reshape(B, K, C, *back.shape[-2:]), A.top * g.stride[0] - g.padding[0],
                          A.left * g.stride[1] - g.padding[1], in_shape)
            out.P.mul_(out.inside())          # (a new tensor: masked in place)
            return out

        def bias(A):
            if A is None or self.offset is None:
                return 0.0
            return window_dot(A, self.offset)

        new_l = step(lA)
        new_u = new_l if uA is lA else step(uA)
        lb = bias(lA)
        return BackwardResult([(new_l, new_u)], lb, lb if uA is lA else bias(uA))

    def _transposed_conv_patches(self, lA, uA):
        in_shape = tuple(self.in_shapes[0])

        def step(A):
            return None if A is None else transposed_conv_step(self.transposed_conv, in_shape, A)

        new_l = step(lA)
        new_u = new_l if uA is lA else step(uA)
        if (lA is not None and new_l is None) or (uA is not None and new_u is None):
            return None

        def bias(A):
            if A is None or self.offset is None:
                return 0.0
            return window_dot(A, self.offset)

        lb = bias(lA)
        return BackwardResult([(new_l, new_u)], lb, lb if uA is lA else bias(uA))
