"""ONNX-level rewrites for ops onnx2torch refuses but that have an exact equivalent.

* BatchNormalization (inference) on an input of rank other than 4 (onnx2torch converts only
  the ranks it maps to nn.BatchNorm1d/2d/3d; a 3-D tensor [N, C, L] in a ViT is refused):
  `x * s + t` with s = scale / sqrt(var + eps), t = B - mean * s, shaped [C, 1, ..] so that they
  broadcast along dim 1. The load-time self-check compares the result with onnxruntime.
"""
from __future__ import annotations

import numpy as np


def _ranks(proto) -> dict[str, int]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        return {}
    ranks = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            ranks[info.name] = len(t.shape.dim)
    return ranks


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
