"""LayerNorm's product n = c * r with the coupling of c and r (a joint relaxation; docs/OPS.md).

In LayerNorm (ops/decompose.py, ops/layernorm.py) c = x - mean(x) and r = rsqrt(mean(c^2) + eps)
over a group of N entries. McCormick's planes for c * r treat c_i and r as independent: every
corner of the box [l_i, u_i] x [rl, ru] counts. They are not independent: with
S_i = sum_{j != i} c_j^2 (the other entries' contribution),

    r = rsqrt((c_i^2 + S_i) / N + eps),    S_i >= max(Smin_i, c_i^2 / (N - 1)),    S_i <= Smax_i,

where Smin_i / Smax_i are the least / largest sum of the other entries' squares on their
intervals (sum_j min / max over [l_j, u_j] of c_j^2), and c_i^2 / (N - 1) holds because the
others sum to -c_i (Cauchy-Schwarz). So, for each c_i, r lies in [rho_lo(c_i), rho_hi(c_i)] with

    rho_hi(c) = rsqrt((c^2 + max(Smin, c^2 / (N - 1))) / N + eps),
    rho_lo(c) = rsqrt((c^2 + Smax) / N + eps),

both decreasing in |c|. The feasible set F_i of (c_i, r) is the box less the corners where |c|
is large and r large (or small). It is covered by a *staircase*: [l, u] is cut into pieces (0 a
cut when l < 0 < u); on a piece [a, b], r lies in [max(rl, rho_lo(far)), min(ru, rho_hi(near))]
(near / far: the piece's point nearest to / farthest from 0). F_i lies in the union of these small
boxes, and the bilinear function c r - sx c - sr r takes its extremes over a box at its corners,
so for *any* slopes (sx, sr)

    n >= sx c + sr r + min over the staircase's corners of (c r - sx c - sr r)

(and the max for an upper plane) is sound: the intercept is exact for the staircase, as the scalar
functions' intercepts are for their intervals (docs/OPS.md). The slopes: McCormick's four planes
are each tight along a whole edge c = l or c = u of the box, which F keeps, so with McCormick's
slopes the staircase cannot help; the planes here take McCormick's formulas with the r range at
that end instead of [rl, ru] (lower: (r_lo(u), l) and (r_hi(l), u); upper: (r_hi(u), l) and
(r_lo(l), u), r_lo(c) / r_hi(c) = the r range at c), which equal McCormick's where the coupling
does not bind. CROWN takes, per element and side, the candidate plane (of both pairs) with the
least mean gap to c r over the staircase's corners (`choose_pair`); alpha-CROWN a convex
combination of it and the other plane of its pair (any slopes are sound: the intercept is
recomputed for them; weight 1 is CROWN's). The box of n is the min / max of c r over the
staircase's corners.

Rounding: the network computes mean(c^2) and rsqrt in floating point, so rho_hi / rho_lo are
widened by a relative 8 (N + 8) eps; each corner's value by 4 eps of its terms' magnitudes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import BackwardResult, per_row_sum
from .products import MulOp, _lift, _sum_to
from .registry import register

# False: LayerNorm's product is the plain McCormick Mul (the rule before; scripts/bench_layernorm.py).
JOINT = True
PIECES = 8           # pieces of [l, u] in the staircase (0 is one more cut when l < 0 < u)
# False: r's range ignores c (the staircase is the box): only the per-element choice of McCormick's
# planes is left (an ablation for scripts/bench_layernorm.py).
COUPLING = True


def layernorm_product(c, r, dims, eps: float):
    """c * r (a marker: c is LayerNorm's centred value over `dims`, r = rsqrt(mean(c^2) + eps))."""
    return c * r


@dataclass
class Staircase:
    """Corners of the small boxes covering F ([M, B, *S] each) and the r range at c = l, c = u."""
    c: torch.Tensor
    r: torch.Tensor
    r_at_l: tuple
    r_at_u: tuple


def _others(sq, dims):
    """Per entry, the sum of `sq` over the other entries of its group."""
    return (sq.sum(dims, keepdim=True) - sq).clamp(min=0.0)


def coupling(lc, uc, dims, n: int, eps: float, margin: float):
    """rho_lo(c) and rho_hi(c) (functions of a tensor of c values shaped like lc), float64."""
    dist = torch.maximum(torch.maximum(lc, -uc), torch.zeros_like(lc))
    far = torch.maximum(lc.abs(), uc.abs())
    smin, smax = _others(dist * dist, dims), _others(far * far, dims)

    def rho_hi(c):
        if not COUPLING:
            return torch.full_like(c, float("inf"))
        c2 = c * c
        s = torch.maximum(smin, c2 / (n - 1)) if n > 1 else smin
        return torch.rsqrt((c2 + s) / n + eps) * (1 + margin)

    def rho_lo(c):
        if not COUPLING:
            return torch.zeros_like(c)
        return torch.rsqrt((c * c + smax) / n + eps) * (1 - margin)

    return rho_lo, rho_hi


def _r_range(lr, ur, lo, hi):
    """[max(rl, lo), min(ru, hi)] (never empty)."""
    a = torch.maximum(lr, lo)
    return a, torch.maximum(torch.minimum(ur, hi), a)


def staircase(lc, uc, lr, ur, dims, eps: float, pieces: int = PIECES) -> Staircase:
    """The staircase of (c, r) over [lc, uc] (all [B, *S], r's bounds broadcast), in lc's dtype."""
    dtype = lc.dtype
    n = math.prod(lc.shape[d] for d in dims)
    margin = 8 * (n + 8) * torch.finfo(dtype).eps
    lc, uc, lr, ur = (t.double() for t in (lc, uc, lr, ur))
    rho_lo, rho_hi = coupling(lc, uc, dims, n, eps, margin)
    steps = torch.linspace(0, 1, pieces + 1, dtype=lc.dtype, device=lc.device).reshape(-1, *([1] * lc.dim()))
    knots = lc + (uc - lc) * steps
    knots = torch.cat([knots[:1], knots[1:-1], uc.unsqueeze(0), torch.minimum(torch.maximum(
        torch.zeros_like(lc), lc), uc).unsqueeze(0)]).sort(0).values
    a, b = knots[:-1], knots[1:]
    near = torch.minimum(torch.maximum(torch.zeros_like(a), a), b)
    far = torch.maximum(a.abs(), b.abs())
    r_lo, r_hi = _r_range(lr, ur, rho_lo(far), rho_hi(near))
    cs = torch.cat([a, a, b, b])
    rs = torch.cat([r_lo, r_hi, r_lo, r_hi])
    at_l = _r_range(lr, ur, rho_lo(lc), rho_hi(lc))
    at_u = _r_range(lr, ur, rho_lo(uc), rho_hi(uc))
    # r values rounded up / down to the dtype stay inside the widened rho's
    return Staircase(cs.to(dtype), rs.to(dtype), tuple(t.to(dtype) for t in at_l), tuple(t.to(dtype) for t in at_u))


def intercept(st: Staircase, sx, sr, lower: bool):
    """min (lower) / max (upper) over the staircase's corners of c r - sx c - sr r, rounded
    outward. sx, sr: [B, K, *S]; the corners get a row dim. NaN (infinite bounds) -> -inf / inf."""
    tiny = 4 * torch.finfo(sx.dtype).eps
    best = None
    for c, r in zip(st.c.unsqueeze(2), st.r.unsqueeze(2)):
        cr, xc, yr = c * r, sx * c, sr * r
        err = tiny * (cr.abs() + xc.abs() + yr.abs())
        g = cr - xc - yr - err if lower else cr - xc - yr + err
        best = g if best is None else (torch.minimum(best, g) if lower else torch.maximum(best, g))
    bad = float("-inf") if lower else float("inf")
    return torch.where(torch.isnan(best), torch.full_like(best, bad), best)


def _pairs(st: Staircase, lc, uc, lr, ur, lower: bool):
    """The candidate plane pairs' slopes (sx, sr), [B, *S] each: McCormick's, and the same formulas
    with the r range at each end of [l, u] (equal where the coupling does not bind)."""
    (l_lo, l_hi), (u_lo, u_hi) = st.r_at_l, st.r_at_u
    if lower:
        return (((lr, lc), (ur, uc)), ((u_lo, lc), (l_hi, uc)))
    return (((ur, lc), (lr, uc)), ((u_hi, lc), (l_lo, uc)))


def _mean_gap(st: Staircase, sx, sr, lower: bool):
    """Mean over the staircase's corners of the gap between c r and the plane (exact intercept)."""
    d = intercept(st, sx.unsqueeze(1), sr.unsqueeze(1), lower).squeeze(1)
    return (st.c * st.r - st.c * sx - st.r * sr - d).abs().nan_to_num(float("inf")).mean(0)


def choose_pair(st: Staircase, lc, uc, lr, ur, lower: bool):
    """(first, second) plane slopes per element, [B, 1, *S]: of the four candidates (two pairs) the
    plane with the least mean gap on the staircase, then the other plane of its pair."""
    pairs = _pairs(st, lc, uc, lr, ur, lower)
    cands = [(p, q) for pair in pairs for p, q in (pair, pair[::-1])]
    gaps = torch.stack([_mean_gap(st, *p, lower) for p, _ in cands])
    pick = gaps.argmin(0)
    first = [torch.zeros_like(lc), torch.zeros_like(lc)]
    second = [torch.zeros_like(lc), torch.zeros_like(lc)]
    for k, (p, q) in enumerate(cands):
        for out, src in ((first, p), (second, q)):
            for i in (0, 1):
                out[i] = torch.where(pick == k, src[i], out[i])
    return tuple(t.unsqueeze(1) for t in first), tuple(t.unsqueeze(1) for t in second)


def slopes(pair, w):
    """The pair's slopes (sx, sr) combined with weight w in [0, 1] (None: the first plane)."""
    first, second = pair
    if w is None:
        return first
    return tuple(w * f + (1 - w) * s for f, s in zip(first, second))


class LayerNormProductOp(MulOp):
    """n = c * r of LayerNorm (c centred over `dims`, r its rsqrt); see the module docstring."""

    kind = "layernorm_product"

    def __init__(self, name: str, dims, eps: float):
        super().__init__(name)
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        self.dims, self.eps = tuple(sorted(dims)), float(eps)

    def _staircase(self, c_bounds, r_bounds):
        s = self.out_shape
        lc, uc = (_lift(t, s) for t in c_bounds)
        lr, ur = (_lift(t, s).expand_as(lc) for t in r_bounds)
        return lc, uc, lr, ur, staircase(lc, uc, lr, ur, self.dims, self.eps)

    def ibp(self, x, y):
        st = self._staircase(x, y)[-1]
        cr = st.c * st.r
        err = 4 * torch.finfo(cr.dtype).eps * cr.abs()
        lo, up = (cr - err).amin(0), (cr + err).amax(0)
        return lo.nan_to_num(float("-inf")), up.nan_to_num(float("inf"))

    def backward(self, lA, uA, input_bounds, alpha=None):
        s = self.out_shape
        lc, uc, lr, ur, st = self._staircase(*input_bounds)
        pairs = choose_pair(st, lc, uc, lr, ur, True), choose_pair(st, lc, uc, lr, ur, False)
        out_A, biases = [[None, None], [None, None]], [0.0, 0.0]
        for side, A in enumerate((lA, uA)):
            if A is None:
                continue
            a, b = (None, None) if alpha is None else (alpha[2 * side], alpha[2 * side + 1])
            (x_lo, y_lo), (x_up, y_up) = slopes(pairs[0], a), slopes(pairs[1], b)
            d_lo, d_up = intercept(st, x_lo, y_lo, True), intercept(st, x_up, y_up, False)
            pos, neg = A.clamp(min=0), A.clamp(max=0)
            lo_side, up_side = (pos, neg) if side == 0 else (neg, pos)
            out_A[0][side] = _sum_to(lo_side * x_lo + up_side * x_up, self.in_shapes[0], s)
            out_A[1][side] = _sum_to(lo_side * y_lo + up_side * y_up, self.in_shapes[1], s)
            biases[side] = per_row_sum(_times(lo_side, d_lo) + _times(up_side, d_up))
        return BackwardResult([tuple(out_A[0]), tuple(out_A[1])], biases[0], biases[1])


def _times(A, d):
    """A * d with 0 * inf = 0 (a zero coefficient does not meet an infinite intercept)."""
    return torch.where(A == 0, torch.zeros_like(A), A * d)


def product_node(graph, c, r, dims, eps: float):
    """The fx node of LayerNorm's product c * r: the joint rule (JOINT) or a plain Mul."""
    import operator

    if JOINT:
        return graph.call_function(layernorm_product, (c, r, tuple(dims), float(eps)))
    return graph.call_function(operator.mul, (c, r))


register("layernorm_product", ("LayerNormalization",),
         lambda c: c.is_function(layernorm_product) and c.n_pert == 2,
         lambda c: LayerNormProductOp(c.node.name, c.node.args[2], c.node.args[3]))
