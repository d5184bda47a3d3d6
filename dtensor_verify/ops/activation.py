"""Elementwise nonlinear ops (Sigmoid, Tanh, Exp, Log, Sin, GELU, LeakyReLU, Clip, ...) with
sound linear relaxations whose slopes alpha-CROWN optimises.

For each neuron with input bounds [l, u] the op uses a lower line `k_lo x + b_lo <= f(x)` and an
upper line `f(x) <= k_up x + b_up`. The intercepts are exact for the slope (`intercepts`: the
minimum / maximum of f(x) - k x over [l, u]), so every slope gives a sound bound. CROWN picks,
per neuron, among a few slopes (chord, tangents at l, u and the midpoint, the extremes of f') the
line that is tightest at the midpoint. alpha-CROWN parametrises each slope as
`k = kmin + t (kmax - kmin)`, t in [0, 1] ([kmin, kmax] = the range of f' on [l, u]), with
four t per (bound row, neuron): lower / upper line for the lower bound's A and for the upper's.
"""
from __future__ import annotations

import torch

from .base import BackwardResult, BoundOp, Capabilities, per_row_sum
from .scalar_functions import intercepts, round_out, slope_range


def _safe_product(A, b):
    """A * b with 0 * inf = 0 (an infinite intercept only matters where A uses it)."""
    return torch.where(A == 0, torch.zeros((), dtype=A.dtype, device=A.device), A * b)


