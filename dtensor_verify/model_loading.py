"""Load networks into a canonical `torch.fx.GraphModule`.

ONNX files (also `.onnx.gz`) go through onnx2torch; plain `nn.Module`s through `torch.fx`.
A small canonicalisation pass then rewrites `MatMul(x, W_const) [+ Add(b_const)]` into
`nn.Linear`, so that every weight of the network is held by an `nn.Linear` / `nn.Conv2d`
module: the placement pass shards modules in place, never loose graph constants.
"""
from __future__ import annotations

import gzip
import operator
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ModelLoadError

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class LoadedModel:
    module: torch.fx.GraphModule
    input_shape: tuple[int, ...]      # per-sample shape, without the batch dim
    onnx_input_shape: tuple[int, ...] | None  # the ONNX graph input's full shape (for onnxruntime)
    onnx_input_name: str | None
    source: str


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, transparently un-gzipping it (by magic bytes, not by suffix)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ModelLoadError(f"{path}: corrupt gzip data: {exc}") from None
    return data


def load_onnx_proto(path: str | os.PathLike):
    import onnx

    data = read_bytes(path)
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError on truncated files
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    if len(proto.graph.node) == 0:
        raise ModelLoadError(f"{path}: ONNX graph has no nodes (truncated or empty file?)")
    return proto


def _normalise_proto(proto):
    """Make old-style ONNX files digestible by onnx2torch.

    Old exporters list initializers among the graph inputs and use opsets below 9 (e.g.
    Flatten-1, which onnx2torch lacks); upgrade those and keep only the real inputs.
    """
    from onnx import version_converter

    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=13)
    if opset < 11:
        proto = version_converter.convert_version(proto, 11)
    initializer_names = {init.name for init in proto.graph.initializer}
    real_inputs = [i for i in proto.graph.input if i.name not in initializer_names]
    del proto.graph.input[:]
    proto.graph.input.extend(real_inputs)
    if proto.ir_version < 4:
        proto.ir_version = 4
    return proto


def _input_shape_of(proto, path) -> tuple[str, tuple[int, ...]]:
    if len(proto.graph.input) != 1:
        names = [i.name for i in proto.graph.input]
        raise ModelLoadError(f"{path}: expected exactly one graph input, found {len(names)}: {names}")
    inp = proto.graph.input[0]
    dims = []
    for d in inp.type.tensor_type.shape.dim:
        # A symbolic batch dim ('N', 'batch') counts as 1.
        dims.append(d.dim_value if d.dim_value > 0 else 1)
    return inp.name, tuple(dims)


def load_onnx(path: str | os.PathLike) -> LoadedModel:
    from ._lazy_onnx2torch import import_onnx2torch

    onnx2torch = import_onnx2torch()        # without torchvision's start-up cost

    proto = _normalise_proto(load_onnx_proto(path))
    name, full_shape = _input_shape_of(proto, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = onnx2torch.convert(proto)
    except NotImplementedError as exc:
        raise ModelLoadError(f"{path}: onnx2torch cannot convert this model: {exc}") from None
    except Exception as exc:
        raise ModelLoadError(f"{path}: conversion failed ({type(exc).__name__}: {exc})") from None
    # Leading dim of size 1 on a rank>=2 input is the batch dim; a rank-1 input has none.
    per_sample = full_shape[1:] if len(full_shape) >= 2 and full_shape[0] == 1 else full_shape
    module = canonicalize(module.eval())
    return LoadedModel(module, tuple(per_sample), full_shape, name, str(path))


def trace_module(model: nn.Module, input_shape: tuple[int, ...]) -> LoadedModel:
    """Trace a plain `nn.Module` (per-sample `input_shape`, batch dim excluded)."""
    if isinstance(model, torch.fx.GraphModule):
        gm = model
    else:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as exc:
            raise ModelLoadError(f"{type(model).__name__}: torch.fx cannot trace it: {exc}") from None
    return LoadedModel(canonicalize(gm.eval()), tuple(input_shape), None, None, type(model).__name__)


# --------------------------------------------------------------------------- canonicalisation

def _get_attr(gm: torch.fx.GraphModule, node: torch.fx.Node):
    if node.op != "get_attr":
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _binary_kind(gm, node) -> str | None:
    """'add' / 'sub' / 'mul' / 'div' for onnx2torch binary modules and fx arithmetic calls."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        fn = getattr(mod, "math_op_function", None)
        if fn is None or getattr(mod, "broadcast", None) == 1:
            return None
        return {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"}.get(fn)
    if node.op == "call_function":
        return {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
                operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div"}.get(node.target)
    return None


def _is_matmul(gm, node) -> bool:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__ == "OnnxMatMul"
    return node.op == "call_function" and node.target in (torch.matmul, operator.matmul)


def canonicalize(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite MatMul by a constant matrix (plus a following constant Add) into nn.Linear."""
    graph = gm.graph
    counter = 0
    for node in list(graph.nodes):
        if not _is_matmul(gm, node) or len(node.args) != 2:
            continue
        a, b = node.args
        wa, wb = (_get_attr(gm, a) if isinstance(a, torch.fx.Node) else None,
                  _get_attr(gm, b) if isinstance(b, torch.fx.Node) else None)
        if isinstance(wb, torch.Tensor) and wb.dim() == 2 and wa is None:
            x, weight = a, wb.t()            # x @ W  ==  Linear with weight W^T
        elif isinstance(wa, torch.Tensor) and wa.dim() == 2 and wb is None:
            x, weight = b, wa                # W @ x for an unbatched vector x
        else:
            continue
        bias = None
        users = list(node.users)
        add_node = None
        if len(users) == 1 and _binary_kind(gm, users[0]) == "add":
            other = [arg for arg in users[0].args if arg is not node]
            if len(other) == 1 and isinstance(other[0], torch.fx.Node):
                c = _get_attr(gm, other[0])
                if isinstance(c, torch.Tensor) and c.numel() == weight.shape[0] and c.dim() <= 2:
                    bias, add_node = c.reshape(-1), users[0]
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.detach())
            if bias is not None:
                linear.bias.copy_(bias.detach())
        name = f"linear_{node.name}"
        while hasattr(gm, name):
            counter += 1
            name = f"linear_{node.name}_{counter}"
        gm.add_module(name, linear)
        with graph.inserting_after(add_node or node):
            new = graph.call_module(name, (x,))
        (add_node or node).replace_all_uses_with(new)
        if add_node is not None:
            graph.erase_node(add_node)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
