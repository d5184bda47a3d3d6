"""Load networks into a canonical `torch.fx.GraphModule`.

ONNX files (also `.onnx.gz`) go through onnx2torch; plain `nn.Module`s through `torch.fx`.
A model without a leading batch dim of 1 (or using its dim 0 as data) first gets an explicit one
(`batch_axis.py`). A canonicalisation pass (`canonicalize.py`) then rewrites products by constant matrices (`MatMul`, onnx2torch's
generic `Gemm`) into `nn.Linear`, so that every weight of the network is held by an
`nn.Linear` / `nn.Conv2d` module: the placement pass shards modules in place, never loose
graph constants.

Rule for every rewrite here: it fires only when the shapes seen on an example input prove that it
keeps the function (operand order, ranks, broadcasting); otherwise the general op stays, and the
bound graph refuses it with a clear message if it has no bound rule. After loading,
`selfcheck.py` compares the result with the original model (onnxruntime for ONNX files), so a
rewrite that slipped through would give an error, never a verdict.
"""
from __future__ import annotations

import copy
import gzip
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .canonicalize import MAX_REWRITE_WEIGHT, _Canonicalizer, canonicalize  # noqa: F401 - re-exported
from .errors import ModelLoadError
from .fx_nodes import describe_node

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class LoadedModel:
    module: torch.fx.GraphModule
    input_shape: tuple[int, ...]      # per-sample shape, without the batch dim
    onnx_input_shape: tuple[int, ...] | None  # the ONNX graph input's full shape (for onnxruntime)
    onnx_input_name: str | None
    source: str
    # The model as given, for the load-time self-check and for confirming counterexamples of
    # models that never were ONNX files (None for ONNX files: onnxruntime runs the file itself).
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None
    # The precision the model computes in (float64 models are bounded in float64).
    dtype: torch.dtype = torch.float32


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


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# --------------------------------------------------------------------------- ONNX checks

def _refused_float_types() -> dict[int, str]:
    from onnx import TensorProto

    return {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}


def _check_float32(proto, path) -> torch.dtype:
    """The model's float type: float32, or float64 for a model whose input is float64 (the engine
    then computes in float64 end to end). float16 / bfloat16 would be verified in another
    precision than the one they run in: refused by name (input, output or weight)."""
    from onnx import TensorProto

    refused = _refused_float_types()
    initializer_names = {init.name for init in proto.graph.initializer}
    allowed = (TensorProto.FLOAT, TensorProto.DOUBLE)
    kinds = set()
    for kind, infos in (("input", proto.graph.input), ("output", proto.graph.output)):
        for info in infos:
            if info.name in initializer_names:
                continue
            elem = info.type.tensor_type.elem_type
            if elem not in allowed:
                what = refused.get(elem) or TensorProto.DataType.Name(elem).lower()
                raise ModelLoadError(f"{path}: {kind} '{info.name}' is {what}; only float32 and float64 models "
                                     f"are supported (convert the model to float32)")
            if kind == "input":
                kinds.add(elem)
    for init in proto.graph.initializer:
        if init.data_type in refused:
            raise ModelLoadError(f"{path}: initializer '{init.name}' is {refused[init.data_type]}; only "
                                 f"float32 and float64 models are supported (convert the model to float32)")
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and attr.t.data_type in refused:
                raise ModelLoadError(f"{path}: node '{node.name or node.op_type}' ({node.op_type}) holds a "
                                     f"{refused[attr.t.data_type]} tensor; only float32 and float64 models "
                                     f"are supported")
    return torch.float64 if kinds == {TensorProto.DOUBLE} else torch.float32


