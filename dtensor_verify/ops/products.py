"""Products of two activations: Mul (with broadcasting) and MatMul, by McCormick planes.

For z = x y with x in [lx, ux], y in [ly, uy] (per element):
    lower planes   z >= ly x + lx y - lx ly        z >= uy x + ux y - ux uy
    upper planes   z <= uy x + lx y - lx uy        z <= ly x + ux y - ux ly
CROWN takes the first of each pair (as auto_LiRPA 0.3); alpha-CROWN optimises a convex
combination of the two (a in [0, 1], per bound row and element, for each line and side).
MatMul x [.., n, k] @ y [.., k, m] is the sum over k of the products x[.., i, k] y[.., k, j]:
the same planes on the [.., n, k, m] products, then summed.
"""
from __future__ import annotations

import torch

from .base import BackwardResult, BoundOp, Capabilities, per_row_sum
from .registry import register


def _lift(t, shape):
    """[B, *s] as [B, 1.., *s] of rank 1 + len(shape) (for broadcasting against [B, *shape])."""
    extra = len(shape) - (t.dim() - 1)
    return t.reshape(t.shape[0], *([1] * extra), *t.shape[1:]) if extra > 0 else t


def _sum_to(A, in_shape, out_shape):
    """A [B, K, *out] -> [B, K, *in]: sum over the dims the input was broadcast along."""
    padded = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
    A = A.sum_to_size(*A.shape[:2], *padded)
    return A.reshape(*A.shape[:2], *in_shape)


def mccormick(A, lx, ux, ly, uy, lower: bool, a=None, b=None):
    """One side's step through z = x * y (everything broadcast to A's [B, K, *S]). Returns
    (A_x, A_y, bias [B, K]). `a` / `b`: weights of the first plane of the lower / upper pair."""
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    lo_side, up_side = (pos, neg) if lower else (neg, pos)        # which part takes the lower planes
    if a is None:
        cx_lo, cy_lo, c0_lo = ly, lx, -lx * ly
    else:
        cx_lo, cy_lo, c0_lo = a * ly + (1 - a) * uy, a * lx + (1 - a) * ux, -(a * lx * ly + (1 - a) * ux * uy)
    if b is None:
        cx_up, cy_up, c0_up = uy, lx, -lx * uy
    else:
        cx_up, cy_up, c0_up = b * uy + (1 - b) * ly, b * lx + (1 - b) * ux, -(b * lx * uy + (1 - b) * ux * ly)
    A_x = lo_side * cx_lo + up_side * cx_up
    A_y = lo_side * cy_lo + up_side * cy_up
    bias = per_row_sum(lo_side * c0_lo + up_side * c0_up)
    return A_x, A_y, bias


def _corners(lx, ux, ly, uy):
    c = torch.stack([lx * ly, lx * uy, ux * ly, ux * uy])
    return c.min(0).values, c.max(0).values


class MulOp(BoundOp):
    """z = x * y of two activations (broadcasting allowed)."""

    kind = "mul"
    needs_input_bounds = True
    is_affine = False
    caps = Capabilities(elementwise=False)
    # alpha: weights of the first plane of the lower / upper pair, for the lower bound's and the
    # upper bound's A ([4, B, K, *product shape]); 1 is CROWN's choice.
    has_alpha = True

    def init_alpha_inputs(self, input_bounds):
        lo = input_bounds[0][0]
        return torch.ones(4, lo.shape[0], *self._product_shape(), dtype=lo.dtype, device=lo.device)

    def _product_shape(self):
        return tuple(self.out_shape)

    def forward(self, x, y):
        return x * y

    def ibp(self, x, y):
        s = self.out_shape
        return _corners(_lift(x[0], s), _lift(x[1], s), _lift(y[0], s), _lift(y[1], s))

    def backward(self, lA, uA, input_bounds, alpha=None):
        s = self.out_shape
        (lx, ux), (ly, uy) = [(_lift(b[0], s).unsqueeze(1), _lift(b[1], s).unsqueeze(1)) for b in input_bounds]
        out_A, biases = [[None, None], [None, None]], [0.0, 0.0]
        for side, A in enumerate((lA, uA)):
            if A is None:
                continue
            a, b = (None, None) if alpha is None else (alpha[2 * side], alpha[2 * side + 1])
            A_x, A_y, bias = mccormick(A, lx, ux, ly, uy, lower=(side == 0), a=a, b=b)
            out_A[0][side] = _sum_to(A_x, self.in_shapes[0], s)
            out_A[1][side] = _sum_to(A_y, self.in_shapes[1], s)
            biases[side] = bias
        return BackwardResult([tuple(out_A[0]), tuple(out_A[1])], biases[0], biases[1])


