"""Rules of the elementwise nonlinear ops (`ActivationOp` with a `ScalarFn`)."""
from __future__ import annotations

import torch
from torch import nn

from . import scalar_functions as sf
from .activation import ActivationOp
from .registry import register

_FUNCTIONS = {torch.exp: sf.Exp, torch.log: sf.Log, torch.sin: sf.Sin, torch.cos: sf.Cos, torch.tanh: sf.Tanh,
              torch.sigmoid: sf.Sigmoid, torch.sqrt: sf.Sqrt, torch.reciprocal: sf.Reciprocal, torch.erf: sf.Erf,
              torch.sign: sf.Sign, torch.abs: lambda: _named(sf.abs_fn(), "abs"),
              torch.square: lambda: sf.Pow(2), torch.rsqrt: lambda: sf.Pow(-0.5), torch.floor: sf.Floor,
              torch.ceil: sf.Ceil}
_MODULES = {"Sigmoid": sf.Sigmoid, "Tanh": sf.Tanh, "OnnxErf": sf.Erf, "OnnxSqrt": sf.Sqrt,
            "OnnxReciprocal": sf.Reciprocal}


def _named(fn, name):
    fn.name = name
    return fn


def _per_sample(ctx, value):
    """A constant broadcast to the node's per-sample shape (it must not grow the input)."""
    out = tuple(ctx.node.meta["tensor_meta"].shape)
    inp = tuple(ctx.perturbed[0].meta["tensor_meta"].shape)
    if out != inp:
        raise ctx.unsupported(f"a constant that broadcasts the input {list(inp)} up to {list(out)}")
    t = torch.as_tensor(value, dtype=torch.float64).detach()
    return torch.broadcast_to(t, out)[0].clone()


def _scalar_fn(ctx):
    m, t = ctx.module, ctx.module_type
    fn = getattr(m, "function", None) if m is not None else None
    if t == "OnnxFunction" and fn in _FUNCTIONS:
        return _FUNCTIONS[fn]()
    if t in _MODULES:
        return _MODULES[t]()
    if t == "OnnxRound":
        rf = m.round_function
        if rf in (torch.floor, torch.ceil):
            return sf.Floor() if rf is torch.floor else sf.Ceil()
        return None
    if ctx.node.op == "call_function" and ctx.node.target in _FUNCTIONS:
        return _FUNCTIONS[ctx.node.target]()
    if isinstance(m, nn.LeakyReLU):
        return _named(sf.leaky_relu(float(m.negative_slope)), "leaky_relu")
    if isinstance(m, (nn.Hardtanh, nn.ReLU6)):
        return _named(sf.clip(float(m.min_val), float(m.max_val)), "clip")
    if t == "OnnxClip":
        lo = None if m.min_val is None else float(m.min_val)
        hi = None if m.max_val is None else float(m.max_val)
        if lo is not None and hi is not None and lo > hi:
            raise ctx.unsupported(f"Clip with min {lo} > max {hi}")
        return _named(sf.clip(lo, hi), "clip")
    if isinstance(m, nn.Softplus):
        return sf.Softplus(m.beta, m.threshold)
    if isinstance(m, nn.GELU):
        if m.approximate != "none":
            raise ctx.unsupported(f"GELU approximate='{m.approximate}'")
        return sf.Gelu()
    if t == "OnnxPReLU":
        x1 = -torch.ones(1, *ctx.perturbed[0].meta["tensor_meta"].shape[1:])
        slope = -m(x1, torch.as_tensor(ctx.constants[1]).float())[0].double()
        return _named(sf.leaky_relu(slope), "prelu")
    if t == "OnnxPow":
        p = torch.as_tensor(ctx.constants[1])
        if p.numel() != 1:
            raise ctx.unsupported("Pow with a non-scalar exponent")
        return sf.Pow(float(p.reshape(())))
    if t == "OnnxMinMax":
        (pos, c), = ctx.constants.items()
        c = _per_sample(ctx, c)
        if m._op_type == "Max":
            return _named(sf.Piecewise([c], [0.0, 1.0], c), "max_const")
        return _named(sf.Piecewise([c], [1.0, 0.0], c), "min_const")
    return None


def _match(ctx):
    if ctx.n_pert != 1:
        return False
    t = ctx.module_type
    if t == "OnnxFunction":
        return getattr(ctx.module, "function", None) in _FUNCTIONS
    if t in _MODULES or t in ("OnnxClip", "OnnxPReLU", "OnnxPow", "OnnxRound") or ctx.is_module(
            nn.LeakyReLU, nn.Hardtanh, nn.ReLU6, nn.Softplus, nn.GELU):
        return True
    if t == "OnnxMinMax":
        return len(ctx.node.args) == 2 and len(ctx.constants) == 1
    return ctx.node.op == "call_function" and ctx.node.target in _FUNCTIONS


def _build(ctx):
    names = [a.name for a in ctx.perturbed]
    if ctx.module_type in ("OnnxPReLU", "OnnxPow") and (not isinstance(ctx.node.args[0], torch.fx.Node)
                                                       or ctx.node.args[0].name != names[0]):
        raise ctx.unsupported("its slope / exponent depends on the network input")
    fn = _scalar_fn(ctx)
    if fn is None:
        return None
    if isinstance(fn, sf.Pow) and fn.p in (0.0, 1.0):
        return None
    return ActivationOp(ctx.node.name, fn)


register("activation", ("Sigmoid", "Tanh", "Exp", "Log", "Sin", "Cos", "Sqrt", "Reciprocal", "Pow", "Erf",
                        "Sign", "Abs", "LeakyRelu", "PRelu", "Clip", "Softplus", "Max", "Min",
                        "Floor", "Ceil"),
         _match, _build)
