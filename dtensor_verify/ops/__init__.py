"""Bound ops, one small module each, and the registry that maps graph nodes to them."""
from __future__ import annotations

import operator

import torch
from torch import nn

from ..errors import UnsupportedOpError
from ..fx_nodes import binary_kind, describe_target
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

# Keep in step with the README's "Supported operations" section.
SUPPORTED = ("Linear/Gemm (constant B, transA=0), MatMul by a constant matrix, Conv2d, ReLU, "
             "Flatten/Reshape/View (batch dim kept), Add/Sub of two same-shape tensors, "
             "Add/Sub/Mul by constants, Div by a nonzero constant, BatchNorm (eval), Identity, Dropout (inference)")

_RESHAPE_MODULES = ("OnnxReshape", "OnnxFlatten", "Flatten", "Unflatten")
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
# onnx2torch's Identity (a copy) and its Dropout of opsets 12+ (ratio / training_mode inputs).
_IDENTITY_MODULE_NAMES = ("OnnxCopyIdentity", "OnnxDropoutDynamic")
_RESHAPE_FUNCS = (torch.flatten, torch.reshape)
_RESHAPE_METHODS = ("view", "reshape", "flatten")
_RELU_FUNCS = (torch.relu, torch.nn.functional.relu)


def _check_inference_dropout(constants: dict, unsupported) -> None:
    """Dropout is the identity only in inference: refuse a constant training_mode = true (input 2)."""
    training = constants.get(2)
    if training is not None and bool(torch.as_tensor(training).any()):
        raise unsupported("Dropout with training_mode = true is random, not a function")


def make_op(gm: torch.fx.GraphModule, node: torch.fx.Node, perturbed: list, constants: dict) -> BoundOp:
    """Build the bound op for one fx node.

    `perturbed` lists the node's arguments that depend on the network input (fx Nodes);
    `constants` maps argument positions to their constant values.
    """
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
    if (isinstance(module, _IDENTITY_MODULES) or type(module).__name__ in _IDENTITY_MODULE_NAMES) and n_pert == 1:
        if type(module).__name__ == "OnnxDropoutDynamic":
            _check_inference_dropout(constants, unsupported)
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
            if kind == "div" and pos == 1 and bool((torch.as_tensor(const) == 0).any()):
                raise unsupported("division by a constant that contains 0")
            op = from_binary(node.name, kind, torch.as_tensor(const), const_first=(pos == 0))
            if op is not None:
                return op
        raise unsupported(f"'{kind}' of {n_pert} perturbed operands is not linear")
    raise unsupported()
