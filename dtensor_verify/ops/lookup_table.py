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

import math

import torch

from .. import deadline
from .activation import ActivationOp
from .registry import register
from .scalar_base import BIG, ScalarFn

# The lines' candidate values are computed in blocks of at most this many elements (candidates x
# the broadcast shape of slopes and bounds): a CROWN sweep's lines in one block, an alpha-CROWN
# sweep's (4 slopes per row and neuron) a few candidates at a time, with a clock check between.
SCAN_ELEMENTS = 1 << 21


def relu_lookup(x, offsets, weights):
    """sum_k weights_k relu(x - offsets_k), elementwise in x (the table's original arithmetic)."""
    return torch.matmul(torch.relu(x.unsqueeze(-1) - offsets), weights)


class LookupTable(ScalarFn):
    """f(x) = sum_k w_k relu(x - o_k) with the breakpoints sorted (float64 parameters).

    Evaluated per segment (`f`: f = seg_j x - cut_j on segment j, one `bucketize`), never as the
    table's [..., K] ReLUs: the line rules evaluate f at K + 2 candidates of every (row, neuron) of
    an alpha-CROWN sweep, and the [..., K + 2, K] temporaries of the table's own arithmetic took
    24 GB (OOM) and minutes without a clock check on ml4acopf's 300-bus prop2 (issue 21). The
    candidates are scanned in blocks of bounded size (`_scan`), with a clock check between them."""

    name = "lookup_table"

    def __init__(self, offsets, weights):
        o = torch.as_tensor(offsets, dtype=torch.float64).flatten()
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        order = torch.argsort(o)
        self.o, self.w = o[order], w[order]
        zero = torch.zeros(1, dtype=torch.float64)
        # Slope of segment j (j = 0: left of every breakpoint; j: right of breakpoint j - 1), and
        # its offset: f(x) = seg[j] x - cut[j] there.
        self.seg = torch.cat([zero, torch.cumsum(self.w, 0)])
        self.cut = torch.cat([zero, torch.cumsum(self.w * self.o, 0)])

    def f(self, x):
        j = torch.bucketize(x.detach().contiguous(), self.o.to(x))     # breakpoints strictly below x
        return self.seg.to(x)[j] * x - self.cut.to(x)[j]

    def df(self, x):
        return self.seg.to(x)[torch.bucketize(x.detach().contiguous(), self.o.to(x))]

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

    def _inside(self, l, u):
        """The breakpoints strictly inside [min l, max u] (the others clamp to l or u everywhere);
        on a GPU all of them (choosing would wait for the device: a sync per line computation)."""
        if l.device.type != "cpu":
            return self.o.to(l)
        ends = torch.stack([torch.nan_to_num(l, nan=-torch.inf).min(),
                            torch.nan_to_num(u, nan=torch.inf).max()]).tolist()     # NaN: every one
        o = self.o.to(l)
        return o[(o > ends[0]) & (o < ends[1])]

    def _scan(self, k, l, u):
        """(min, argmin, max, argmax) over [l, u] of f(x) - k x: at l, u and the breakpoints
        clamped into [l, u], in blocks of candidates of at most SCAN_ELEMENTS values each (one
        block for a layer's neurons; a few candidates at a time for an alpha sweep's rows), a
        clock check between blocks. Where several candidates attain the extremum, the first."""
        shape = torch.broadcast_shapes(l.shape, k.shape) if torch.is_tensor(k) else l.shape
        k = k.unsqueeze(-1) if torch.is_tensor(k) else k
        cands = torch.cat([torch.full((2,), torch.nan, dtype=l.dtype, device=l.device), self._inside(l, u)])
        per = max(1, SCAN_ELEMENTS // max(1, math.prod(shape)))
        best = None
        for start in range(0, cands.numel(), per):
            deadline.check_fine()
            c = cands[start:start + per]
            x = torch.minimum(torch.maximum(c, l.unsqueeze(-1)), u.unsqueeze(-1))
            if start == 0:          # the first two candidates: l and u themselves
                x = torch.cat([l.unsqueeze(-1), u.unsqueeze(-1), x[..., 2:]], -1)
            v = self.f(x) - k * x
            x = x.expand_as(v)
            v_lo, i_lo = v.min(-1)
            v_hi, i_hi = v.max(-1)
            found = (v_lo, x.gather(-1, i_lo.unsqueeze(-1)).squeeze(-1),
                     v_hi, x.gather(-1, i_hi.unsqueeze(-1)).squeeze(-1))
            best = found if best is None else _merge(best, found)
        return best

    def intercepts(self, k, l, u):
        """(min, max) over [l, u] of f(x) - k x (exact: see `_scan`); infinite where l or u is.
        Scanned without autograd; where l, u or k carry a gradient (an alpha-CROWN step's
        intermediate bounds), the extremes are evaluated again at their points, as functions of
        l / u where they lie there (the same values; the gradient of the min / max), so the
        step keeps O(shape) for its backward pass instead of every block's temporaries."""
        l, u = torch.broadcast_tensors(l, u)
        grad = torch.is_grad_enabled() and any(torch.is_tensor(t) and t.requires_grad for t in (k, l, u))
        with torch.no_grad():
            lo, x_lo, hi, x_hi = self._scan(k, l, u)
        if grad:
            lo, hi = self._attained(k, l, u, x_lo), self._attained(k, l, u, x_hi)
        ok = torch.isfinite(l) & torch.isfinite(u)
        return torch.where(ok, lo, -torch.inf), torch.where(ok, hi, torch.inf)

    def _attained(self, k, l, u, x):
        """f(x) - k x at the scan's points x, x taken as l or u where it is one (differentiable)."""
        x = torch.where(x == l, l.expand_as(x), torch.where(x == u, u.expand_as(x), x))
        return self.f(x) - k * x

    def touch_points(self, k, l, u, is_lower):
        """Where the line of slope k touches f on [l, u]: the minimiser of f(x) - k x where
        `is_lower` (a bool or a mask broadcasting with k), else the maximiser (alpha-CROWN's
        gradient of the intercept in k)."""
        l, u = torch.broadcast_tensors(l, u)
        with torch.no_grad():
            _, x_lo, _, x_hi = self._scan(k, l, u)
        return torch.where(torch.as_tensor(is_lower, device=x_lo.device), x_lo, x_hi)


def _merge(best, found):
    """The running (min, argmin, max, argmax) of `_scan` and a later block's: earlier ones win ties."""
    v_lo, x_lo, v_hi, x_hi = best
    lower, higher = found[0] < v_lo, found[2] > v_hi
    return (torch.where(lower, found[0], v_lo), torch.where(lower, found[1], x_lo),
            torch.where(higher, found[2], v_hi), torch.where(higher, found[3], x_hi))


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
