"""LayerNorm: its normalised values as a bound rule, and the decomposed ONNX pattern recognised.

LayerNorm is y = n(x) * w + b with n(x) = c * rsqrt(mean(c^2) + eps), c = x - mean(x) over the
normalised dims. ops/decompose.py writes it so (the centring is an exact linear map; the variance
a Square and a mean; one Rsqrt relaxation, not Sqrt then Reciprocal; c * r by McCormick), and
marks n(x) with `layernorm_unit` (an identity whose rules use two facts every n(x) satisfies):

* sum_i n_i = 0 over the group (c sums to 0), and
* |n_i| <= sqrt(N - 1) for N entries: sum_j c_j^2 >= c_i^2 + (sum_{j!=i} c_j)^2 / (N - 1)
  = c_i^2 N / (N - 1), so mean(c^2) + eps > c_i^2 / (N - 1).

Box rule: each entry clamped to [-sqrt(N-1), sqrt(N-1)] and lower_i' = max(lower_i, -sum_{j!=i}
upper_j), upper_i' likewise (ops/softmax_sum.group_box). CROWN step: `A . n = (A - lam) . n`
(the group sums to 0), lam the widths-weighted median of the row's coefficients, optimised by
alpha-CROWN like softmax's (ops/softmax_sum.GroupShiftOp); both the box and the shift give up a
rounding margin of N * 8 eps * sqrt(N-1) per group (the float sum of N values of magnitude at most
sqrt(N-1)). The rounding of `x - mean(x)` itself (cancellation when |mean| >> std) is the
network's, as in every rule of the decomposition: all of them bound the real-arithmetic function. Because the centred values' A-matrix then
meets the centring map (whose rows sum to 0) the shift changes only how the product c * r is
relaxed: `sum_j |A_j - lam| * gap_j` instead of `sum_j |A_j| * gap_j`.

`rewrite_layernorm_chain` recognises the pattern exporters write for LayerNorm below opset 17,
`Div(Sub(x, ReduceMean(x)), Sqrt(Add(ReduceMean(Pow(Sub, 2)), eps)))` (then Mul gamma, Add beta,
which stay as they are), in onnx2torch modules or torch functions, and rewrites the Div into the
form above. ONNX LayerNormalization (opset 17) and nn.LayerNorm are rewritten by decompose.py.
"""
from __future__ import annotations

import math
import numbers
import operator

import torch

from .layernorm_product import product_node
from .registry import register
from .softmax_sum import GroupShiftOp


def layernorm_unit(y, dims):
    """The identity (a marker: `y` is LayerNorm's normalised value over `dims`)."""
    return y


class LayerNormUnitOp(GroupShiftOp):
    kind = "layernorm_unit"
    total = 0.0

    def value_range(self, n: int) -> tuple[float, float]:
        r = math.sqrt(max(n - 1, 0))
        return -r, r


# -- the decomposed pattern ---------------------------------------------------------------------

def _mod(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _const(gm, a):
    """The scalar value of a constant argument (number, OnnxConstant, get_attr), or None."""
    if isinstance(a, numbers.Number):
        return float(a)
    if not isinstance(a, torch.fx.Node):
        return None
    value = None
    if a.op == "get_attr":
        value = getattr(gm, a.target, None)
        for part in a.target.split(".") if value is None else ():
            value = getattr(value if value is not None else gm, part, None)
    elif a.op == "call_module" and type(_mod(gm, a)).__name__ == "OnnxConstant":
        value = _mod(gm, a).value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return float(value) if isinstance(value, numbers.Number) else None


def _mean_dims(gm, node, rank: int):
    """(input, dims) of a keepdim mean over dims, or None."""
    m = _mod(gm, node)
    if m is not None:
        if type(m).__name__ != "OnnxReduceStaticAxes" or m.operation_type != "ReduceMean" or not m.keepdims \
                or not m.axes:
            return None
        return node.args[0], tuple(sorted(d % rank for d in m.axes))
    is_fn = node.op == "call_function" and node.target is torch.mean
    if not (is_fn or (node.op == "call_method" and node.target == "mean")):
        return None
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    if dims is None or not keep:
        return None
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return node.args[0], tuple(sorted(d % rank for d in dims))


def _square_of(gm, node):
    m = _mod(gm, node)
    if m is not None and type(m).__name__ == "OnnxPow" and len(node.args) == 2:
        return node.args[0] if _const(gm, node.args[1]) == 2.0 else None
    if node.op == "call_function" and node.target in (torch.pow, operator.pow) and len(node.args) == 2:
        return node.args[0] if _const(gm, node.args[1]) == 2.0 else None
    if node.op == "call_function" and node.target is torch.square:
        return node.args[0]
    return None


def _is_sqrt(gm, node):
    m = _mod(gm, node)
    if m is not None:
        return type(m).__name__ == "OnnxSqrt"
    return node.op == "call_function" and node.target is torch.sqrt


def _binary(gm, node, kind):
    from ..fx_nodes import binary_kind

    return isinstance(node, torch.fx.Node) and binary_kind(gm, node) == kind and len(node.args) == 2


def _match(gm, node):
    """(centred node c, sqrt's input t, dims, the square node, eps) when `node` is c / sqrt(mean(c^2, dims) + eps) with
    c = x - mean(x, dims), else None."""
    if not _binary(gm, node, "div"):
        return None
    c, s = node.args
    if not isinstance(s, torch.fx.Node) or not _is_sqrt(gm, s) or not _binary(gm, c, "sub"):
        return None
    t = s.args[0]
    if not _binary(gm, t, "add"):
        return None
    v, eps = t.args if isinstance(t.args[0], torch.fx.Node) else t.args[::-1]
    eps = _const(gm, eps)
    rank = len(c.meta["tensor_meta"].shape)
    var = _mean_dims(gm, v, rank) if isinstance(v, torch.fx.Node) else None
    if eps is None or eps < 0 or var is None or var[1][0] < 1 or _square_of(gm, var[0]) is not c:
        return None
    x, mu = c.args
    mean = _mean_dims(gm, mu, rank) if isinstance(mu, torch.fx.Node) else None
    if mean is None or mean[0] is not x or mean[1] != var[1] or list(var[1]) != list(range(var[1][0], rank)):
        return None
    return c, t, var[1], var[0], eps


def rewrite_layernorm_chain(gm, node, perturbed) -> bool:
    """Rewrite a decomposed LayerNorm's Div (see the module docstring); False if `node` is not one."""
    found = _match(gm, node)
    if found is None:
        return False
    c, t, dims, square, eps = found
    if c.name not in perturbed:
        return False
    g = gm.graph
    if not (square.op == "call_function" and square.target is torch.square):
        with g.inserting_before(square):          # Pow(c, 2) as Square (one rule for every form)
            square.replace_all_uses_with(g.call_function(torch.square, (c,)))
        g.erase_node(square)
    with g.inserting_before(node):
        r = g.call_function(torch.rsqrt, (t,))
        y = g.call_function(layernorm_unit, (product_node(g, c, r, dims, eps), dims))
    node.replace_all_uses_with(y)
    g.erase_node(node)
    return True


register("layernorm_unit", ("LayerNormalization",), lambda c: c.is_function(layernorm_unit) and c.n_pert == 1,
         lambda c: LayerNormUnitOp(c.node.name, c.node.args[1]))
