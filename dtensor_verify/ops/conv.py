"""Conv2d (`nn.Conv2d`) with stride, padding, dilation and groups.

The backward step is the transposed convolution of the A-matrix; `output_padding` makes the
result land exactly on the input's spatial size when the stride does not divide it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOpError
from .base import BackwardResult, BoundOp, Capabilities
from .patches import Patches


class Conv2dOp(BoundOp):
    kind = "conv2d"

    def check(self):
        m = self.module
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise UnsupportedOpError(
                f"node {self.name}: Conv2d with padding={m.padding!r}, padding_mode={m.padding_mode!r} "
                "is not supported (use explicit zero padding)")

    def _params(self, params):
        params = self.module_params() if params is None else params
        return params["weight"], params.get("bias")

    def _conv(self, x, w, b):
        m = self.module
        return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)

    def forward(self, x, params=None):
        return self._conv(x, *self._params(params))

    def ibp(self, interval, params=None):
        lo, hi = interval
        w, b = self._params(params)
        center = self._conv((hi + lo) / 2, w, b)
        deviation = self._conv((hi - lo) / 2, w.abs(), None)
        return center - deviation, center + deviation

    @property
    def caps(self):
        # With groups, an output channel reads only its group: no sum over the weight's rows.
        return Capabilities(has_weights=True, sums_over_weight_rows=self.module.groups == 1)

    def backward(self, lA, uA, input_bounds, alpha=None, params=None):
        m = self.module
        w, b = self._params(params)
        in_c, in_h, in_w = self.in_shapes[0]
        _, out_h, out_w = self.out_shape
        kh, kw = w.shape[-2:]
        output_padding = tuple(
            size - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, o, s, p, d, k in zip((in_h, in_w), (out_h, out_w), m.stride, m.padding, m.dilation, (kh, kw)))

        def step(A):
            if A is None:
                return None
            B, K = A.shape[:2]
            # A's channels may be a slice of out_c (see Capabilities.sums_over_weight_rows), with w's rows to match.
            back = F.conv_transpose2d(A.reshape(B * K, *A.shape[2:]), w, None, m.stride, m.padding,
                                      output_padding, m.groups, m.dilation)
            return back.reshape(B, K, in_c, in_h, in_w)

        def bias(A):
            if A is None or b is None:
                return 0.0
            return (A.sum((3, 4)) * b).sum(-1)

        return BackwardResult([(step(lA), step(uA))], bias(lA), bias(uA))

    def backward_patches(self, lA, uA, input_bounds, params=None):
        """The same step on `Patches`: the transposed convolution of each row's window, without
        padding (the window moves to `top * stride - padding`); positions that land in the zero
        padding are dropped (see `ops/patches.py`)."""
        m = self.module
        w, b = self._params(params)
        ref = lA if lA is not None else uA
        grown = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(ref.window, m.stride, m.dilation, w.shape[-2:])]
        if grown[0] * grown[1] >= self.in_shapes[0][1] * self.in_shapes[0][2]:
            return None         # the input's windows would be no smaller than dense: the dense rule

        def step(A):
            if A is None:
                return None
            B, K, C, kh, kw = A.P.shape
            flat = A.P.reshape(B * K, C, kh, kw)
            if tuple(m.stride) == (1, 1) and m.groups == 1:
                # Stride 1: the transposed convolution is the convolution with the flipped kernel
                # over the fully padded window (the faster kernel on CPU).
                pad = tuple(d * (k - 1) for d, k in zip(m.dilation, w.shape[-2:]))
                back = F.conv2d(flat, w.flip(-1, -2).transpose(0, 1), None, 1, pad, m.dilation)
            else:
                back = F.conv_transpose2d(flat, w, None, m.stride, 0, 0, m.groups, m.dilation)
            out = Patches(back.reshape(B, K, *back.shape[1:]), A.top * m.stride[0] - m.padding[0],
                          A.left * m.stride[1] - m.padding[1], tuple(self.in_shapes[0]))
            out.P.mul_(out.inside())          # (a new tensor: masked in place)
            return out

        def bias(A):
            if A is None or b is None:
                return 0.0
            return (A.P.sum((3, 4)) * b).sum(-1)

        new_l = step(lA)
        new_u = new_l if uA is lA else step(uA)
        lb = bias(lA)
        return BackwardResult([(new_l, new_u)], lb, lb if uA is lA else bias(uA))
