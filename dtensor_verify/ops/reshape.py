"""Flatten / Reshape / View: a relabelling of the node dims, exact in both directions.

The per-sample target shape comes from shape propagation at build time, so constant
ONNX shapes like [1, -1] keep working for a batch of many boxes.
"""
from __future__ import annotations

from .base import BackwardResult, BoundOp


class ReshapeOp(BoundOp):
    kind = "reshape"

    def forward(self, x):
        return x.reshape(x.shape[0], *self.out_shape)

    def ibp(self, interval):
        lo, hi = interval
        return self.forward(lo), self.forward(hi)

    def backward(self, lA, uA, input_bounds, alpha=None):
        in_shape = self.in_shapes[0]

        def step(A):
            return None if A is None else A.reshape(A.shape[0], A.shape[1], *in_shape)

        return BackwardResult([(step(lA), step(uA))])
