"""Periodic scalar functions (sin, cos): candidates from the periods inside [l, u]; on intervals
longer than two periods the lines are the constants [-1, 1]. See `scalar_base`."""
from __future__ import annotations

import math

import torch

from .scalar_base import ScalarFn


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
