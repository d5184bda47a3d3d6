"""S-shaped scalar functions (sigmoid, tanh, erf) and GELU: convex below a point, concave above
(GELU: f' rises on [-sqrt 2, sqrt 2], falls outside). See `scalar_base` for the relaxation rule."""
from __future__ import annotations

import math

import torch

from .scalar_base import ScalarFn, bisect


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