class ActivationOp(BoundOp):
    kind = "activation"
    needs_input_bounds = True
    is_affine = False
    has_alpha = True
    n_alpha = 4                  # [lower line, upper line] x [lA side, uA side]
    # Neuron i reads input neuron i only; it holds no weights (constants such as PReLU slopes or
    # Max's constant are captured when the op is built).
    caps = Capabilities(elementwise=True)

    def __init__(self, name, fn, module=None):
        super().__init__(name, module)
        self.fn = fn
        self.kind = fn.name

    def to(self, device):
        for key, value in list(vars(self.fn).items()):
            if isinstance(value, torch.Tensor):
                setattr(self.fn, key, value.to(device))
        if isinstance(getattr(self.fn, "v0", None), torch.Tensor):
            self.fn.v0 = self.fn.v0.to(device)
        for key in ("points", "slopes"):
            seq = getattr(self.fn, key, None)
            if seq is not None:
                setattr(self.fn, key, [v.to(device) if isinstance(v, torch.Tensor) else v for v in seq])

    def forward(self, x):
        return self.fn.f(x)

    def ibp(self, interval):
        l, u = interval[0].double(), interval[1].double()
        lo, hi = intercepts(self.fn, torch.zeros_like(l), l, u)
        return round_out(lo, interval[0].dtype, True), round_out(hi, interval[0].dtype, False)

    # -- lines ------------------------------------------------------------------------------
    def default_slopes(self, l, u):
        """CROWN's per-neuron (k_lo, k_up): of a few candidate slopes, the lines tightest at the midpoint."""
        f = self.fn
        mid = (l + u) / 2
        width = (u - l)
        chord = torch.where(width > 1e-12, (f.f(u) - f.f(l)) / width.clamp(min=1e-12), f.df(mid))
        kmin, kmax = slope_range(f, l, u)
        cands = [chord, f.df(l), f.df(u), f.df(mid), kmin, kmax]
        # Kept in f's slope range: some candidate sets (Floor's) are complete only there.
        cands = [torch.minimum(torch.maximum(torch.nan_to_num(c, nan=0.0, posinf=1e6, neginf=-1e6), kmin), kmax)
                 for c in cands]
        best_lo = best_up = None
        for k in cands:
            b_lo, b_up = intercepts(f, k, l, u)
            v_lo, v_up = k * mid + b_lo, k * mid + b_up
            if best_lo is None:
                best_lo, k_lo, best_up, k_up = v_lo, k, v_up, k
                continue
            better_lo, better_up = v_lo > best_lo, v_up < best_up
            best_lo, k_lo = torch.where(better_lo, v_lo, best_lo), torch.where(better_lo, k, k_lo)
            best_up, k_up = torch.where(better_up, v_up, best_up), torch.where(better_up, k, k_up)
        if getattr(f, "s_shaped", False):
            k_lo, k_up = _s_shaped_slopes(f, l, u, chord, k_lo, k_up)
        if hasattr(f, "crown_slopes"):
            k_lo, k_up = f.crown_slopes(l, u, chord, k_lo, k_up)
        return k_lo, k_up

    def init_alpha(self, lower, upper):
        """t of CROWN's slopes, [4, B, *S]."""
        l, u = lower.double(), upper.double()
        k_lo, k_up = self.default_slopes(l, u)
        kmin, kmax = slope_range(self.fn, l, u)
        span = (kmax - kmin)

        def t_of(k):
            return torch.where(span > 0, (k - kmin) / span.clamp(min=1e-300), 0.0).clamp(0, 1)

        t = torch.stack([t_of(k_lo), t_of(k_up)]).to(lower.dtype)
        return torch.cat([t, t])

    def _lines(self, l, u, t_lo=None, t_up=None, dtype=torch.float32):
        """(k_lo, b_lo, k_up, b_up) in `dtype`; from t (alpha) or CROWN's default."""
        if t_lo is None:
            k_lo, k_up = self.default_slopes(l, u)
        else:
            kmin, kmax = slope_range(self.fn, l, u)
            k_lo = kmin + t_lo.double() * (kmax - kmin)
            k_up = kmin + t_up.double() * (kmax - kmin)
        b_lo, _ = intercepts(self.fn, k_lo.detach(), l, u)
        _, b_up = intercepts(self.fn, k_up.detach(), l, u)
        # Envelope theorem: d b / d k = -x* (x* the touching point): keep that gradient for alpha.
        if k_lo.requires_grad or k_up.requires_grad:
            b_lo = b_lo + _touch_grad(self.fn, k_lo, l, u, lower=True)
            b_up = b_up + _touch_grad(self.fn, k_up, l, u, lower=False)
        k_lo, k_up = k_lo.to(dtype), k_up.to(dtype)
        return k_lo, round_out(b_lo, dtype, True), k_up, round_out(b_up, dtype, False)

    def _alpha_lines(self, l, u, alpha, sides, dtype):
        """`_lines` of the given sides (0: lA, 1: uA) from a plain [4, B, K, *S] alpha in one pass
        over the stacked slopes: the same values, a fraction of the ops (an alpha-CROWN step runs
        this op in every sweep that crosses it). Returns {side: (k_lo, b_lo, k_up, b_up)}."""
        t = alpha if len(sides) == 2 else alpha[2 * sides[0]:2 * sides[0] + 2]
        kmin, kmax = slope_range(self.fn, l, u)
        k = kmin + t.double() * (kmax - kmin)                # rows: lower line, upper line per side
        is_lower = (torch.arange(k.shape[0], device=k.device) % 2 == 0).view(-1, *([1] * (k.dim() - 1)))
        lo, hi = intercepts(self.fn, k.detach(), l, u)
        b = torch.where(is_lower, lo, hi)
        if k.requires_grad:
            b = b + _touch_grad_lines(self.fn, k, l, u, is_lower)
        k = k.to(dtype)
        b_lo, b_up = round_out(b[0::2], dtype, True), round_out(b[1::2], dtype, False)
        return {side: (k[2 * i], b_lo[i], k[2 * i + 1], b_up[i]) for i, side in enumerate(sides)}

    def backward(self, lA, uA, input_bounds, alpha=None, beta=None):
        """`beta` (optional, branch and bound's general splits): (multipliers [B, 2, K, *S] >= 0,
        mask [B, *S] of split neurons): the Lagrangian terms of `l - z <= 0` and `z - u <= 0` of
        each split neuron's interval (valid on the domain), as beta-CROWN does for ReLU splits."""
        lower, upper = input_bounds[0]
        l, u = lower.double().unsqueeze(1), upper.double().unsqueeze(1)
        dtype = (lA if lA is not None else uA).dtype
        lines = None
        if type(alpha) is torch.Tensor and alpha.shape[0] == 4:     # plain tensor (not a DTensor / pair)
            lines = self._alpha_lines(l, u, alpha, [s for s, A in enumerate((lA, uA)) if A is not None], dtype)
        result_A, biases = [], []
        for side, A in enumerate((lA, uA)):
            if A is None:
                result_A.append(None)
                biases.append(0.0)
                continue
            if lines is not None:
                k_lo, b_lo, k_up, b_up = lines[side]
            elif alpha is not None:
                k_lo, b_lo, k_up, b_up = self._lines(l, u, alpha[2 * side], alpha[2 * side + 1], dtype)
            else:
                k_lo, b_lo, k_up, b_up = self._lines(l, u, dtype=dtype)
            pos, neg = A.clamp(min=0), A.clamp(max=0)
            if side == 0:       # lower bound: A+ takes the lower line, A- the upper one
                result_A.append(pos * k_lo + neg * k_up)
                biases.append(per_row_sum(_safe_product(pos, b_lo) + _safe_product(neg, b_up)))
            else:
                result_A.append(pos * k_up + neg * k_lo)
                biases.append(per_row_sum(_safe_product(pos, b_up) + _safe_product(neg, b_lo)))
            if beta is not None:
                result_A[side], extra = _split_terms(result_A[side], beta, lower, upper, side == 0)
                biases[side] = biases[side] + extra
        return BackwardResult([tuple(result_A)], biases[0], biases[1])