class MatMulOp(BoundOp):
    """z = x @ y of two activations (per sample: x [.., n, k], y [.., k, m], batch dims broadcast)."""

    kind = "matmul"
    needs_input_bounds = True
    is_affine = False
    caps = Capabilities(elementwise=False)
    has_alpha = True                 # as MulOp's, per element of the [.., n, k, m] products

    def init_alpha_inputs(self, input_bounds):
        lo = input_bounds[0][0]
        return torch.ones(4, lo.shape[0], *self._prod_shape(), dtype=lo.dtype, device=lo.device)

    def _prod_shape(self):
        s = self.out_shape
        return (*s[:-2], s[-2], self.in_shapes[0][-1], s[-1])

    def forward(self, x, y):
        return torch.matmul(x, y)

    def _expand(self, tx, ty):
        """x [B, .., n, k] and y [B, .., k, m] as [B, .., n, k, m] views (product shape)."""
        s = self.out_shape
        prod = (*s[:-2], s[-2], self.in_shapes[0][-1], s[-1])
        return _lift(tx, s).unsqueeze(-1), _lift(ty, s).unsqueeze(-3), prod

    def ibp(self, x, y):
        lx, ly, _ = self._expand(x[0], y[0])
        ux, uy, _ = self._expand(x[1], y[1])
        lo, hi = _corners(lx, ux, ly, uy)
        return lo.sum(-2), hi.sum(-2)

    def backward(self, lA, uA, input_bounds, alpha=None):
        (x_lo, x_up), (y_lo, y_up) = input_bounds
        lx, ly, prod = self._expand(x_lo, y_lo)
        ux, uy, _ = self._expand(x_up, y_up)
        lx, ux, ly, uy = (t.unsqueeze(1) for t in (lx, ux, ly, uy))
        out_A, biases = [[None, None], [None, None]], [0.0, 0.0]
        x_full = (*prod[:-1],)                     # x lifted: [.., n, k]
        y_full = (*prod[:-3], prod[-2], prod[-1])   # y lifted: [.., k, m]
        for side, A in enumerate((lA, uA)):
            if A is None:
                continue
            Ap = A.unsqueeze(-2)                    # [B, K, .., n, 1, m] broadcasts over k
            a, b = (None, None) if alpha is None else (alpha[2 * side], alpha[2 * side + 1])
            A_x, A_y, bias = mccormick(Ap, lx, ux, ly, uy, lower=(side == 0), a=a, b=b)
            A_x = A_x.sum(-1)                       # [B, K, .., n, k]
            A_y = A_y.sum(-3)                       # [B, K, .., k, m]
            out_A[0][side] = _sum_to(A_x, self.in_shapes[0], x_full)
            out_A[1][side] = _sum_to(A_y, self.in_shapes[1], y_full)
            biases[side] = bias
        return BackwardResult([tuple(out_A[0]), tuple(out_A[1])], biases[0], biases[1])


def _binary_kind(ctx):
    from ..fx_nodes import binary_kind as kind_of
    return kind_of(ctx.gm, ctx.node)


def _is_matmul(ctx):
    return ctx.module_type == "OnnxMatMul" or ctx.is_function(torch.matmul, __import__("operator").matmul)


def _build_matmul(ctx):
    sx = tuple(ctx.perturbed[0].meta["tensor_meta"].shape[1:])
    sy = tuple(ctx.perturbed[1].meta["tensor_meta"].shape[1:])
    if len(sx) < 2 or len(sy) < 2:
        raise ctx.unsupported(f"MatMul of activations of per-sample shapes {list(sx)} and {list(sy)} "
                              f"(each needs at least 2 dims besides the batch)")
    return MatMulOp(ctx.node.name)


register("mul_activations", ("Mul",), lambda c: _binary_kind(c) == "mul" and c.n_pert == 2,
         lambda c: MulOp(c.node.name))
register("matmul_activations", ("MatMul",), lambda c: c.n_pert == 2 and _is_matmul(c), _build_matmul)


def _build_matmul_const(ctx):
    """x @ W or W @ x with a constant W the canonicaliser left (a 1-D W, batched W): an exact
    linear map; IBP's radius uses |W|."""
    from .linear_map import LinearMapOp
    from .registry import OpContext

    fn = ctx.function()

    def abs_value(a):
        v = ctx.value_of(a)
        return v.abs() if isinstance(v, torch.Tensor) else v

    abs_ctx = OpContext(ctx.gm, ctx.node, ctx.perturbed, ctx.constants, ctx.what, abs_value)
    return LinearMapOp(ctx.node.name, fn, nonnegative=False, abs_fn=abs_ctx.function(), kind="matmul_const")


register("matmul_const", ("MatMul",), lambda c: c.n_pert == 1 and _is_matmul(c), _build_matmul_const)
