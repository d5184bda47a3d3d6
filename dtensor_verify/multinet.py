"""Several networks of one VNN-LIB 2.0 query as one product graph.

    product = load_product(query, {"f": "a.onnx", "g": "b.onnx"})
    product.model            # a BoundedModel: z -> V (every declared value, declaration order)
    product.evaluate(z)      # onnxruntime on the original files: name -> array (inputs, hidden, outputs)

The product takes the vector `z` of the property (`specs/vnnlib2_property.py`): each network
input is `M z` (a signed selection, one `nn.Linear` per input), reshaped to the ONNX input's
shape; the networks run side by side (an `equal-to` network is the same model again with its own
input, an `isomorphic-to` network its own model of the same shape); their outputs and the
hidden tensors the query names (exposed as extra ONNX outputs) are flattened and placed in `V`
by fixed 0/1 matrices and added, with the inputs themselves. Only Linear / Reshape / Add join
the networks, so every method, plan and branch and bound runs on it unchanged.

The three errors the standard requires are raised here as `NetworkMappingError`,
`ElementTypeError` and `UnsoundTypeError` (all `InputSpecError`s: one line, non-zero exit).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .element_types import INTEGER_OUTPUT_TYPES, SOUND_ELEMENT_TYPES  # noqa: F401 (re-exported)
from .errors import InputSpecError, ModelLoadError, UnsupportedOpError

__all__ = ["NetworkMappingError", "ElementTypeError", "UnsoundTypeError", "Product", "load_product",
           "check_mapping", "SOUND_ELEMENT_TYPES", "INTEGER_OUTPUT_TYPES"]


class NetworkMappingError(InputSpecError):
    """--network gives too few / too many / repeated models for the query's declarations."""


class ElementTypeError(InputSpecError):
    """A declared element type differs from the ONNX model's."""


class UnsoundTypeError(InputSpecError):
    """The query asks for sound analysis over an element type this verifier cannot give."""


def _onnx_type_name(elem: int) -> str:
    from onnx import TensorProto

    name = TensorProto.DataType.Name(elem).lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


def check_mapping(query, mapping: dict, duplicates=()) -> dict:
    """Each declared network without `equal-to` needs exactly one --network; returns name -> file
    for every declared network (an `equal-to` network gets its target's file)."""
    where = query.path
    if duplicates:
        raise NetworkMappingError(f"{where}: network '{duplicates[0]}' is given more than one --network")
    declared = {n.name: n for n in query.networks}
    needed = [n.name for n in query.networks if not n.equal_to]
    unknown = sorted(set(mapping) - set(declared))
    if unknown:
        raise NetworkMappingError(f"{where}: --network {unknown[0]}=... names no declared network "
                                  f"(declared: {', '.join(declared)})")
    extra = sorted(n for n in mapping if declared[n].equal_to)
    if extra:
        raise NetworkMappingError(f"{where}: network '{extra[0]}' is equal-to '{declared[extra[0]].equal_to}' "
                                  f"and takes no --network")
    missing = [n for n in needed if n not in mapping]
    if missing:
        raise NetworkMappingError(f"{where}: network '{missing[0]}' has no --network {missing[0]}=FILE")
    files = {}
    for n in query.networks:
        target = n
        while target.equal_to:
            target = declared[target.equal_to]
        files[n.name] = mapping[target.name]
    return files


def _check_types(query, net, proto, path) -> None:
    """Counts, sizes and element types of the declarations against the ONNX graph."""
    init = {i.name for i in proto.graph.initializer}
    ins = [i for i in proto.graph.input if i.name not in init]
    for kind, decls, infos in (("inputs", net.inputs, ins), ("outputs", net.outputs, list(proto.graph.output))):
        if len(decls) != len(infos):
            raise NetworkMappingError(f"{query.path}: network '{net.name}' declares {len(decls)} {kind}, "
                                      f"{path} has {len(infos)}")
        for d, info in zip(decls, infos):
            _check_one(query, net, d, info, path)
    if net.hidden:
        vi = _value_infos(proto)
        for d in net.hidden:
            if d.onnx_name not in vi:
                raise InputSpecError(f"{query.path}: hidden node {d.name} names ONNX tensor '{d.onnx_name}', "
                                     f"which {path} does not have")
            _check_one(query, net, d, vi[d.onnx_name], path)


