"""Scalar functions of the elementwise nonlinear ops, and the one rule that relaxes them all.

A relaxation line with slope k is made sound by its intercept alone: the tightest lower line of
slope k under f on [l, u] has intercept `min_{x in [l, u]} f(x) - k x`, the upper one `max`. The
extremes of `f(x) - k x` lie at l, u, the kinks of f, or where f'(x) = k. Each function lists
those candidates (`stationary(k, l, u)`: every solution of f'(x) = k, extras allowed; `kinks`),
so the intercept is exact for *any* slope: the slope is free to optimise (alpha-CROWN) and never
affects soundness. IBP is the same with k = 0. Computed in float64; rounding to the working
precision is outward.
"""
from __future__ import annotations

import math

import torch

BIG = 1e6          # slopes are clipped to [-BIG, BIG] (any slope is sound; inf is not usable)


class ScalarFn:
    """f, f' and the candidate points; parameters (tensors) broadcast like the per-sample shape."""

    name = "f"
    onnx: tuple[str, ...] = ()

    def f(self, x):
        raise NotImplementedError

    def df(self, x):
        raise NotImplementedError

    def kinks(self, l, u) -> list:
        """Points where f' jumps or changes monotonicity (candidates, and limits of the slope range)."""
        return []

    def stationary(self, k, l, u) -> list:
        """Every x with f'(x) = k (outside [l, u] or extra ones are harmless: they are clamped)."""
        return []

    def in_domain(self, l, u):
        """Where [l, u] lies in f's domain (elsewhere the bounds are infinite)."""
        return torch.ones_like(l, dtype=torch.bool)

    def jumps(self, l, u) -> list:
        """(x, value) pairs of one-sided limits at discontinuities (Sign)."""
        return []

    def wide(self, l, u):
        """Where the candidates may miss an extremum (periodic functions on long intervals): there
        the lines are the constants `range_` instead."""
        return None

    range_ = (-math.inf, math.inf)


def _clamp(x, l, u):
    return torch.minimum(torch.maximum(x, l), u)


def intercepts(fn: ScalarFn, k, l, u):
    """(min, max) over [l, u] of f(x) - k x: the intercepts of the tightest lines of slope k."""
    cands = [l, u] + [_clamp(c, l, u) for c in fn.kinks(l, u)] + [_clamp(c, l, u) for c in fn.stationary(k, l, u)]
    vals = [fn.f(c) - k * c for c in cands]
    for x, v in fn.jumps(l, u):
        inside = (x >= l) & (x <= u)
        vals.append(torch.where(inside, v - k * x, fn.f(l) - k * l))
    stack = torch.stack(torch.broadcast_tensors(*vals))
    stack = torch.nan_to_num(stack, nan=math.nan)
    lo, hi = stack.min(0).values, stack.max(0).values
    ok = fn.in_domain(l, u) & torch.isfinite(lo) & torch.isfinite(hi)
    wide = fn.wide(l, u)
    if wide is not None:
        lo = torch.where(wide & (k == 0), torch.full_like(lo, fn.range_[0]), lo)
        hi = torch.where(wide & (k == 0), torch.full_like(hi, fn.range_[1]), hi)
        ok = ok & ~(wide & (k != 0))
    return torch.where(ok, lo, -math.inf), torch.where(ok, hi, math.inf)


def slope_range(fn: ScalarFn, l, u):
    """(kmin, kmax): the range of f' over [l, u] (one-sided at kinks), clipped to [-BIG, BIG]."""
    if hasattr(fn, "slope_limits"):
        return fn.slope_limits(l, u)
    w = (u - l) * 1e-7
    pts = [l, u, (l + u) / 2]
    for c in fn.kinks(l, u):
        pts += [_clamp(c - w, l, u), _clamp(c + w, l, u)]
    ds = torch.stack(torch.broadcast_tensors(*[fn.df(p) for p in pts]))
    ds = torch.nan_to_num(ds, nan=0.0, posinf=BIG, neginf=-BIG).clamp(-BIG, BIG)
    kmin, kmax = ds.min(0).values, ds.max(0).values
    wide = fn.wide(l, u)
    if wide is not None:
        kmin, kmax = torch.where(wide, 0.0, kmin), torch.where(wide, 0.0, kmax)
    return kmin, kmax