def _split_terms(A, beta, lower, upper, lower_side: bool):
    """A lower bound of `A f(z)` holds with `+ b_lo (l - z) + b_up (z - u)` added (both terms <= 0
    on the domain, b >= 0), an upper bound with them subtracted: (new A at z, bias [B, K])."""
    mult, mask = beta
    m = mask.unsqueeze(1).to(torch.bool)
    b_lo, b_up = mult[:, 0], mult[:, 1]
    zero = torch.zeros((), dtype=A.dtype, device=A.device)
    l = torch.where(m, lower.unsqueeze(1).to(A.dtype), zero)
    u = torch.where(m, upper.unsqueeze(1).to(A.dtype), zero)
    coef = torch.where(m, b_up - b_lo, zero)
    bias = per_row_sum(torch.where(m, b_lo * l - b_up * u, zero))
    return (A + coef, bias) if lower_side else (A - coef, -bias)


def _touch_grad(fn, k, l, u, lower: bool):
    """A zero-valued term whose gradient in k is -x* (the point where the line touches f)."""
    from .scalar_functions import _clamp

    if hasattr(fn, "touch_points"):        # one candidate at a time (ops/lookup_table.py)
        return -(k - k.detach()) * fn.touch_points(k.detach(), l, u, lower)
    with torch.no_grad():
        kd = k.detach()
        cands = [l, u] + [_clamp(c, l, u) for c in fn.kinks(l, u)] + [_clamp(c, l, u) for c in fn.stationary(kd, l, u)]
        cands = torch.stack(torch.broadcast_tensors(*cands))
        vals = fn.f(cands) - kd * cands
        vals = torch.nan_to_num(vals, nan=float("inf") if lower else -float("inf"))
        cands = cands.expand_as(vals)
        idx = vals.argmin(0) if lower else vals.argmax(0)
        x_star = cands.gather(0, idx.unsqueeze(0)).squeeze(0)
    return -(k - kd) * x_star


def _touch_grad_lines(fn, k, l, u, is_lower):
    """`_touch_grad` of stacked slopes [n, ...] at once: lower lines where `is_lower`, upper ones
    elsewhere (the same touching points, one candidate evaluation)."""
    from .scalar_functions import _clamp

    if hasattr(fn, "touch_points"):        # one candidate at a time (ops/lookup_table.py)
        return -(k - k.detach()) * fn.touch_points(k.detach(), l, u, is_lower)
    with torch.no_grad():
        kd = k.detach()
        cands = [l, u] + [_clamp(c, l, u) for c in fn.kinks(l, u)] + [_clamp(c, l, u) for c in fn.stationary(kd, l, u)]
        cands = torch.stack(torch.broadcast_tensors(*cands, kd)[:-1])     # [n_cands, n, B, K, *S]
        vals = fn.f(cands) - kd * cands
        # The first minimiser of f - k x (lower lines) or maximiser (upper: the minimiser of its
        # negation), NaN never chosen: argmin / argmax's choice, by a running comparison (a
        # reduction over the short leading dim is slow on CPUs).
        signed = torch.nan_to_num(torch.where(is_lower, vals, -vals), nan=float("inf"))
        best, x_star = signed[0], cands[0]
        for i in range(1, signed.shape[0]):
            better = signed[i] < best
            best, x_star = torch.where(better, signed[i], best), torch.where(better, cands[i], x_star)
    return -(k - kd) * x_star


def _s_shaped_slopes(f, l, u, chord, k_lo, k_up):
    """For an S-shaped f (convex below 0, concave above) on l < 0 < u, auto_LiRPA's lines: below,
    the chord if f'(l) > chord, else the tangent through (u', f(u')); above, the chord if
    f'(u) > chord, else the tangent through (l', f(l')). u' and l' are u and l rounded outward to
    auto_LiRPA's grid of 0.01 (its precomputed table), so the slopes are the same as its."""
    from .scalar_functions import bisect

    cross = (l < 0) & (u > 0)
    step = 0.01
    u_grid = (torch.trunc(u.clamp(min=0) / step) + 1) * step
    l_grid = -(torch.trunc((-l).clamp(min=0) / step) + 1) * step

    def through(p):
        return lambda d: f.f(d) + f.df(d) * (p - d) - f.f(p)

    far = torch.full_like(l, 500.0)
    d_lo = bisect(through(u_grid), -far, torch.zeros_like(l), iters=60)
    d_up = bisect(through(l_grid), torch.zeros_like(u), far, iters=60)
    lo = torch.where(chord < f.df(l), chord, f.df(d_lo))
    up = torch.where(chord < f.df(u), chord, f.df(d_up))
    return torch.where(cross, lo, k_lo), torch.where(cross, up, k_up)
