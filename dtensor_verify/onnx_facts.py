"""What an ONNX graph states about its values without running it: the constants (initializers and
Constant nodes) and the shapes ONNX shape inference gives. Shared by the rewrites that run before
conversion (onnx_rewrites, onnx_pow, batch_axis)."""
from __future__ import annotations


def constant_values(proto) -> dict:
    from onnx import helper, numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
    return out


def inferred_dims(proto) -> dict[str, tuple]:
    """Every value's shape as ONNX shape inference gives it (None for a symbolic dim); {} when
    inference fails (then nothing is known about any value)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:               # noqa: BLE001 - no shapes: nothing is known
        return {}
    dims = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            dims[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return dims


def elem_types(proto) -> dict[str, int]:
    """ONNX element type (TensorProto enum) of every initializer and inferred value; {} when shape
    inference fails (callers then rewrite nothing)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:       # noqa: BLE001 - no types: nothing is rewritten
        return {}
    types = {i.name: i.data_type for i in proto.graph.initializer}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def perturbed_names(proto) -> tuple[set, set]:
    """(initializer names, names of the graph inputs that are not initializers and of every value
    computed from them), in the graph's node order."""
    inits = {i.name for i in proto.graph.initializer}
    perturbed = {i.name for i in proto.graph.input if i.name not in inits}
    for node in proto.graph.node:
        if any(i in perturbed for i in node.input):
            perturbed.update(o for o in node.output if o)
    return inits, perturbed
