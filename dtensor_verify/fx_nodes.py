"""What a torch.fx node of a converted model is, asked by both the loader (`model_loading`,
which rewrites the graph) and the op registry (`ops`, which builds a bound op per node). A
neutral module, so that neither of them imports the other."""
from __future__ import annotations

import operator

import torch

__all__ = ["binary_kind", "is_matmul", "is_module", "describe_target", "describe_node"]


def binary_kind(gm, node) -> str | None:
    """'add' / 'sub' / 'mul' / 'div' for onnx2torch binary modules and fx arithmetic calls."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        fn = getattr(mod, "math_op_function", None)
        if fn is None or getattr(mod, "broadcast", None) == 1:
            return None
        kinds = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"}
        if fn in kinds:
            return kinds[fn]
        # onnx2torch's Div is its own function (float division, or truncation for integers).
        return "div" if getattr(fn, "__name__", "") == "_onnx_div" else None
    if node.op == "call_function":
        return {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
                operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div"}.get(node.target)
    return None


def is_matmul(gm, node) -> bool:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__ == "OnnxMatMul"
    return node.op == "call_function" and node.target in (torch.matmul, operator.matmul)


def is_module(gm, node, *type_names) -> bool:
    return node.op == "call_module" and type(gm.get_submodule(node.target)).__name__ in type_names


def describe_target(gm, node) -> str:
    """What the node computes, for messages: the module type (and the torch function an
    onnx2torch generic module wraps), or the function's name."""
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


def describe_node(gm, node) -> str:
    """`describe_target`, never failing (a message must not raise)."""
    try:
        return describe_target(gm, node)
    except Exception:
        return f"{node.op}:{node.target}"
