"""Bound ops, one small module each, and the registry that maps graph nodes to them.

Each op module registers its rules (`registry.register`): which fx nodes / onnx2torch modules
it handles and how to build the op. `make_op` asks the registry; `supported_onnx_ops()` lists
the ONNX operators some rule handles.
"""
from __future__ import annotations

import torch

from ..fx_nodes import describe_target  # noqa: F401  (re-exported: messages name nodes with it)
from .base import BackwardResult, BoundOp, Interval
from .conv import Conv2dOp
from .elementwise_affine import ElementwiseAffineOp
from .identity import IdentityOp
from .linear import LinearOp
from .registry import OpContext, build_op, supported_onnx_ops
from .relu import ReluOp
from .add import AddOp, SubOp
from .reshape import ReshapeOp

__all__ = ["BoundOp", "BackwardResult", "Interval", "make_op", "LinearOp", "Conv2dOp", "ReluOp",
           "ReshapeOp", "IdentityOp", "AddOp", "SubOp", "ElementwiseAffineOp", "SUPPORTED",
           "supported_onnx_ops", "onnx_operators"]

# Rule modules, in priority order (the first matching rule builds the op).
_RULE_MODULES = ("rules_core", "structural", "activations", "lookup_table", "products", "decompose", "softmax_sum", "layernorm", "layernorm_product", "comparisons")
_loaded = False


def _load_rules():
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for name in _RULE_MODULES:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


def __getattr__(name):
    if name == "SUPPORTED":
        return ", ".join(supported_onnx_ops())
    raise AttributeError(name)


def make_op(gm: torch.fx.GraphModule, node: torch.fx.Node, perturbed: list, constants: dict,
            value_of=None) -> BoundOp:
    """Build the bound op for one fx node.

    `perturbed` lists the node's arguments that depend on the network input (fx Nodes);
    `constants` maps argument positions to their constant values; `value_of` maps any constant
    fx Node to its value (rules that bind the node's function need it).
    """
    ctx = OpContext(gm, node, list(perturbed), dict(constants), describe_target(gm, node), value_of)
    return build_op(ctx)


def onnx_operators() -> tuple[str, ...]:
    """The ONNX operator types with a bound rule: exactly what the op registry's rules declare
    (`dtensor-verify supports --onnx-operators` prints this list)."""
    return tuple(supported_onnx_ops())
