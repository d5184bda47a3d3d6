"""ONNX-level rewrites for ops onnx2torch refuses but that have an exact equivalent.

* BatchNormalization (inference) on an input of rank other than 4 (onnx2torch converts only
  the ranks it maps to nn.BatchNorm1d/2d/3d; a 3-D tensor [N, C, L] in a ViT is refused):
  `x * s + t` with s = scale / sqrt(var + eps), t = B - mean * s, shaped [C, 1, ..] so that they
  broadcast along dim 1.
* Split at opset 18 (no onnx2torch converter): one Slice per output.
* Conv / pooling `auto_pad` (SAME_UPPER, SAME_LOWER, VALID): the explicit pads.
* Comparisons / Cast to BOOL of perturbed tensors as float indicators (`onnx_booleans.py`).
* Pow forms without a direct rule: exponent 0 / 1 / several integers, a perturbed exponent
  (`onnx_pow.py`).

The load-time self-check compares the result with onnxruntime.
"""
from __future__ import annotations

import numpy as np

from .onnx_facts import constant_values, inferred_dims


def _ranks(proto) -> dict[str, int]:
    return {name: len(shape) for name, shape in inferred_dims(proto).items()}


def _rank_by_running(proto, name) -> int | None:
    """The rank of tensor `name`, from one onnxruntime run on zeros (shape inference gave none)."""
    import copy

    import onnx
    import onnxruntime as ort
    from onnx import helper

    try:
        probe = copy.deepcopy(proto)
        elem = probe.graph.input[0].type.tensor_type.elem_type
        probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        inp = probe.graph.input[0]
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        return int(sess.run([name], {inp.name: np.zeros(dims, dtype)})[0].ndim)
    except Exception:
        return None


def rewrite_batchnorm(proto):
    """Replace inference BatchNormalization nodes whose input rank is not 4 by Mul + Add."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    ranks = None
    new_nodes, changed = [], False
    for node in proto.graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) != 1 or \
                not all(name in inits for name in node.input[1:5]):
            new_nodes.append(node)
            continue
        if ranks is None:
            ranks = _ranks(proto)
        rank = ranks.get(node.input[0])
        if rank is None:
            rank = _rank_by_running(proto, node.input[0])
        if rank is None or rank == 4:
            new_nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in node.input[1:5])
        s = scale / np.sqrt(var + eps)
        t = bias - mean * s
        dtype = numpy_helper.to_array(inits[node.input[1]]).dtype
        shape = (-1,) + (1,) * max(rank - 2, 0)
        base = (node.name or node.output[0]).replace("/", "_")
        s_name, t_name, mid = f"{base}__bn_scale", f"{base}__bn_shift", f"{base}__bn_scaled"
        proto.graph.initializer.extend([numpy_helper.from_array(s.reshape(shape).astype(dtype), s_name),
                                        numpy_helper.from_array(t.reshape(shape).astype(dtype), t_name)])
        new_nodes.append(helper.make_node("Mul", [node.input[0], s_name], [mid], name=f"{base}__bn_mul"))
        new_nodes.append(helper.make_node("Add", [mid, t_name], list(node.output), name=f"{base}__bn_add"))
        changed = True
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(new_nodes)
    return proto


# --------------------------------------------------------------------------- Split-18, auto_pad

def _split_sizes(node, consts, dims):
    """The sizes of a Split's outputs (its `split` input, or `num_outputs` chunks), or None."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if len(node.input) > 1 and node.input[1]:
        value = consts.get(node.input[1])
        return None if value is None else [int(v) for v in np.asarray(value).ravel()]
    shape = dims.get(node.input[0])
    axis = int(attrs.get("axis", 0))
    if shape is None or shape[axis] is None:
        return None
    d, n = shape[axis], len(node.output)
    chunk = -(-d // n) if "num_outputs" in attrs else d // n
    return [chunk] * (n - 1) + [d - chunk * (n - 1)]


def rewrite_split18(proto):
    """Split at opset >= 18 (onnx2torch has no converter, and onnx cannot lower it to 17): one
    Slice per output, with its constant start / end on the split axis (exact)."""
    from onnx import helper, numpy_helper

    if max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=13) < 18:
        return proto
    if not any(n.op_type == "Split" for n in proto.graph.node):
        return proto
    consts, dims = constant_values(proto), inferred_dims(proto)
    new_nodes, changed = [], False
    for node in proto.graph.node:
        sizes = _split_sizes(node, consts, dims) if node.op_type == "Split" else None
        if sizes is None or len(sizes) != len(node.output):
            new_nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        base = (node.name or node.output[0]).replace("/", "_")
        start = 0
        for k, (out, size) in enumerate(zip(node.output, sizes)):
            names = [f"{base}__split{k}_{w}" for w in ("start", "end", "axis")]
            for name, v in zip(names, (start, start + size, axis)):
                proto.graph.initializer.append(numpy_helper.from_array(np.asarray([v], np.int64), name))
            if out:
                new_nodes.append(helper.make_node("Slice", [node.input[0], *names], [out], name=f"{base}__slice{k}"))
            start += size
        changed = True
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(new_nodes)
    return proto


_AUTO_PAD_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")


def _explicit_pads(node, spatial, kernel):
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs["auto_pad"].decode() if isinstance(attrs["auto_pad"], bytes) else attrs["auto_pad"]
    n = len(spatial)
    strides = list(attrs.get("strides", [1] * n))
    dil = list(attrs.get("dilations", [1] * n))
    if mode in ("NOTSET", "VALID"):
        return [0] * (2 * n) if mode == "VALID" else None
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dil):
        out = -(-size // s)
        need = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = need // 2
        begins.append(small if mode == "SAME_UPPER" else need - small)
        ends.append(need - begins[-1])
    return begins + ends


def rewrite_auto_pad(proto):
    """`auto_pad` SAME_UPPER / SAME_LOWER / VALID (onnx2torch converts only explicit pads) of Conv
    and pooling: the explicit `pads` the standard defines for the input's fixed spatial size."""
    from onnx import helper

    todo = [n for n in proto.graph.node if n.op_type in _AUTO_PAD_OPS and
            any(a.name == "auto_pad" and a.s not in (b"NOTSET", b"") for a in n.attribute)]
    if not todo:
        return proto
    consts, dims = constant_values(proto), inferred_dims(proto)
    for node in todo:
        shape = dims.get(node.input[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            w = consts.get(node.input[1])
            kernel = None if w is None else list(w.shape[2:])
        else:
            kernel = list(attrs.get("kernel_shape", []))
        if shape is None or kernel is None or any(s is None for s in shape[2:]) or len(shape) - 2 != len(kernel):
            continue
        pads = _explicit_pads(node, list(shape[2:]), kernel)
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("pads", pads)])
    return proto


def canonical_onnx(proto):
    """Every rewrite of this module, in order (the loader and the 2.0 product graph)."""
    from .onnx_booleans import rewrite_comparisons
    from .onnx_pow import rewrite_pow

    return rewrite_pow(rewrite_comparisons(rewrite_auto_pad(rewrite_split18(rewrite_batchnorm(proto)))))
