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

from .base import BackwardResult, BoundOp, Capabilities, per_row_sum
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
        self.shift = True            # False: the plain identity step (see `best_of_shifts`)

    def forward(self, y):
        return y

    def ibp(self, interval):
        return sum_one_box(interval[0], interval[1], self.dim)

    def backward(self, lA, uA, input_bounds, alpha=None):
        if not self.shift:
            return BackwardResult([(lA, uA)])
        bounds = input_bounds[0] if input_bounds else None
        width = None if bounds is None else (bounds[1] - bounds[0]).clamp(min=0.0).nan_to_num(0.0, 1.0, 0.0)
        lA, lbias = shift_rows(lA, width, self.dim, lower=True)
        uA, ubias = shift_rows(uA, width, self.dim, lower=False)
        return BackwardResult([(lA, uA)], lbias=lbias, ubias=ubias)


POWER = 1.0


def weighted_median(A, width, dim: int):
    """Per row and softmax group, the coefficient lam minimising sum_j |A_j - lam| * width_j
    (A: [B, K, *S], softmax entries on `dim`; width: [B, *S] or None for equal weights)."""
    w = torch.ones_like(A) if width is None else (width ** POWER).unsqueeze(1).expand_as(A)
    a_sorted, order = A.sort(dim)
    cum = w.gather(dim, order).cumsum(dim)
    half = cum.narrow(dim, cum.shape[dim] - 1, 1) / 2
    pick = (cum < half).sum(dim, keepdim=True).clamp(max=A.shape[dim] - 1)
    return a_sorted.gather(dim, pick)


def shift_rows(A, width, dim: int, lower: bool):
    """`A . y` written as `(A - lam) . y + sum lam` (sum_j y_j = 1 in each group): the shifted
    rows and the bias, [B, K], less a rounding margin (|lam| * n * 8 eps per group)."""
    if A is None:
        return None, 0.0
    dim_a = dim + 1                                   # A has the row dim K after the batch
    lam = weighted_median(A, width, dim_a)
    slack = lam.abs() * (A.shape[dim_a] * 8 * torch.finfo(A.dtype).eps)
    bias = per_row_sum(lam - slack) if lower else per_row_sum(lam + slack)
    return A - lam, bias


def best_of_shifts(graph, name: str, run):
    """`run()` (a CROWN sweep from node `name`, giving (lower, upper)) with the shifted rows, and
    again with the plain identity step where a softmax lies upstream of `name`: the tighter of
    the two per neuron (both sound), so the shift never makes a bound looser."""
    ops = [n for n in graph.nodes if isinstance(n.op, SoftmaxSumOneOp)]
    if ops:                                           # (no graph walk on graphs without softmax)
        ancestors = graph.ancestors(name)
        ops = [n.op for n in ops if n.name in ancestors]
    if not ops:
        return run()
    lo, up = run()
    for op in ops:
        op.shift = False
    try:
        lo0, up0 = run()
    finally:
        for op in ops:
            op.shift = True
    lo = lo0 if lo is None else (lo if lo0 is None else torch.maximum(lo, lo0))
    up = up0 if up is None else (up if up0 is None else torch.minimum(up, up0))
    return lo, up


register("softmax_sum_one", ("Softmax",), lambda c: c.is_function(softmax_sum_one) and c.n_pert == 1,
         lambda c: SoftmaxSumOneOp(c.node.name, c.node.args[1]))
