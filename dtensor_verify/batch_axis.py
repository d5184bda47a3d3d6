"""An explicit batch axis for ONNX models that have none (or that use their axis 0 as data).

The bound graph treats dim 0 of every tensor as the batch and every op as acting on each sample
separately. ONNX models often do neither: an input of shape [5] (rank 1), [2, 3] (first dim not a
batch of 1), or a model that transposes, concatenates, gathers, reduces or reshapes over axis 0
(ml4acopf: `Transpose(x [1, 22]) -> W @ x -> Transpose`). Such a model is rewritten here, at the
ONNX level, into one that computes the same function with a new leading batch axis of size 1:

* every graph input of shape S becomes [1, *S] (the loader's per-sample shape is then S itself);
* every node that depends on an input gets its axis attributes / inputs shifted by one (a
  non-negative axis a becomes a + 1, a negative one stays), its Transpose perm prefixed by 0, its
  Reshape target made explicit as [-1, *S_out] from the shapes of one run, its Pad / Tile / Expand
  constants prefixed; a broadcasting op whose operands differ in rank gets them aligned (the
  perturbed ones reshaped to [1, 1.., *S], a constant of full rank to [1, *S]); `Shape` of a
  perturbed tensor becomes the constant it is for the fixed input shape;
* ops that treat dim 0 as their own batch (Conv, pooling, ...) are kept when that dim is 1 there
  (a Reshape to [-1, *S[1:]] before and to [-1, *S_out] after) and refused otherwise;
* graph outputs keep the batch axis ([1, *S_out]; the consumers flatten per sample).

Any op with a perturbed input that is not handled is refused in one line naming the node: the
rewrite never guesses. The load-time self-check then compares the result with onnxruntime on the
original file. The per-op rules are in `batch_axis_ops.py`.
"""
from __future__ import annotations

import copy

import numpy as np

from .errors import UnsupportedOpError


class BatchAxisContext:
    """The state of one rewrite: shapes and constant values of the original graph (from one
    onnxruntime run), which tensors depend on an input, and the nodes / initializers added."""

    def __init__(self, proto, shapes: dict, values: dict, source: str):
        self.proto, self.shapes, self.values, self.source = proto, shapes, values, source
        self.opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=13)
        self.batched: set[str] = {i.name for i in proto.graph.input}
        self.nodes: list = []
        self.inits: list = []
        self._k = 0

    def fresh(self, hint: str) -> str:
        self._k += 1
        return f"__bx{self._k}_{hint}"

    def const(self, arr: np.ndarray, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op: str, inputs: list, hint: str, **attrs) -> str:
        from onnx import helper

        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def reshape(self, name: str, shape) -> str:
        return self.node("Reshape", [name, self.const(np.asarray(shape, np.int64), "shape")], "reshape")

    def rank(self, name: str) -> int:
        return len(self.shapes[name])

    def is_batched(self, name: str) -> bool:
        return name in self.batched

    def refuse(self, node, why: str):
        raise UnsupportedOpError(f"{self.source}: node '{node.name or node.output[0]}' ({node.op_type}): {why}; "
                                 f"cannot add the batch axis this model needs (its input has no leading batch "
                                 f"dim of 1, or it acts on axis 0)")


def _run_shapes(proto) -> tuple[dict, dict]:
    """Shapes of every tensor of the graph and values of every tensor, from one onnxruntime run on
    zeros (the input shapes are fixed; dynamic dims count as 1)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    probe = copy.deepcopy(proto)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in known:
                probe.graph.output.append(helper.make_empty_tensor_value_info(out))
                known.add(out)
    del probe.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {}
    for inp in probe.graph.input:
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim]
        feed[inp.name] = np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, feed)))
    values.update({k: v for k, v in feed.items()})
    for init in probe.graph.initializer:
        values[init.name] = numpy_helper.to_array(init)
    shapes = {k: tuple(np.shape(v)) for k, v in values.items()}
    return shapes, values


def input_shapes(proto) -> list[tuple[int, ...]]:
    inits = {i.name for i in proto.graph.initializer}
    return [tuple(d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim)
            for i in proto.graph.input if i.name not in inits]


def needs_batch_axis(proto) -> bool:
    """True when an input has no leading batch dim of 1 (rank < 2 or a fixed first dim other than
    1) or an op on a perturbed tensor acts on axis 0 (from onnx's shape inference; a tensor whose
    rank is unknown there is assumed not to)."""
    inits = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = list(inp.type.tensor_type.shape.dim)
        if len(dims) < 2 or (dims[0].dim_value > 0 and dims[0].dim_value != 1):
            return True
    from .batch_axis_ops import touches_axis0

    shapes = _inferred_shapes(proto)
    consts = _constants(proto)
    batched = {i.name for i in proto.graph.input if i.name not in inits}
    for node in proto.graph.node:
        if not any(i in batched for i in node.input):
            continue
        batched.update(o for o in node.output if o)
        if node.op_type == "Shape":
            batched.difference_update(node.output)
            continue
        if touches_axis0(node, shapes, consts):
            return True
    return False


def _constants(proto) -> dict:
    """Values of the initializers and Constant nodes (the axes inputs of Slice / Reduce*)."""
    from onnx import helper, numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute:
            value = helper.get_attribute_value(node.attribute[0])
            out[node.output[0]] = numpy_helper.to_array(value) if hasattr(value, "dims") else np.asarray(value)
    return out


def _inferred_shapes(proto) -> dict:
    from .onnx_facts import inferred_dims

    return inferred_dims(proto)


def add_batch_axis(proto, source: str):
    """The rewritten model (a new proto; see the module docstring)."""
    from onnx import helper

    from .batch_axis_ops import rewrite_node

    try:
        shapes, values = _run_shapes(proto)
    except Exception as exc:        # noqa: BLE001 - onnxruntime's own message
        raise UnsupportedOpError(f"{source}: onnxruntime cannot run the model to find its shapes "
                                 f"({' '.join(str(exc).split())[:200]}); cannot add a batch axis") from None
    ctx = BatchAxisContext(proto, shapes, values, source)
    for node in proto.graph.node:
        if not any(ctx.is_batched(i) for i in node.input if i):
            ctx.nodes.append(node)
            continue
        rewrite_node(ctx, node)
    out = copy.deepcopy(proto)
    del out.graph.node[:]
    out.graph.node.extend(ctx.nodes)
    out.graph.initializer.extend(ctx.inits)
    del out.graph.value_info[:]
    for inp in out.graph.input:
        if inp.name in ctx.batched:
            _set_shape(inp, (1, *shapes[inp.name]))
    for o in out.graph.output:
        if o.name in ctx.batched:
            _set_shape(o, (1, *shapes[o.name]))
        else:
            raise UnsupportedOpError(f"{source}: output '{o.name}' does not depend on the input; "
                                     f"cannot add a batch axis")
    return helper.make_model(out.graph, opset_imports=list(out.opset_import), ir_version=out.ir_version)


def _set_shape(info, shape) -> None:
    dims = info.type.tensor_type.shape.dim
    del dims[:]
    for s in shape:
        dims.add().dim_value = int(s)
