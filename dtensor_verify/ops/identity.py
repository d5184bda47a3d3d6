"""Identity, Dropout (inference) and other no-ops."""
from __future__ import annotations

from .base import BackwardResult, BoundOp, Capabilities


class IdentityOp(BoundOp):
    kind = "identity"
    caps = Capabilities(elementwise=True)

    def forward(self, x):
        return x

    def ibp(self, interval):
        return interval

    def backward(self, lA, uA, input_bounds, alpha=None):
        return BackwardResult([(lA, uA)])