def _check_finite(proto, path) -> None:
    """NaN / Inf in a weight (initializer or Constant node) makes every bound NaN: refused at
    load, naming the tensor, rather than verified into a meaningless `unknown`."""
    import numpy as np
    from onnx import numpy_helper

    def bad(tensor) -> str | None:
        try:
            arr = numpy_helper.to_array(tensor)
        except Exception:           # noqa: BLE001 - unreadable data: the converter reports it
            return None
        if arr.dtype.kind not in "fc" or arr.size == 0:
            return None
        finite = np.isfinite(arr)
        if finite.all():
            return None
        n_nan = int(np.isnan(arr).sum())
        return f"{n_nan} NaN and {int(arr.size - finite.sum()) - n_nan} infinite value(s) of {arr.size}"

    for init in proto.graph.initializer:
        what = bad(init)
        if what:
            raise ModelLoadError(f"{path}: initializer '{init.name}' holds {what}; a weight must be finite")
    for node in proto.graph.node:
        for attr in node.attribute:
            what = bad(attr.t) if attr.HasField("t") else None
            if what:
                raise ModelLoadError(f"{path}: node '{node.name or node.op_type}' ({node.op_type}) holds a "
                                     f"constant with {what}; a weight must be finite")


def check_module_finite(module: nn.Module, source: str) -> None:
    """The same rule for an nn.Module's parameters and buffers."""
    for kind, items in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                raise ModelLoadError(f"{source}: {kind} '{name}' holds NaN or infinite values; "
                                     f"a weight must be finite")


def _normalise_proto(proto, path):
    """Make old-style ONNX files digestible by onnx2torch.

    Old exporters list initializers among the graph inputs and use opsets below 9 (e.g.
    Flatten-1, which onnx2torch lacks); upgrade those and keep only the real inputs.
    """
    from onnx import version_converter

    opset = _opset(proto)
    if opset < 11:
        try:
            proto = version_converter.convert_version(proto, 11)
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot upgrade opset {opset} to 11 for conversion "
                                 f"({_one_line(exc)})") from None
    _name_unnamed_nodes(proto)
    initializer_names = {init.name for init in proto.graph.initializer}
    real_inputs = [i for i in proto.graph.input if i.name not in initializer_names]
    del proto.graph.input[:]
    proto.graph.input.extend(real_inputs)
    if proto.ir_version < 4:
        proto.ir_version = 4
    return proto


def _name_unnamed_nodes(proto) -> None:
    """Give every unnamed node a unique name. onnx2torch names an unnamed node after its op type
    plus a counter, which can collide with a named node (the version converter's Constant nodes
    for an opset-9 Upsample's roi become "Constant_1" beside the file's own "Constant_1", and the
    Resize then reads an unknown value; cgan_2023's cGAN_imgSz32_nCh_3_upsample)."""
    taken = {n.name for n in proto.graph.node if n.name}
    k = 0
    for node in proto.graph.node:
        if node.name:
            continue
        while f"{node.op_type}_dv{k}" in taken:
            k += 1
        node.name = f"{node.op_type}_dv{k}"
        taken.add(node.name)


def _input_shape_of(proto, path) -> tuple[str, tuple[int, ...]]:
    """The input's name and full shape. Only dim 0 of a rank >= 2 input (the batch) may be
    symbolic: it counts as 1. Any other unknown dim would be a guess, so it is refused."""
    if len(proto.graph.input) != 1:
        names = [i.name for i in proto.graph.input]
        raise ModelLoadError(f"{path}: expected exactly one graph input, found {len(names)}: {names}")
    inp = proto.graph.input[0]
    if not inp.type.tensor_type.HasField("shape"):
        raise ModelLoadError(f"{path}: input '{inp.name}' has no shape; the verifier needs a fixed input shape")
    raw = list(inp.type.tensor_type.shape.dim)
    shown = [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in raw]
    dims = []
    for i, d in enumerate(raw):
        if d.dim_value > 0:
            dims.append(d.dim_value)
        elif i == 0 and len(raw) >= 2:
            dims.append(1)
        else:
            raise ModelLoadError(
                f"{path}: input '{inp.name}' has a dynamic dimension '{shown[i]}' at position {i} "
                f"(shape {shown}); only the batch dimension (position 0) may be dynamic")
    return inp.name, tuple(dims)


