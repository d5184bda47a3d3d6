"""Bound ops, one small module each, and the registry that maps graph nodes to them."""
from __future__ import annotations

import operator

import torch
from torch import nn

from ..errors import UnsupportedOpError
from .add import AddOp, SubOp
from .base import BackwardResult, BoundOp, Interval
from .conv import Conv2dOp
from .elementwise_affine import ElementwiseAffineOp, from_batchnorm, from_binary
from .identity import IdentityOp
from .linear import LinearOp
from .relu import ReluOp
from .reshape import ReshapeOp

__all__ = ["BoundOp", "BackwardResult", "Interval", "make_op", "LinearOp", "Conv2dOp", "ReluOp",
           "ReshapeOp", "IdentityOp", "AddOp", "SubOp", "ElementwiseAffineOp", "SUPPORTED"]

SUPPORTED = ("Linear/Gemm, MatMul by a constant (+Add), Conv2d, ReLU, Flatten/Reshape/View, "
             "Add/Sub of two tensors, Add/Sub/Mul/Div by constants, BatchNorm (eval), Identity, Dropout")

_RESHAPE_MODULES = ("OnnxReshape", "OnnxFlatten", "Flatten", "Unflatten")
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_RESHAPE_FUNCS = (torch.flatten, torch.reshape)
_RESHAPE_METHODS = ("view", "reshape", "flatten")
_RELU_FUNCS = (torch.relu, torch.nn.functional.relu)


def _binary_kind(target) -> str | None:
    from ..model_loading import _binary_kind as kind_of
    return kind_of(*target)


def describe_target(gm, node) -> str:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        what = type(module).__name__
        # onnx2torch wraps many ONNX ops (Tanh, Exp, Sin, ...) in one generic module that holds the
        # torch function: name the function, or the message would not say which op it is.
        fn = getattr(module, "function", None)
        if callable(fn) and getattr(fn, "__name__", None):
            what = f"{what} {fn.__name__}"
        return what
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return f"{node.op}:{node.target}"


def make_op(gm: torch.fx.GraphModule, node: torch.fx.Node, perturbed: list, constants: dict) -> BoundOp:
    """Build the bound op for one fx node.

    `perturbed` lists the node's arguments that depend on the network input (fx Nodes);
    `constants` maps argument positions to their constant values.
    """
    from ..model_loading import _binary_kind as binary_kind

    what = describe_target(gm, node)
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    n_pert = len(perturbed)

    def unsupported(why=""):
        return UnsupportedOpError(
            f"node '{node.name}' ({what}): no bound rule for this operation{': ' + why if why else ''}. "
            f"Supported: {SUPPORTED}")

    if isinstance(module, nn.Linear) and n_pert == 1:
        return LinearOp(node.name, module)
    if isinstance(module, nn.Conv2d) and n_pert == 1:
        op = Conv2dOp(node.name, module)
        op.check()
        return op
    if (isinstance(module, nn.ReLU) or (node.op == "call_function" and node.target in _RELU_FUNCS)
            or (node.op == "call_method" and node.target == "relu")) and n_pert == 1:
        return ReluOp(node.name, module)
    if ((module is not None and type(module).__name__ in _RESHAPE_MODULES)
            or (node.op == "call_function" and node.target in _RESHAPE_FUNCS)
            or (node.op == "call_method" and node.target in _RESHAPE_METHODS)) and n_pert == 1:
        return ReshapeOp(node.name, module)
    if isinstance(module, _IDENTITY_MODULES) and n_pert == 1:
        return IdentityOp(node.name, module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and n_pert == 1:
        if module.training or module.running_mean is None:
            raise unsupported("BatchNorm must be in eval mode with running statistics")
        return from_batchnorm(node.name, module)
    kind = binary_kind(gm, node)
    if kind is not None:
        if n_pert == 2 and kind in ("add", "sub"):
            return (AddOp if kind == "add" else SubOp)(node.name, module)
        if n_pert == 1 and len(constants) == 1:
            (pos, const), = constants.items()
            op = from_binary(node.name, kind, torch.as_tensor(const), const_first=(pos == 0))
            if op is not None:
                return op
        raise unsupported(f"'{kind}' of {n_pert} perturbed operands is not linear")
    raise unsupported()
