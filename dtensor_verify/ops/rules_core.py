"""Rules of the original ops: Linear, Conv2d, ReLU, Reshape/Flatten, Identity/Dropout, BatchNorm,
Add/Sub of two same-shape activations and affine maps by constants."""
from __future__ import annotations

import torch
from torch import nn

from .add import AddOp, SubOp
from .conv import Conv2dOp
from .elementwise_affine import from_batchnorm, from_binary
from .identity import IdentityOp
from .linear import LinearOp
from .registry import register as _register


def register(*args, **kwargs):
    return _register(*args, priority=10, **kwargs)
from .relu import ReluOp
from .reshape import ReshapeOp

_RESHAPE_MODULES = ("OnnxReshape", "OnnxFlatten", "Flatten", "Unflatten")
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, "OnnxCopyIdentity", "OnnxDropoutDynamic")
_RELU_FUNCS = (torch.relu, torch.nn.functional.relu)


def _binary_kind(ctx):
    from ..fx_nodes import binary_kind as kind_of
    return kind_of(ctx.gm, ctx.node)


def _build_conv(ctx):
    op = Conv2dOp(ctx.node.name, ctx.module)
    op.check()
    return op


def _build_identity(ctx):
    if ctx.module_type == "OnnxDropoutDynamic":
        training = ctx.constants.get(2)
        if training is not None and bool(torch.as_tensor(training).any()):
            raise ctx.unsupported("Dropout with training_mode = true is random, not a function")
    return IdentityOp(ctx.node.name, ctx.module)


def _build_batchnorm(ctx):
    m = ctx.module
    if m.training or m.running_mean is None:
        raise ctx.unsupported("BatchNorm must be in eval mode with running statistics")
    return from_batchnorm(ctx.node.name, m)


def _build_binary(ctx):
    """Add/Sub of two same-shape activations, or x (op) constant. Anything else falls through to
    the later rules (broadcast sums, products of activations)."""
    kind = _binary_kind(ctx)
    if ctx.n_pert == 2 and kind in ("add", "sub") and _same_shapes(ctx):
        return (AddOp if kind == "add" else SubOp)(ctx.node.name, ctx.module)
    if ctx.n_pert == 1 and len(ctx.constants) == 1:
        (pos, const), = ctx.constants.items()
        if kind == "div" and pos == 1 and bool((torch.as_tensor(const) == 0).any()):
            raise ctx.unsupported("division by a constant that contains 0")
        return from_binary(ctx.node.name, kind, torch.as_tensor(const), const_first=(pos == 0))
    return None


def _same_shapes(ctx):
    shapes = [tuple(a.meta["tensor_meta"].shape) for a in ctx.perturbed]
    out = ctx.node.meta.get("tensor_meta")
    return out is not None and all(s == tuple(out.shape) for s in shapes)


def _one(ctx):
    return ctx.n_pert == 1


register("linear", ("Gemm", "MatMul"), lambda c: _one(c) and c.is_module(nn.Linear),
         lambda c: LinearOp(c.node.name, c.module))
register("conv2d", ("Conv",), lambda c: _one(c) and c.is_module(nn.Conv2d), _build_conv)
register("relu", ("Relu",),
         lambda c: _one(c) and (c.is_module(nn.ReLU) or c.is_function(*_RELU_FUNCS) or c.is_method("relu")),
         lambda c: ReluOp(c.node.name, c.module))
register("reshape", ("Reshape", "Flatten"),
         lambda c: _one(c) and (c.is_module(*_RESHAPE_MODULES) or c.is_function(torch.flatten, torch.reshape)
                                or c.is_method("view", "reshape", "flatten")),
         lambda c: ReshapeOp(c.node.name, c.module))
register("identity", ("Identity", "Dropout"), lambda c: _one(c) and c.is_module(*_IDENTITY_MODULES),
         _build_identity)
register("batchnorm", ("BatchNormalization",),
         lambda c: _one(c) and c.is_module(nn.modules.batchnorm._BatchNorm), _build_batchnorm)
register("binary", ("Add", "Sub", "Mul", "Div"), lambda c: _binary_kind(c) is not None, _build_binary)


def _refuse_binary(ctx):
    raise ctx.unsupported(f"'{_binary_kind(ctx)}' of {ctx.n_pert} perturbed operands is not linear")


# Tried last: a binary operation no later rule (products, reciprocals, broadcasts) took.
_register("binary_fallback", (), lambda c: _binary_kind(c) is not None, _refuse_binary, priority=1000)