# onnx2torch lacks the newest versions of some ops (Reshape-19, Identity-21, ...): a model of a
# newer opset that it refuses is converted down to this one by onnx's version converter and tried
# again (the self-check then compares the result with onnxruntime on the original file).
FALLBACK_OPSET = 17


def _opset(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=13)


def _convert(proto, path) -> torch.fx.GraphModule:
    from onnx import version_converter

    from ._lazy_onnx2torch import import_onnx2torch

    onnx2torch = import_onnx2torch()        # without torchvision's start-up cost

    def attempt(p):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return onnx2torch.convert(p)

    try:
        try:
            return attempt(proto)
        except NotImplementedError as first:
            if _opset(proto) <= FALLBACK_OPSET:
                raise
            try:
                older = version_converter.convert_version(proto, FALLBACK_OPSET)
            except Exception:
                raise first from None
            return attempt(older)
    except NotImplementedError as exc:
        raise ModelLoadError(f"{path}: onnx2torch cannot convert this model (opset {_opset(proto)}): "
                             f"{' '.join(str(exc).split())}") from None
    except Exception as exc:
        raise ModelLoadError(f"{path}: conversion failed ({_one_line(exc)})") from None


def load_onnx(path: str | os.PathLike) -> LoadedModel:
    proto = load_onnx_proto(path)
    dtype = _check_float32(proto, path)
    _check_finite(proto, path)
    proto = _normalise_proto(proto, path)
    from .batch_axis import add_batch_axis, needs_batch_axis
    from .onnx_rewrites import canonical_onnx

    proto = canonical_onnx(proto)
    name, full_shape = _input_shape_of(proto, path)
    # Leading dim of size 1 on a rank>=2 input is the batch dim, unless the model has none (rank 1,
    # first dim > 1) or uses it as data: then it gets an explicit one (batch_axis.py).
    per_sample = full_shape[1:]
    if needs_batch_axis(proto):
        proto, per_sample = add_batch_axis(proto, str(path)), full_shape
    module = _convert(proto, path)
    module = canonicalize(module.eval(), tuple(per_sample), str(path), dtype)
    return LoadedModel(module, tuple(per_sample), full_shape, name, str(path), dtype=dtype)


def trace_module(model: nn.Module, input_shape: tuple[int, ...]) -> LoadedModel:
    """Trace a plain `nn.Module` (per-sample `input_shape`, batch dim excluded)."""
    if isinstance(model, torch.fx.GraphModule):
        gm = copy.deepcopy(model)        # canonicalize edits the graph: leave the caller's alone
    else:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as exc:
            raise ModelLoadError(f"{type(model).__name__}: torch.fx cannot trace it: {_one_line(exc)}") from None
    source = type(model).__name__
    check_module_finite(gm, source)
    return LoadedModel(canonicalize(gm.eval(), tuple(input_shape), source), tuple(input_shape), None, None,
                       source, reference=model)


# --------------------------------------------------------------------------- shapes

@dataclass
class TensorMeta:
    shape: torch.Size
    dtype: torch.dtype


class _ShapeProp(torch.fx.Interpreter):
    """Runs the module once and records each node's output shape in `node.meta["tensor_meta"]`.

    Unlike torch.fx's ShapeProp it prints nothing: a failing node becomes one ModelLoadError line
    that names it (torch's prints a traceback to stderr first)."""

    def __init__(self, gm, source):
        super().__init__(gm)
        self.source = source

    def run_node(self, n):
        try:
            result = super().run_node(n)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{self.source}: node '{n.name}' ({describe_node(self.module, n)}) fails: "
                                 f"{_one_line(exc)}") from None
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = TensorMeta(result.shape, result.dtype)
        return result


def propagate_shapes(gm: torch.fx.GraphModule, example: torch.Tensor, source: str) -> None:
    with torch.no_grad():
        _ShapeProp(gm, source).run(example)
