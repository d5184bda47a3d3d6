"""Per-op rules of the batch-axis rewrite (see `batch_axis.py`).

Each rule re-emits one ONNX node whose perturbed inputs now carry a leading batch axis of size 1,
so that it computes [1, *S_out] where the original computed S_out. `ctx.shapes` holds the
original shapes, `ctx.values` the values of constant tensors (one onnxruntime run).
"""
from __future__ import annotations

import numpy as np

UNARY = {"Relu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil",
         "Sin", "Cos", "Tan", "Erf", "Softplus", "Softsign", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu",
         "HardSigmoid", "HardSwish", "Identity", "Dropout", "Cast", "Clip", "Sign", "Round", "Not",
         "ThresholdedRelu", "Mish", "Atan", "Asin", "Acos", "Sinh", "Cosh", "IsNaN", "IsInf"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Sum", "Mean", "Equal", "Greater",
             "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "PRelu", "Mod"}
# Ops that treat their own dim 0 as a batch: kept where that dim is 1.
BATCH_NATIVE = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                "BatchNormalization", "InstanceNormalization", "LRN", "Resize", "Upsample", "DepthToSpace",
                "SpaceToDepth", "LpPool"}
REDUCE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}
AXIS_OPS = {"Concat", "Gather", "GatherElements", "Split", "Softmax", "LogSoftmax", "Hardmax",
            "LayerNormalization", "CumSum"}


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _emit(ctx, node, inputs, **changes):
    """Re-emit `node` with new inputs / attributes, same outputs (now batched)."""
    from onnx import helper

    attrs = _attrs(node)
    attrs.update({k: v for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        attrs.pop(k, None)
    ctx.nodes.append(helper.make_node(node.op_type, list(inputs), list(node.output), name=node.name,
                                      domain=node.domain or None, **attrs))
    ctx.batched.update(o for o in node.output if o)


def _const_value(ctx, node, name):
    if ctx.is_batched(name):
        ctx.refuse(node, f"input '{name}' depends on the network input where a constant is needed")
    return np.asarray(ctx.values[name])


def _axes_of(ctx, node, attr="axes", index=1):
    """The node's axes (attribute or constant input), or None when absent."""
    attrs = _attrs(node)
    if attr in attrs:
        return [int(a) for a in attrs[attr]]
    if len(node.input) > index and node.input[index]:
        return [int(a) for a in _const_value(ctx, node, node.input[index]).ravel()]
    return None


def _with_axes(ctx, node, axes, data, index=1, attr_form=False):
    """Emit `node` with `axes` (already shifted), in the node's own form (attribute or input)."""
    if attr_form:
        _emit(ctx, node, [data], axes=list(axes))
    else:
        rest = list(node.input[index + 1:])
        _emit(ctx, node, [data, ctx.const(np.asarray(axes, np.int64), "axes"), *rest], axes=None)


def _align(ctx, name, rank):
    """A perturbed tensor of original rank < rank, reshaped to [-1, 1.., *S] (rank + 1 dims)."""
    shape = ctx.shapes[name]
    if len(shape) >= rank:
        return name
    return ctx.reshape(name, [-1, *([1] * (rank - len(shape))), *shape])


def _broadcast(ctx, node):
    ins = [i for i in node.input]
    rank = max(ctx.rank(i) for i in ins if i)
    new = []
    for i in ins:
        if not i:
            new.append(i)
        elif ctx.is_batched(i):
            new.append(_align(ctx, i, rank))
        elif ctx.rank(i) == rank:
            new.append(ctx.reshape(i, [1, *ctx.shapes[i]]))
        else:
            new.append(i)
    _emit(ctx, node, new)


def _unary(ctx, node):
    if any(ctx.is_batched(i) for i in node.input[1:] if i):
        ctx.refuse(node, "a perturbed parameter input")
    _emit(ctx, node, node.input)


def _transpose(ctx, node):
    rank = ctx.rank(node.input[0])
    perm = _attrs(node).get("perm") or list(reversed(range(rank)))
    _emit(ctx, node, node.input, perm=[0] + [int(p) + 1 for p in perm])


def _axis_op(ctx, node):
    attrs = _attrs(node)
    rank = ctx.rank(node.input[0])
    default = {"Softmax": 1 if ctx.opset < 13 else -1, "LogSoftmax": 1 if ctx.opset < 13 else -1,
               "Hardmax": 1 if ctx.opset < 13 else -1, "LayerNormalization": -1}.get(node.op_type, 0)
    if node.op_type == "CumSum":
        axis = int(_const_value(ctx, node, node.input[1]).ravel()[0])
        _emit(ctx, node, [node.input[0], ctx.const(np.asarray(_norm(axis, rank) + 1, np.int64), "axis")])
        return
    axis = int(attrs.get("axis", default))
    new_axis = axis if axis < 0 else axis + 1
    ins = list(node.input)
    if node.op_type == "Concat":
        ins = [i if ctx.is_batched(i) else ctx.reshape(i, [1, *ctx.shapes[i]]) for i in ins]
    elif node.op_type == "Gather" and ctx.is_batched(ins[1]):
        ctx.refuse(node, "the indices depend on the network input")
    elif node.op_type == "GatherElements":
        if not ctx.is_batched(ins[0]) or ctx.is_batched(ins[1]):
            ctx.refuse(node, "the indices depend on the network input")
        ins[1] = ctx.reshape(ins[1], [1, *ctx.shapes[ins[1]]])
    elif node.op_type in ("Split", "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization"):
        if any(ctx.is_batched(i) for i in ins[1:] if i):
            ctx.refuse(node, "a perturbed parameter input")
    _emit(ctx, node, ins, axis=new_axis)


def _slice(ctx, node):
    data = node.input[0]
    rank = ctx.rank(data)
    if ctx.opset < 10:
        attrs = _attrs(node)
        axes = attrs.get("axes") or list(range(len(attrs["starts"])))
        _emit(ctx, node, [data], axes=[_norm(int(a), rank) + 1 for a in axes])
        return
    starts = _const_value(ctx, node, node.input[1])
    _const_value(ctx, node, node.input[2])
    axes = _axes_of(ctx, node, attr="-", index=3)
    if axes is None:
        axes = list(range(len(starts.ravel())))
    new_axes = ctx.const(np.asarray([_norm(a, rank) + 1 for a in axes], np.int64), "axes")
    steps = list(node.input[4:5])
    _emit(ctx, node, [data, node.input[1], node.input[2], new_axes, *steps])


def _squeeze(ctx, node):
    data = node.input[0]
    shape = ctx.shapes[data]
    axes = _axes_of(ctx, node)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    new = [_norm(a, len(shape)) + 1 for a in axes]
    _with_axes(ctx, node, new, data, attr_form=ctx.opset < 13)


def _unsqueeze(ctx, node):
    data = node.input[0]
    out_rank = ctx.rank(node.input[0]) + len(_axes_of(ctx, node) or [])
    new = [_norm(a, out_rank) + 1 for a in _axes_of(ctx, node)]
    _with_axes(ctx, node, new, data, attr_form=ctx.opset < 13)


def _reshape_to(ctx, node):
    """Reshape / Flatten: an explicit [-1, *S_out] (the original output shape of one run)."""
    from onnx import helper

    target = ctx.const(np.asarray([-1, *ctx.shapes[node.output[0]]], np.int64), "shape")
    ctx.nodes.append(helper.make_node("Reshape", [node.input[0], target], [node.output[0]], name=node.name))
    ctx.batched.add(node.output[0])


def _expand(ctx, node):
    out = ctx.shapes[node.output[0]]
    _const_value(ctx, node, node.input[1])
    data = _align(ctx, node.input[0], len(out))
    _emit(ctx, node, [data, ctx.const(np.asarray([1, *out], np.int64), "shape")])


def _tile(ctx, node):
    reps = _const_value(ctx, node, node.input[1]).ravel()
    _emit(ctx, node, [node.input[0], ctx.const(np.asarray([1, *reps], np.int64), "repeats")])


def _pad(ctx, node):
    rank = ctx.rank(node.input[0])
    if ctx.opset < 11:
        pads = list(_attrs(node)["pads"])
        _emit(ctx, node, node.input, pads=[0, *pads[:rank], 0, *pads[rank:]])
        return
    pads = _const_value(ctx, node, node.input[1]).ravel()
    rest = [i for i in node.input[2:3]]
    if len(node.input) > 3 and node.input[3]:
        axes = [_norm(int(a), rank) + 1 for a in _const_value(ctx, node, node.input[3]).ravel()]
        _emit(ctx, node, [node.input[0], node.input[1], *(rest or [""]), ctx.const(np.asarray(axes, np.int64))])
        return
    new = np.concatenate([[0], pads[:rank], [0], pads[rank:]]).astype(np.int64)
    _emit(ctx, node, [node.input[0], ctx.const(new, "pads"), *rest])


def _reduce(ctx, node):
    data = node.input[0]
    rank = ctx.rank(data)
    attr_form = "axes" in _attrs(node) or ctx.opset < (13 if node.op_type == "ReduceSum" else 18)
    axes = _axes_of(ctx, node)
    if not axes:
        if _attrs(node).get("noop_with_empty_axes", 0):
            _emit(ctx, node, node.input)
            return
        axes = list(range(rank))
    _with_axes(ctx, node, [_norm(a, rank) + 1 for a in axes], data, attr_form=attr_form)


def _matmul(ctx, node):
    a, b = node.input[:2]
    ra, rb = ctx.rank(a), ctx.rank(b)
    if ra == 1 and rb == 1:
        ctx.refuse(node, "a dot product of rank-1 tensors")
    if ctx.is_batched(b) and rb == 1:
        if ctx.is_batched(a) or ra != 2:
            ctx.refuse(node, "a rank-1 perturbed right operand")
        at = ctx.node("Transpose", [a], "transpose", perm=[1, 0])      # W @ x == x @ W^T
        _emit(ctx, node, [b, at])
        return
    if ctx.is_batched(a) and ra == 1:
        if rb != 2:
            ctx.refuse(node, "a rank-1 perturbed left operand times a batch of matrices")
        _emit(ctx, node, [a, b])
        return
    rank = max(ra, rb)
    _emit(ctx, node, [_align(ctx, x, rank) if ctx.is_batched(x) else x for x in (a, b)])


def _gemm(ctx, node):
    """alpha * op(A) @ op(B) + beta * C, with B and C constant: MatMul, then Add."""
    attrs = _attrs(node)
    a, b = node.input[:2]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if ctx.is_batched(b) or (c and ctx.is_batched(c)) or not ctx.is_batched(a):
        ctx.refuse(node, "B or C depends on the network input")
    if attrs.get("transA", 0):
        a = ctx.node("Transpose", [a], "transpose", perm=[0, 2, 1])
    w = _const_value(ctx, node, b).astype(np.float64)
    w = (w.T if attrs.get("transB", 0) else w) * float(attrs.get("alpha", 1.0))
    w_name = ctx.const(w.astype(ctx.values[b].dtype), "gemm_b")
    from onnx import helper

    if c is None:
        ctx.nodes.append(helper.make_node("MatMul", [a, w_name], [node.output[0]], name=node.name))
    else:
        cv = _const_value(ctx, node, c).astype(np.float64) * float(attrs.get("beta", 1.0))
        prod = ctx.node("MatMul", [a, w_name], "gemm")
        c_name = ctx.const(cv.astype(ctx.values[c].dtype), "gemm_c")
        ctx.nodes.append(helper.make_node("Add", [prod, c_name], [node.output[0]], name=node.name))
    ctx.batched.add(node.output[0])


def _shape(ctx, node):
    """Shape (or Size) of a perturbed tensor: a constant for the fixed input shape."""
    from onnx import helper

    value = np.asarray(ctx.values[node.output[0]])
    ctx.nodes.append(helper.make_node("Identity", [ctx.const(value, "shape_of")], [node.output[0]], name=node.name))


def _batch_native(ctx, node):
    data = node.input[0]
    shape = ctx.shapes[data]
    outs = [o for o in node.output if o]
    if shape[0] != 1 or len(outs) != 1 or any(ctx.is_batched(i) for i in node.input[1:] if i):
        ctx.refuse(node, f"it treats dim 0 as its batch, and that dim is {shape[0]} here (not 1)")
    from onnx import helper

    x = ctx.reshape(data, [-1, *shape[1:]])
    mid = ctx.fresh("native")
    attrs = _attrs(node)
    ctx.nodes.append(helper.make_node(node.op_type, [x, *node.input[1:]], [mid], name=node.name,
                                      domain=node.domain or None, **attrs))
    target = ctx.const(np.asarray([-1, *ctx.shapes[outs[0]]], np.int64), "shape")
    ctx.nodes.append(helper.make_node("Reshape", [mid, target], [outs[0]], name=ctx.fresh("reshape")))
    ctx.batched.add(outs[0])


RULES = {"Transpose": _transpose, "Slice": _slice, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
         "Reshape": _reshape_to, "Flatten": _reshape_to, "Expand": _expand, "Tile": _tile, "Pad": _pad,
         "MatMul": _matmul, "Gemm": _gemm, "Shape": _shape, "Size": _shape,
         **{op: _unary for op in UNARY}, **{op: _broadcast for op in BROADCAST},
         **{op: _reduce for op in REDUCE}, **{op: _axis_op for op in AXIS_OPS},
         **{op: _batch_native for op in BATCH_NATIVE}}


def rewrite_node(ctx, node) -> None:
    rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if rule is None:
        ctx.refuse(node, "no batch-axis rule for this op on a perturbed tensor")
    rule(ctx, node)


# ------------------------------------------------------------------ does a model need the rewrite?

def touches_axis0(node, shapes: dict, consts: dict) -> bool:
    """Whether `node` (with a perturbed input, in the model as given, dim 0 taken as the batch)
    acts on axis 0 or gives an output whose dim 0 is not 1. Unknown ranks count as not."""
    for out in node.output:
        s = shapes.get(out)
        if s is not None and (len(s) == 0 or (s[0] is not None and s[0] != 1)):
            return True
    rank = len(shapes[node.input[0]]) if node.input and node.input[0] in shapes else None
    if rank is None:
        return False
    attrs = _attrs(node)
    op = node.op_type
    if op == "Transpose":
        perm = attrs.get("perm") or list(reversed(range(rank)))
        return rank > 0 and perm[0] != 0
    if op in AXIS_OPS and op != "CumSum":
        default = {"Softmax": -1, "LogSoftmax": -1, "Hardmax": -1, "LayerNormalization": -1}.get(op, 0)
        return _norm(int(attrs.get("axis", default)), rank) == 0
    axes = _static_axes(node, attrs, consts)
    if op in REDUCE or op in ("Squeeze", "Slice", "Unsqueeze"):
        if axes is None:
            if op in REDUCE:
                return not attrs.get("noop_with_empty_axes", 0)
            return op in ("Squeeze", "Slice")
        out_rank = rank + len(axes) if op == "Unsqueeze" else rank
        return any(_norm(a, out_rank) == 0 for a in axes)
    return False


def _static_axes(node, attrs, consts):
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    index = 3 if node.op_type == "Slice" else 1
    if len(node.input) > index and node.input[index]:
        value = consts.get(node.input[index])
        return None if value is None else [int(a) for a in np.asarray(value).ravel()]
    return [] if node.op_type in REDUCE else None
