"""Tiny ONNX models built with `onnx.helper`, for the hostile loader tests.

`build(tmp_path, name, nodes, initializers, in_shape)` writes a checked model with one float32
input `x` and one output `y` (its shape taken from onnxruntime) and returns the path.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def const(name: str, value) -> onnx.TensorProto:
    """A float32 initializer."""
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def const_node(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    """The same constant as a `Constant` node (output `name`)."""
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name + "_value"))


def shape_const(name: str, dims) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(dims, dtype=np.int64), name)


def rand(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)


def build(tmp_path, name: str, nodes, initializers, in_shape, opset: int = 13,
          elem_type=TensorProto.FLOAT, check: bool = True) -> str:
    """Write the model; the output's shape comes from onnxruntime so the checker is satisfied."""
    inp = helper.make_tensor_value_info("x", elem_type, list(in_shape))
    out_shape = _output_shape(nodes, initializers, inp, opset, elem_type) if check else None
    out = helper.make_tensor_value_info("y", elem_type, out_shape)
    graph = helper.make_graph(nodes, name, [inp], [out], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)      # what the pinned onnxruntime reads
    if check:
        onnx.checker.check_model(model, full_check=True)
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(model, path)
    return path


def _output_shape(nodes, initializers, inp, opset, elem_type):
    import onnxruntime as ort

    out = helper.make_tensor_value_info("y", elem_type, None)
    graph = helper.make_graph(nodes, "probe", [inp], [out], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in inp_dims(inp)]
    dtype = np.float64 if elem_type == TensorProto.DOUBLE else \
        np.float16 if elem_type == TensorProto.FLOAT16 else np.float32
    return list(sess.run(None, {"x": np.zeros(dims, dtype)})[0].shape)


def inp_dims(value_info):
    return [d.dim_value if d.dim_value > 0 else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def ort_runner(path: str):
    """x (one sample, any shape) -> onnxruntime's output, flat float64."""
    import onnxruntime as ort

    from dtensor_verify.model_loading import read_bytes

    sess = ort.InferenceSession(read_bytes(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]

    def run(x):
        out = sess.run(None, {inp.name: np.asarray(x, np.float32).reshape(shape)})[0]
        return np.asarray(out, np.float64).ravel()

    return run