def round_out(b64, dtype, down: bool):
    """float64 intercepts in `dtype`, rounded outward (down for lower lines, up for upper ones)."""
    b = b64.to(dtype)
    if dtype == torch.float64:
        return b
    step = torch.full_like(b, -math.inf if down else math.inf)
    worse = (b.double() > b64) if down else (b.double() < b64)
    return torch.where(worse, torch.nextafter(b, step), b)


def bisect(g, lo, hi, iters=50):
    """A root of the monotone g on [lo, hi] (or the end nearer to one)."""
    glo = g(lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        same = (g(mid) > 0) == (glo > 0)
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    return (lo + hi) / 2


# ----------------------------------------------------------------------------- smooth functions

class Sigmoid(ScalarFn):
    name, onnx = "sigmoid", ("Sigmoid",)
    s_shaped = True

    def f(self, x):
        return torch.sigmoid(x)

    def df(self, x):
        s = torch.sigmoid(x)
        return s * (1 - s)

    def kinks(self, l, u):
        return [torch.zeros_like(l)]

    def stationary(self, k, l, u):
        disc = torch.sqrt((1 - 4 * k).clamp(min=0))
        out = []
        for s in ((1 + disc) / 2, (1 - disc) / 2):
            s = s.clamp(1e-300, 1 - 1e-16)
            out.append(torch.where((k > 0) & (k <= 0.25), torch.log(s) - torch.log1p(-s), l))
        return out


class Tanh(ScalarFn):
    name, onnx = "tanh", ("Tanh",)
    s_shaped = True

    def f(self, x):
        return torch.tanh(x)

    def df(self, x):
        return 1 - torch.tanh(x) ** 2

    def kinks(self, l, u):
        return [torch.zeros_like(l)]

    def stationary(self, k, l, u):
        t = torch.sqrt((1 - k).clamp(min=0)).clamp(max=1 - 1e-16)
        x = torch.atanh(t)
        ok = (k > 0) & (k <= 1)
        return [torch.where(ok, x, l), torch.where(ok, -x, l)]


class Exp(ScalarFn):
    name, onnx = "exp", ("Exp",)

    def f(self, x):
        return torch.exp(x)

    def df(self, x):
        return torch.exp(x)

    def stationary(self, k, l, u):
        return [torch.where(k > 0, torch.log(k.clamp(min=1e-300)), l)]


class Log(ScalarFn):
    name, onnx = "log", ("Log",)

    def f(self, x):
        return torch.log(x)

    def df(self, x):
        return 1 / x

    def in_domain(self, l, u):
        return l > 0

    def stationary(self, k, l, u):
        return [torch.where(k > 0, 1 / k.clamp(min=1e-300), l)]


class Reciprocal(ScalarFn):
    name, onnx = "reciprocal", ("Reciprocal",)

    def f(self, x):
        return 1 / x

    def df(self, x):
        return -1 / (x * x)

    def in_domain(self, l, u):
        return (l > 0) | (u < 0)

    def stationary(self, k, l, u):
        r = torch.sqrt(-1 / k.clamp(max=-1e-300))
        return [torch.where(k < 0, r, l), torch.where(k < 0, -r, l)]


class Sqrt(ScalarFn):
    name, onnx = "sqrt", ("Sqrt",)

    def f(self, x):
        return torch.sqrt(x)

    def df(self, x):
        return 0.5 / torch.sqrt(x)

    def in_domain(self, l, u):
        return l >= 0

    def stationary(self, k, l, u):
        return [torch.where(k > 0, 0.25 / (k * k).clamp(min=1e-300), l)]


class Pow(ScalarFn):
    """x ** p for a constant p (integer p: any x; otherwise x >= 0, or x > 0 for p < 0)."""

    name, onnx = "pow", ("Pow",)

    def __init__(self, p: float):
        self.p = float(p)
        self.integer = self.p == round(self.p)

    def f(self, x):
        return torch.pow(x, self.p)

    def df(self, x):
        return self.p * torch.pow(x, self.p - 1)

    def in_domain(self, l, u):
        if self.integer and self.p >= 0:
            return torch.ones_like(l, dtype=torch.bool)
        if self.integer:
            return (l > 0) | (u < 0)
        return l > 0 if self.p < 0 else l >= 0

    def kinks(self, l, u):
        return [torch.zeros_like(l)]

    def stationary(self, k, l, u):
        r = torch.pow((k / self.p).abs().clamp(min=1e-300), 1 / (self.p - 1))
        return [r, -r]


class Sin(ScalarFn):
    name, onnx = "sin", ("Sin",)
    range_ = (-1.0, 1.0)
    shift = 0.0

    def f(self, x):
        return torch.sin(x + self.shift)

    def df(self, x):
        return torch.cos(x + self.shift)

    def wide(self, l, u):
        return (u - l) > 4 * math.pi

    def _periodic(self, base, l):
        """base + 2 pi n for the n that put it in [l, l + 6 pi]."""
        n0 = torch.ceil((l - base) / (2 * math.pi))
        return [base + 2 * math.pi * (n0 + j) for j in range(3)]

    def kinks(self, l, u):
        # f' = cos is monotone between multiples of pi (of x + shift).
        n0 = torch.ceil((l + self.shift) / math.pi)
        return [(n0 + j) * math.pi - self.shift for j in range(5)]

    def stationary(self, k, l, u):
        a = torch.acos(k.clamp(-1, 1))
        out = []
        for base in (a - self.shift, -a - self.shift):
            out += [torch.where(k.abs() <= 1, c, l) for c in self._periodic(base, l)]
        return out


class Cos(Sin):
    name, onnx = "cos", ("Cos",)
    shift = math.pi / 2


class Softplus(ScalarFn):
    name, onnx = "softplus", ("Softplus",)

    def __init__(self, beta=1.0, threshold=20.0):
        self.beta, self.threshold = float(beta), float(threshold)

    def f(self, x):
        return torch.nn.functional.softplus(x, self.beta, self.threshold)

    def df(self, x):
        return torch.where(x * self.beta > self.threshold, 1.0, torch.sigmoid(self.beta * x))

    def kinks(self, l, u):
        return [torch.full_like(l, self.threshold / self.beta)]

    def stationary(self, k, l, u):
        kk = k.clamp(1e-300, 1 - 1e-16)
        return [torch.where((k > 0) & (k < 1), (torch.log(kk) - torch.log1p(-kk)) / self.beta, l)]


class Gelu(ScalarFn):
    name, onnx = "gelu", ("Gelu",)
    R2 = math.sqrt(2.0)

    def f(self, x):
        return torch.nn.functional.gelu(x)

    def df(self, x):
        return 0.5 * (1 + torch.erf(x / self.R2)) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def kinks(self, l, u):
        return [torch.full_like(l, -self.R2), torch.full_like(l, self.R2)]

    def stationary(self, k, l, u):
        # f' rises on [-sqrt2, sqrt2], falls outside (to 0 at -inf, to 1 at +inf): one root per piece.
        out = []
        for a, b in ((l, torch.minimum(u, torch.full_like(u, -self.R2))),
                     (torch.maximum(l, torch.full_like(l, -self.R2)), torch.minimum(u, torch.full_like(u, self.R2))),
                     (torch.maximum(l, torch.full_like(l, self.R2)), u)):
            b = torch.maximum(a, b)
            out.append(bisect(lambda x: self.df(x) - k, a, b))
        return out


class Erf(ScalarFn):
    name, onnx = "erf", ("Erf",)
    s_shaped = True

    def f(self, x):
        return torch.erf(x)

    def df(self, x):
        return 2 / math.sqrt(math.pi) * torch.exp(-x * x)

    def kinks(self, l, u):
        return [torch.zeros_like(l)]

    def stationary(self, k, l, u):
        c = k * math.sqrt(math.pi) / 2
        ok = (c > 0) & (c <= 1)
        r = torch.sqrt(-torch.log(c.clamp(1e-300, 1)))
        return [torch.where(ok, r, l), torch.where(ok, -r, l)]


# ----------------------------------------------------------------------------- piecewise linear

class Piecewise(ScalarFn):
    """Continuous piecewise-linear f: f - k x is linear between kinks, so l, u and the kinks are
    all the candidates."""

    def __init__(self, points, slopes, value_at_first):
        self.points = points                 # sorted kink positions (floats or tensors)
        self.slopes = slopes                 # len(points) + 1 slopes
        self.v0 = value_at_first             # f(points[0])

    def f(self, x):
        v0 = self.v0.to(x) if isinstance(self.v0, torch.Tensor) else self.v0
        out = v0 + self._s(0, x) * (torch.minimum(x, self._p(0, x)) - self._p(0, x))
        for i in range(1, len(self.points) + 1):
            left = self._p(i - 1, x)
            right = self._p(i, x) if i < len(self.points) else None
            seg = x.clamp(min=left) if right is None else torch.minimum(torch.maximum(x, left), torch.maximum(right, left))
            out = out + self._s(i, x) * (seg - left)
        return out

    def _p(self, i, like):
        p = self.points[i]
        return p.to(like) if isinstance(p, torch.Tensor) else torch.full_like(like, p)

    def df(self, x):
        d = self._s(0, x)
        for i, _ in enumerate(self.points):
            d = torch.where(x > self._p(i, x), self._s(i + 1, x), d)
        return d

    def _s(self, i, like):
        s = self.slopes[i]
        return s.to(like) if isinstance(s, torch.Tensor) else torch.full_like(like, s)

    def kinks(self, l, u):
        return [self._p(i, l) for i in range(len(self.points))]


class LeakyRelu(Piecewise):
    name, onnx = "leaky_relu", ("LeakyRelu", "PRelu")

    def __init__(self, slope):
        super().__init__([0.0], [slope, 1.0], 0.0)
        self.slope = slope

    def crown_slopes(self, l, u, chord, k_lo, k_up):
        """On l < 0 < u: the chord above, and below slope 1 if the chord's slope > 0.5 (else the
        negative side's slope), as auto_LiRPA's (and ReLU's adaptive) rule."""
        cross = (l < 0) & (u > 0)
        a = torch.as_tensor(self.slope, dtype=l.dtype, device=l.device)
        lower = torch.where(chord > 0.5, torch.ones_like(chord), a.expand_as(chord) if a.dim() else a)
        return torch.where(cross, lower, k_lo), torch.where(cross, chord, k_up)


def leaky_relu(slope):
    return LeakyRelu(slope)


def clip(lo, hi):
    """Clip / HardTanh (a side may be None: no bound on that side)."""
    if lo is None:
        return Piecewise([hi], [1.0, 0.0], hi)
    if hi is None:
        return Piecewise([lo], [0.0, 1.0], lo)
    return Piecewise([lo, hi], [0.0, 1.0, 0.0], lo)


def abs_fn():
    return Piecewise([0.0], [-1.0, 1.0], 0.0)


class Sign(ScalarFn):
    name, onnx = "sign", ("Sign",)

    def f(self, x):
        return torch.sign(x)

    def df(self, x):
        return torch.zeros_like(x)

    def kinks(self, l, u):
        return [torch.zeros_like(l)]

    def jumps(self, l, u):
        # The one-sided limits at 0 are approached only from a side the interval reaches.
        z = torch.zeros_like(l)
        return [(z, torch.where(l < 0, -1.0, 0.0).to(l)), (z, torch.where(u > 0, 1.0, 0.0).to(l))]

    def slope_limits(self, l, u):
        return torch.zeros_like(l), torch.where((l < 0) & (u > 0), 2 / (u - l).clamp(min=1e-12), 0.0)


class Floor(ScalarFn):
    """floor: constant pieces, jumps up by 1 at each integer. floor(x) - k x is monotone on each
    piece and its values at the piece ends are monotone in the integer, so its extremes on [l, u]
    lie at l, u, or at (limits at) the first / last integer of the interval."""

    name, onnx = "floor", ("Floor",)

    def f(self, x):
        return torch.floor(x)

    def df(self, x):
        return torch.zeros_like(x)

    def kinks(self, l, u):
        return [torch.floor(u), torch.ceil(l)]

    def jumps(self, l, u):
        # Left limits at the first and the last integer in (l, u]: with the kinks, every slope's
        # extremes (k < 0, 0 <= k <= 1, k > 1) are among the candidates.
        n1, n2 = torch.floor(l) + 1, torch.floor(u)
        return [(n1, n1 - 1), (n2, n2 - 1)]

    def slope_limits(self, l, u):
        return torch.zeros_like(l), torch.where(torch.floor(u) > torch.floor(l), 1.0, 0.0).to(l)


class Ceil(Floor):
    """ceil: constant pieces, jumps at integers; extremes at l, u or (limits at) the first / last
    integer of the interval, as for floor."""

    name, onnx = "ceil", ("Ceil",)

    def f(self, x):
        return torch.ceil(x)

    def kinks(self, l, u):
        return [torch.ceil(l), torch.floor(u)]

    def jumps(self, l, u):
        # Right limits at the first and the last integer in [l, u).
        n1, n2 = torch.ceil(l), torch.ceil(u) - 1
        return [(n1, n1 + 1), (n2, n2 + 1)]

    def slope_limits(self, l, u):
        return torch.zeros_like(l), torch.where(torch.ceil(u) > torch.ceil(l), 1.0, 0.0).to(l)
