"""Piecewise scalar functions (LeakyReLU, PReLU, Clip, Abs, Max / Min with a constant, Sign,
Floor, Ceil): kinks and jumps as candidates. See `scalar_base`."""
from __future__ import annotations

import torch

from .scalar_base import ScalarFn


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
        # (No left limit at floor(u) when it is not above l: e.g. floor on [0, 0] is 0, not [-1, 0].)
        n1, n2 = torch.floor(l) + 1, torch.floor(u)
        return [(n1, n1 - 1), (n2, torch.where(n2 > l, n2 - 1, n2))]

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
        # (No right limit at ceil(l) when it is not below u: ceil on [0, 0] is 0, not [0, 1].)
        n1, n2 = torch.ceil(l), torch.ceil(u) - 1
        return [(n1, torch.where(n1 < u, n1 + 1, n1)), (n2, n2 + 1)]

    def slope_limits(self, l, u):
        return torch.zeros_like(l), torch.where(torch.ceil(u) > torch.ceil(l), 1.0, 0.0).to(l)
