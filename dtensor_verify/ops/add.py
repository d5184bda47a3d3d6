"""Add / Sub of two perturbed tensors (residual connections)."""
from __future__ import annotations

from .base import BackwardResult, BoundOp, Capabilities


class AddOp(BoundOp):
    """out = x + sign * y, with sign = +1 (Add) or -1 (Sub)."""

    kind = "add"
    caps = Capabilities(elementwise=True)
    sign: float = 1.0

    def forward(self, x, y):
        return x + self.sign * y

    def ibp(self, a, b):
        (al, au), (bl, bu) = a, b
        if self.sign > 0:
            return al + bl, au + bu
        return al - bu, au - bl

    def backward(self, lA, uA, input_bounds, alpha=None):
        # Broadcasting between the two operands is not supported here: the graph builder
        # checks that both have the output's shape.
        def neg(A):
            return None if A is None else -A

        second = (lA, uA) if self.sign > 0 else (neg(lA), neg(uA))
        return BackwardResult([(lA, uA), second])


    def backward_patches(self, lA, uA, input_bounds, params=None):
        return self.backward(lA, uA, input_bounds)


class SubOp(AddOp):
    kind = "sub"
    sign = -1.0
