"""Elementwise affine maps by constants: x*s + t.

Covers Add/Sub/Mul/Div with one constant operand (input normalisation: (x - mean) / std),
`c - x`, and BatchNorm in inference mode. Exact: the linear bound passes straight through.
The constant may broadcast a sample up (x [3] + c [4, 3] gives [4, 3]): each output then reads
one input element, and the backward step sums the A-matrix over the broadcast dims.
"""
from __future__ import annotations

import torch

from .base import BackwardResult, BoundOp, Capabilities, per_row_sum


class ElementwiseAffineOp(BoundOp):
    """out = x * scale + shift, with `scale` and `shift` broadcastable to the per-sample shape."""

    kind = "affine"

    @property
    def caps(self):
        # Elementwise unless the constant broadcasts the input up (then an output reads a
        # neuron of another position).
        same = self.in_padded is None or self.in_padded == tuple(self.out_shape)
        return Capabilities(elementwise=same)

    def __init__(self, name, scale, shift, module=None, kind=None):
        super().__init__(name, module)
        self.scale = scale
        self.shift = shift
        if kind:
            self.kind = kind

    # The input's per-sample shape padded with leading 1s to the output's rank (set by finalize).
    in_padded: tuple[int, ...] | None = None

    def finalize(self, dtype=torch.float32):
        """Broadcast the constants to the per-sample shape once the shapes are known."""
        shape = (1, *self.out_shape)
        self.scale = torch.broadcast_to(torch.as_tensor(self.scale, dtype=dtype), shape)[0].clone()
        self.shift = torch.broadcast_to(torch.as_tensor(self.shift, dtype=dtype), shape)[0].clone()
        in_shape = tuple(self.in_shapes[0]) if self.in_shapes else tuple(self.out_shape)
        self.in_padded = (1,) * (len(self.out_shape) - len(in_shape)) + in_shape

    def _lift(self, x):
        """x [B, *in] as [B, *in_padded], so that it broadcasts against the per-sample constants."""
        if self.in_padded is None or tuple(x.shape[1:]) == self.in_padded:
            return x
        return x.reshape(x.shape[0], *self.in_padded)

    def _sum_to_input(self, A):
        """A [B, K, *out] -> [B, K, *in]: sum over the dims the constant broadcast the input up."""
        if self.in_padded is None or self.in_padded == tuple(self.out_shape):
            return A
        A = A.sum_to_size(*A.shape[:2], *self.in_padded)
        return A.reshape(*A.shape[:2], *self.in_shapes[0])

    def to(self, device):
        self.scale, self.shift = self.scale.to(device), self.shift.to(device)

    def forward(self, x):
        return self._lift(x) * self.scale + self.shift

    def ibp(self, interval):
        lo, hi = self._lift(interval[0]), self._lift(interval[1])
        a, b = lo * self.scale + self.shift, hi * self.scale + self.shift
        return torch.minimum(a, b), torch.maximum(a, b)

    def backward(self, lA, uA, input_bounds, alpha=None):
        def step(A):
            return None if A is None else self._sum_to_input(A * self.scale)

        def bias(A):
            return 0.0 if A is None else per_row_sum(A * self.shift)

        return BackwardResult([(step(lA), step(uA))], bias(lA), bias(uA))


    def _per_channel(self):
        """(scale [C], shift [C]) where both are constant over each channel's [H, W] grid, else
        None (computed once per constant tensor)."""
        cached = getattr(self, "_channels", None)
        if cached is None or cached[0] is not self.scale:
            s, b = self.scale, self.shift
            same = s.dim() == 3 and all(torch.equal(t, t[:, :1, :1].expand_as(t)) for t in (s, b))
            cached = (s, (s[:, 0, 0].clone(), b[:, 0, 0].clone()) if same else None)
            self._channels = cached
        return cached[1]

    def backward_patches(self, lA, uA, input_bounds, params=None):
        """The step on patches: the windows of `scale` / `shift` (elementwise case only)."""
        if not self.caps.elementwise or len(self.out_shape) != 3:
            return None
        ref = lA if lA is not None else uA
        channels = self._per_channel()
        if channels is not None:
            # Constant over each channel's grid (BatchNorm): window entries off the grid are 0
            # (the patches invariant), so scale's windows are its channel values and the bias is
            # the window sums times shift, [B, K, C] @ [C]: no A-sized window of scale / shift.
            scale, shift = channels[0].view(-1, 1, 1), None
        else:
            scale, shift = ref.gather(self.scale.unsqueeze(0)), ref.gather(self.shift.unsqueeze(0))

        def step(A):
            return None if A is None else A.with_P(A.P * scale)

        def bias(A):
            if A is None:
                return 0.0
            return A.P.sum((-2, -1)) @ channels[1] if shift is None else per_row_sum(A.P * shift)

        new_l, lb = step(lA), bias(lA)
        if uA is lA:
            return BackwardResult([(new_l, new_l)], lb, lb)
        return BackwardResult([(new_l, step(uA))], lb, bias(uA))


def from_binary(name, kind: str, const: torch.Tensor, const_first: bool) -> ElementwiseAffineOp:
    """Build the affine op for `x <kind> c` (or `c <kind> x` when `const_first`)."""
    c = const.detach().double() if const.dtype == torch.float64 else const.detach().float()
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