def _check_one(query, net, d, info, path) -> None:
    tt = info.type.tensor_type
    onnx_type = _onnx_type_name(tt.elem_type)
    if d.dtype != "real" and d.dtype != onnx_type:
        raise ElementTypeError(f"{query.path}: {d.name} of network '{net.name}' is declared {d.dtype}, "
                               f"but '{info.name}' in {path} is {onnx_type}")
    if d.dtype not in SOUND_ELEMENT_TYPES and not (d.dtype in INTEGER_OUTPUT_TYPES and d.kind != "input"):
        raise UnsoundTypeError(f"{query.path}: {d.name} is declared {d.dtype}; this verifier analyses "
                               f"only {' and '.join(SOUND_ELEMENT_TYPES)} soundly (write real to accept "
                               f"real-number semantics)")
    if tt.HasField("shape"):
        dims = [x.dim_value if x.dim_value > 0 else None for x in tt.shape.dim]
        if None not in dims and int(np.prod(dims or [1])) != d.size:
            raise InputSpecError(f"{query.path}: {d.name} of network '{net.name}' has shape {list(d.shape)} "
                                 f"({d.size} values), '{info.name}' in {path} has shape {dims}")


def _value_infos(proto) -> dict:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:       # noqa: BLE001 - fall back to what the file lists
        inferred = proto
    out = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        out[info.name] = info
    return out


def _with_hidden(proto, names):
    """A copy of the model that also outputs the named tensors."""
    if not names:
        return proto
    vi = _value_infos(proto)
    out = copy.deepcopy(proto)
    for n in names:
        out.graph.output.append(copy.deepcopy(vi[n]))
    return out


def _constants_to_initializers(proto):
    """`Constant` nodes (tensor / float / int values) become initializers: onnx2torch builds its
    Conv / BatchNorm / Gemm modules only from initializer weights (a weight that comes from a
    Constant node is a conversion failure, or a functional call without a bound rule)."""
    from onnx import helper, numpy_helper

    keep = []
    for node in proto.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(attrs) != 1:
            keep.append(node)
            continue
        (name, attr), = attrs.items()
        value = helper.get_attribute_value(attr)
        if name == "value":
            arr = numpy_helper.to_array(value)
        elif name in ("value_float", "value_floats"):
            arr = np.asarray(value, np.float32)
        elif name in ("value_int", "value_ints"):
            arr = np.asarray(value, np.int64)
        else:
            keep.append(node)
            continue
        proto.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto


@dataclass
class _Net:
    decl: object
    path: str
    proto: object              # the file's model, with the hidden tensors as extra outputs (onnxruntime)
    in_shapes: list            # full ONNX input shapes
    module: nn.Module | None   # onnx2torch conversion (None: every output is a constant)
    batch_added: bool = False  # the conversion has an explicit batch axis in front of in_shapes
    constants: dict | None = None   # output index -> its constant value (onnx_int_casts: Shape)


def _input_shapes(proto, path) -> list:
    init = {i.name for i in proto.graph.initializer}
    shapes = []
    for inp in proto.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        dims = [d if d > 0 else 1 for d in dims]
        shapes.append(tuple(dims))
    return shapes


def _per_sample(full) -> tuple:
    return tuple(full[1:]) if len(full) >= 2 and full[0] == 1 else tuple(full)


