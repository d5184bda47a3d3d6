"""ReLU lookup tables as one piecewise-linear function (ml4acopf 2024's linearised Sin / Cos / Sigmoid).

The `-linear` ml4acopf networks replace each scalar nonlinearity by a table of K ReLUs:
`y = relu(x.unsqueeze(-1) - o) @ w` (o, w: constant vectors of K), i.e.
`f(x) = sum_k w_k relu(x - o_k)`, a continuous piecewise-linear function of the one neuron x.
Bounded as it stands, each of the n * K ReLUs gets its own triangle relaxation and the sum of
K independent triangles is far looser than any line pair of f itself; branch and bound also
sees n * K ReLU neurons instead of n. alpha,beta-CROWN merges the same pattern
(`merge_relu_lookup_table`, its ml4acopf 2024 config).

Here the fx pattern Unsqueeze(-1) -> Sub(const o) -> Relu -> MatMul(const w) becomes one call
of `relu_lookup(x, o, w)` (the same arithmetic, so the self-check and the attacks see the same
numbers), bound by `ActivationOp` with `LookupTable`: f - k x is linear between the breakpoints,
so its extremes over [l, u] lie at l, u or a breakpoint inside: the intercepts are exact for any
slope (sound for every slope alpha-CROWN picks), computed in one vectorised pass.
"""
from __future__ import annotations

import torch

from .activation import ActivationOp
from .registry import register
from .scalar_base import BIG, ScalarFn


def relu_lookup(x, offsets, weights):
    """sum_k weights_k relu(x - offsets_k), elementwise in x (the table's original arithmetic)."""
    return torch.matmul(torch.relu(x.unsqueeze(-1) - offsets), weights)


class LookupTable(ScalarFn):
    """f(x) = sum_k w_k relu(x - o_k) with the breakpoints sorted (float64 parameters)."""

    name = "lookup_table"

    def __init__(self, offsets, weights):
        o = torch.as_tensor(offsets, dtype=torch.float64).flatten()
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        order = torch.argsort(o)
        self.o, self.w = o[order], w[order]
        # Slope of segment j (j = 0: left of every breakpoint; j: right of breakpoint j - 1).
        self.seg = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(self.w, 0)])

    def f(self, x):
        o, w = self.o.to(x), self.w.to(x)
        return torch.matmul(torch.relu(x.unsqueeze(-1) - o), w)

    def df(self, x):
        return torch.matmul((x.unsqueeze(-1) > self.o.to(x)).to(x), self.w.to(x))

    def kinks(self, l, u):
        return [self.o[i].to(l) + torch.zeros_like(l) for i in range(self.o.numel())]

    def slope_limits(self, l, u):
        """(kmin, kmax) over the segments that meet [l, u] (closed: a superset, still sound)."""
        o = self.o.to(l)
        inf = torch.full((1,), float("inf"), dtype=l.dtype, device=l.device)
        left, right = torch.cat([-inf, o]), torch.cat([o, inf])
        meets = (left <= u.unsqueeze(-1)) & (right >= l.unsqueeze(-1))
        s = self.seg.to(l).expand(meets.shape)
        kmin = torch.where(meets, s, torch.full_like(s, BIG)).min(-1).values
        kmax = torch.where(meets, s, torch.full_like(s, -BIG)).max(-1).values
        return kmin.clamp(-BIG, BIG), kmax.clamp(-BIG, BIG)

    def intercepts(self, k, l, u):
        """(min, max) over [l, u] of f(x) - k x: at l, u and the breakpoints clamped into [l, u]."""
        l, u = torch.broadcast_tensors(l, u)
        o = self.o.to(l)
        pts = torch.cat([l.unsqueeze(-1), u.unsqueeze(-1), torch.minimum(torch.maximum(o, l.unsqueeze(-1)),
                                                                          u.unsqueeze(-1))], -1)
        vals = self.f(pts) - k.unsqueeze(-1) * pts if torch.is_tensor(k) else self.f(pts) - k * pts
        ok = torch.isfinite(l) & torch.isfinite(u)
        lo, hi = vals.min(-1).values, vals.max(-1).values
        return torch.where(ok, lo, -torch.inf), torch.where(ok, hi, torch.inf)


def _lookup_parts(gm, node):
    """(x, o, w) when `node` is the MatMul of a ReLU lookup table (see the module docstring)."""
    from ..fx_nodes import binary_kind, is_matmul, is_module

    if not is_matmul(gm, node) or len(node.args) != 2:
        return None
    relu, w = node.args
    if not (isinstance(relu, torch.fx.Node) and isinstance(w, torch.fx.Node) and w.op == "get_attr"):
        return None
    if not (is_module(gm, relu, "ReLU") or (relu.op == "call_function" and relu.target is torch.relu)):
        return None
    sub = relu.args[0]
    if not isinstance(sub, torch.fx.Node) or binary_kind(gm, sub) != "sub" or len(sub.args) != 2:
        return None
    unsq, o = sub.args
    if not (isinstance(unsq, torch.fx.Node) and isinstance(o, torch.fx.Node) and o.op == "get_attr"):
        return None
    if not is_module(gm, unsq, "OnnxUnsqueezeStaticAxes") or not _last_axis(unsq, gm.get_submodule(unsq.target)._axes):
        return None
    if any(len(n.users) != 1 for n in (unsq, sub, relu)):
        return None
    ov, wv = _attr(gm, o), _attr(gm, w)
    if ov.dim() != 1 or wv.dim() != 1 or ov.numel() != wv.numel() or ov.numel() < 2:
        return None
    return unsq.args[0], o, w


def _last_axis(unsq, axes) -> bool:
    """The Unsqueeze adds one trailing axis (-1, or the input's rank)."""
    meta = unsq.args[0].meta.get("tensor_meta") if unsq.args else None
    return len(axes) == 1 and (axes[0] == -1 or (meta is not None and axes[0] == len(meta.shape)))


def _attr(gm, node):
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def rewrite_lookup(gm, node, perturbed) -> bool:
    """Replace a ReLU lookup table ending at `node` by one `relu_lookup` call; False if not one."""
    parts = _lookup_parts(gm, node)
    if parts is None or parts[0].name not in perturbed:
        return False
    x, o, w = parts
    g = gm.graph
    with g.inserting_before(node):
        y = g.call_function(relu_lookup, (x, o, w))
    node.replace_all_uses_with(y)
    g.erase_node(node)
    return True


def _build(ctx):
    return ActivationOp(ctx.node.name, LookupTable(ctx.constants[1], ctx.constants[2]))


register("lookup_table", ("Relu", "MatMul"), lambda c: c.is_function(relu_lookup) and c.n_pert == 1, _build)
