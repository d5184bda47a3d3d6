"""Softmax's sum-to-one fact as a bound rule (ops/decompose.py appends it to every Softmax over
n > 2 entries, after `1 / sum_j exp(x_j - x_i)`).

`softmax_sum_one(y, dim)` is the identity. Its box rule uses what every softmax output satisfies,
y_i in [0, 1] and sum_i y_i = 1 over `dim`:

    lower_i' = max(lower_i, 1 - sum_{j != i} upper_j),   upper_i' = min(upper_i, 1 - sum_{j != i} lower_j)

(each output's own CROWN bounds know nothing of the others'). It asks for its input's bounds
(`needs_input_bounds`), so the refinement starts from CROWN bounds of the softmax, and the box it
gives is what the next nonlinear op (attention's MatMul) reads. CROWN's step is the identity's
(exact). Float rounding: the identity holds to a few ulps in floating point, so the refinement
gives up `n * 8 * eps` (a sound margin for any n entries summed in the working dtype).
"""
from __future__ import annotations

import torch

from .base import BackwardResult, BoundOp, Capabilities
from .registry import register


def softmax_sum_one(y, dim: int):
    """The identity (a marker: `y` is a softmax over `dim`)."""
    return y


def sum_one_box(lower, upper, dim: int):
    """The box [lower, upper] of a softmax over `dim`, tightened by y in [0, 1] and sum y = 1."""
    lo, up = lower.clamp(0.0, 1.0), upper.clamp(0.0, 1.0)
    n = lo.shape[dim]
    slack = n * 8 * torch.finfo(lo.dtype).eps
    lo_new = 1.0 - (up.sum(dim, keepdim=True) - up) - slack
    up_new = 1.0 - (lo.sum(dim, keepdim=True) - lo) + slack
    lo_out, up_out = torch.maximum(lo, lo_new), torch.minimum(up, up_new)
    return lo_out, torch.maximum(up_out, lo_out)


class SoftmaxSumOneOp(BoundOp):
    kind = "softmax_sum_one"
    caps = Capabilities()                 # reads the whole softmax dim: not elementwise
    needs_input_bounds = True
    is_affine = False

    def __init__(self, name: str, dim: int):
        super().__init__(name)
        self.dim = dim

    def forward(self, y):
        return y

    def ibp(self, interval):
        return sum_one_box(interval[0], interval[1], self.dim)

    def backward(self, lA, uA, input_bounds, alpha=None):
        return BackwardResult([(lA, uA)])


register("softmax_sum_one", ("Softmax",), lambda c: c.is_function(softmax_sum_one) and c.n_pert == 1,
         lambda c: SoftmaxSumOneOp(c.node.name, c.node.args[1]))