class ProductModule(nn.Module):
    """z -> V; see the module docstring."""

    def __init__(self, nets: list, M: np.ndarray, query):
        super().__init__()
        self.nets = nn.ModuleList([n.module or nn.Identity() for n in nets])
        self.runs = [n.module is not None for n in nets]
        bias = np.zeros(M.shape[0])
        self.shapes = [[tuple(s) if n.batch_added else _per_sample(s) for s in n.in_shapes] for n in nets]
        n_v, n_z = M.shape
        self.inputs = nn.ModuleList()
        self.places = nn.ModuleList()
        for net in nets:
            lins = nn.ModuleList()
            for d in net.decl.inputs:
                lins.append(_linear(M[d.offset:d.offset + d.size]))
            self.inputs.append(lins)
            places = nn.ModuleList()
            for i, d in enumerate(list(net.decl.outputs) + list(net.decl.hidden)):
                if i in (net.constants or {}):
                    bias[d.offset:d.offset + d.size] = net.constants[i].reshape(-1)
                    continue
                P = np.zeros((n_v, d.size))
                P[d.offset:d.offset + d.size] = np.eye(d.size)
                places.append(_linear(P))
            self.places.append(places)
        in_rows = np.zeros_like(M)
        for v in query.variables:
            if v.kind == "input":
                in_rows[v.offset:v.offset + v.size] = M[v.offset:v.offset + v.size]
        self.place_inputs = _linear(in_rows, bias if np.any(bias) else None)

    def forward(self, z):
        v = self.place_inputs(z)
        for k, net in enumerate(self.nets):
            if not self.runs[k]:
                continue
            xs = [lin(z).reshape(-1, *shape) for lin, shape in zip(self.inputs[k], self.shapes[k])]
            out = net(*xs)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            for place, o in zip(self.places[k], outs):
                v = v + place(o.reshape(o.shape[0], -1))
        return v


def _linear(W: np.ndarray, b: np.ndarray | None = None) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
        if b is not None:
            lin.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
            lin.bias.requires_grad_(False)
    lin.weight.requires_grad_(False)
    return lin


class Product:
    def __init__(self, query, nets: list, M):
        self.query, self.nets, self.M = query, nets, M
        self.model = None
        self.int_casts = False      # integer casts rewritten (onnx_int_casts): exact within its guard
        self._sessions: dict = {}

    def values_vector(self, z: np.ndarray) -> np.ndarray:
        """V for one z, from onnxruntime (the self-check's reference)."""
        values = self.evaluate(np.asarray(z, np.float64).ravel())
        out = np.zeros(self.M.shape[0])
        for v in self.query.variables:
            out[v.offset:v.offset + v.size] = np.asarray(values[v.name], np.float64).ravel()
        return out

    def _session(self, net):
        import onnxruntime as ort

        key = id(net.proto)
        if key not in self._sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            self._sessions[key] = ort.InferenceSession(net.proto.SerializeToString(), opts,
                                                       providers=["CPUExecutionProvider"])
        return self._sessions[key]

    def evaluate(self, z: np.ndarray) -> dict:
        """Every declared variable's value for input z: inputs as float32 (what the networks get),
        hidden nodes and outputs from onnxruntime on the original files."""
        values = {}
        for net in self.nets:
            sess = self._session(net)
            feed = {}
            for d, info, full in zip(net.decl.inputs, sess.get_inputs(), net.in_shapes):
                x = (self.M[d.offset:d.offset + d.size] @ z).astype(np.float32)
                values[d.name] = x.reshape(d.shape)
                feed[info.name] = x.reshape(full)
            outs = sess.run(None, feed)
            for d, o in zip(list(net.decl.outputs) + list(net.decl.hidden), outs):
                values[d.name] = np.asarray(o).reshape(d.shape)
        return values


