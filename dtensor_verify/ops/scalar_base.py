"""The base of the scalar functions of the elementwise nonlinear ops, and the one rule that relaxes them all.

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
    if hasattr(fn, "intercepts"):          # a function with its own (vectorised, exact) rule
        return fn.intercepts(k, l, u)
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
    # nextafter has no derivative (alpha-CROWN differentiates through intercepts): add the exact
    # one-ulp difference of the detached value, so the value is nextafter's and the gradient b's.
    bd = b.detach()
    return torch.where(worse, b + (torch.nextafter(bd, step) - bd), b)


def bisect(g, lo, hi, iters=50):
    """A root of the monotone g on [lo, hi] (or the end nearer to one)."""
    glo = g(lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        same = (g(mid) > 0) == (glo > 0)
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    return (lo + hi) / 2
