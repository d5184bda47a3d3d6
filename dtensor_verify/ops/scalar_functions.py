"""Scalar functions of the elementwise nonlinear ops, and the one rule that relaxes them all.

The rule and the base class live in `scalar_base`; the S-shaped functions (and GELU) in
`scalar_s_shaped`, the periodic ones in `scalar_periodic`, the piecewise ones in
`scalar_piecewise`; the smooth monotone ones (exp, log, reciprocal, sqrt, pow, softplus) here.
Every function is importable from this module, as before.
"""
from __future__ import annotations

import torch

from .scalar_base import BIG, ScalarFn, _clamp, bisect, intercepts, round_out, slope_range  # noqa: F401
from .scalar_periodic import Cos, Sin  # noqa: F401
from .scalar_piecewise import Ceil, Floor, LeakyRelu, Piecewise, Sign, abs_fn, clip, leaky_relu  # noqa: F401
from .scalar_s_shaped import Erf, Gelu, Sigmoid, Tanh  # noqa: F401


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