def load_product(query, files: dict, M: np.ndarray, device=None) -> Product:
    """The product model of the query's networks (`files`: name -> ONNX path, from check_mapping)."""
    from .api import BoundedModel
    from .batch_axis import add_batch_axis, needs_batch_axis
    from .onnx_int_casts import rewrite_int_casts
    from .onnx_rewrites import canonical_onnx
    from .model_loading import _check_float32, _convert, _normalise_proto, load_onnx_proto, trace_module

    protos, nets, int_casts = {}, [], False
    declared = {n.name: n for n in query.networks}
    for net in query.networks:
        path = files[net.name]
        if path not in protos:
            protos[path] = load_onnx_proto(path)
        proto = protos[path]
        _check_types(query, net, proto, path)
        if net.isomorphic_to:
            _check_isomorphic(query, net, declared[net.isomorphic_to], proto, protos, files)
        _check_float32(_int_outputs_as_float(proto), path)
        hidden = [d.onnx_name for d in net.hidden]
        canon, ints, constants = rewrite_int_casts(canonical_onnx(_normalise_proto(copy.deepcopy(proto), path)))
        int_casts = int_casts or ints
        full = _with_hidden(canon, hidden)
        batch_added, module = False, None
        if len(full.graph.output):
            batch_added = needs_batch_axis(full)    # no leading batch dim of 1, or ops on axis 0
            converted = add_batch_axis(full, path) if batch_added else copy.deepcopy(full)
            try:
                module = _convert(_constants_to_initializers(converted), path).eval()
            except ModelLoadError as exc:   # a valid ONNX file onnx2torch cannot convert: no bound rule
                raise UnsupportedOpError(str(exc)) from None
        # onnxruntime runs the file as given (plus the hidden tensors as outputs)
        nets.append(_Net(net, path, _with_hidden(proto, hidden), _input_shapes(full, path), module, batch_added,
                         constants))
    n_z = M.shape[1]
    out = Product(query, nets, M)
    out.int_casts = int_casts
    try:
        loaded = trace_module(_trace(ProductModule(nets, M, query).eval()), (n_z,))
    except ModelLoadError as exc:       # an op torch.fx cannot trace has no bound rule either
        raise UnsupportedOpError(f"{query.path}: {exc}") from None
    try:
        # The self-check's reference: onnxruntime on the original files, one point at a time.
        loaded.reference = _OrtReference(out)
        loaded.source = "ProductModule (onnxruntime on the networks' files)"
        model = BoundedModel(loaded)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{query.path}: the product of the networks cannot be bounded: {exc}") from None
    out.model = model.to(device) if device is not None else model
    return out


def _int_outputs_as_float(proto):
    """The float check's view of the file: int32 / int64 outputs (declared so in the query,
    `_check_types`) count as float; they are rewritten exactly or refused at conversion."""
    ints = (6, 7)
    if not any(o.type.tensor_type.elem_type in ints for o in proto.graph.output):
        return proto
    view = copy.deepcopy(proto)
    for o in view.graph.output:
        if o.type.tensor_type.elem_type in ints:
            o.type.tensor_type.elem_type = 1
    return view


class _OnnxLeafTracer(torch.fx.Tracer):
    """onnx2torch's op modules stay single call_module nodes, as in a one-network load (the op
    registry's rules match them); only the networks' GraphModules are inlined."""

    def is_leaf_module(self, m, qualname) -> bool:
        return type(m).__module__.startswith("onnx2torch") or super().is_leaf_module(m, qualname)


def _trace(root: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.GraphModule(root, _OnnxLeafTracer().trace(root))
    except Exception as exc:
        raise ModelLoadError(f"{type(root).__name__}: torch.fx cannot trace it: "
                             f"{' '.join(str(exc).split())[:300]}") from None


class _OrtReference(nn.Module):
    def __init__(self, product: Product):
        super().__init__()
        self.product = product

    def __deepcopy__(self, memo):       # no weights; onnxruntime sessions are not copyable
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        rows = [self.product.values_vector(p) for p in z.detach().double().cpu().numpy().reshape(z.shape[0], -1)]
        return torch.as_tensor(np.stack(rows), dtype=torch.float64)


def _check_isomorphic(query, net, target, proto, protos, files) -> None:
    other = protos.get(files[target.name])
    if other is None:
        return
    mine = [tuple(_per_sample(s)) for s in _input_shapes(proto, "")]
    theirs = [tuple(_per_sample(s)) for s in _input_shapes(other, "")]
    if mine != theirs or len(proto.graph.output) != len(other.graph.output):
        raise NetworkMappingError(f"{query.path}: network '{net.name}' is isomorphic-to '{target.name}', "
                                  f"but {files[net.name]} and {files[target.name]} differ in their "
                                  f"inputs/outputs")
