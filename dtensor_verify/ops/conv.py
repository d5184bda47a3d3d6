"""Conv2d (`nn.Conv2d`) with stride, padding, dilation and groups.

The backward step is the transposed convolution of the A-matrix; `output_padding` makes the
result land exactly on the input's spatial size when the stride does not divide it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOpError
from .base import BackwardResult, BoundOp, Capabilities


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
