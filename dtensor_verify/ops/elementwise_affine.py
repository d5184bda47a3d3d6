"""Elementwise affine maps by constants: x*s + t.

Covers Add/Sub/Mul/Div with one constant operand (input normalisation: (x - mean) / std),
`c - x`, and BatchNorm in inference mode. Exact: the linear bound passes straight through.
"""
from __future__ import annotations

import torch

from .base import BackwardResult, BoundOp, per_row_sum


class ElementwiseAffineOp(BoundOp):
    """out = x * scale + shift, with `scale` and `shift` broadcastable to the per-sample shape."""

    kind = "affine"

    def __init__(self, name, scale, shift, module=None, kind=None):
        super().__init__(name, module)
        self.scale = scale
        self.shift = shift
        if kind:
            self.kind = kind

    def finalize(self):
        """Broadcast the constants to the per-sample shape once the shapes are known."""
        shape = (1, *self.out_shape)
        self.scale = torch.broadcast_to(torch.as_tensor(self.scale, dtype=torch.float32), shape)[0].clone()
        self.shift = torch.broadcast_to(torch.as_tensor(self.shift, dtype=torch.float32), shape)[0].clone()

    def to(self, device):
        self.scale, self.shift = self.scale.to(device), self.shift.to(device)

    def forward(self, x):
        return x * self.scale + self.shift

    def ibp(self, interval):
        lo, hi = interval
        a, b = lo * self.scale + self.shift, hi * self.scale + self.shift
        return torch.minimum(a, b), torch.maximum(a, b)

    def backward(self, lA, uA, input_bounds, alpha=None):
        def step(A):
            return None if A is None else A * self.scale

        def bias(A):
            return 0.0 if A is None else per_row_sum(A * self.shift)

        return BackwardResult([(step(lA), step(uA))], bias(lA), bias(uA))


def from_binary(name, kind: str, const: torch.Tensor, const_first: bool) -> ElementwiseAffineOp:
    """Build the affine op for `x <kind> c` (or `c <kind> x` when `const_first`)."""
    c = const.detach().float()
    one, zero = torch.ones(()), torch.zeros(())
    if kind == "add":
        return ElementwiseAffineOp(name, one, c, kind="add_const")
    if kind == "sub":
        return ElementwiseAffineOp(name, -one, c, kind="rsub_const") if const_first else \
            ElementwiseAffineOp(name, one, -c, kind="sub_const")
    if kind == "mul":
        return ElementwiseAffineOp(name, c, zero, kind="mul_const")
    if kind == "div" and not const_first:
        return ElementwiseAffineOp(name, 1.0 / c, zero, kind="div_const")
    return None


def from_batchnorm(name, bn: torch.nn.modules.batchnorm._BatchNorm) -> ElementwiseAffineOp:
    """BatchNorm in inference mode: per-channel scale and shift on dim 0 of the per-sample shape."""
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    weight = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.detach() if bn.bias is not None else torch.zeros_like(mean)
    scale = weight / torch.sqrt(var + bn.eps)
    shift = bias - mean * scale
    return ElementwiseAffineOp(name, scale, shift, module=None, kind="batchnorm")
