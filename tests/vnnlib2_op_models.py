"""One small float32 ONNX model per op type that `supports --onnx-operators` claims: the op is the
model's one interesting node over the perturbed input `x` (its other inputs are initializers).
`op_model(tmp_path, op)` returns (path, box lower, box upper) with a box valid for the op (positive
for Log / Sqrt / Reciprocal)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

X4 = [1, 1, 2, 2]
POSITIVE = {"Log", "Sqrt", "Reciprocal"}
UNARY = ["Abs", "Ceil", "Cos", "Dropout", "Erf", "Exp", "Floor", "Identity", "LeakyRelu", "Log", "Neg",
         "Reciprocal", "Relu", "Sigmoid", "Sign", "Sin", "Softplus", "Sqrt", "Tanh"]


def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _i(name, value):
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


def _n(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def _specs():
    """op -> (nodes, initializers, input shape[, opset])."""
    s = {op: ([_n(op, ["x"])], [], [1, 2]) for op in UNARY}
    for op, k in (("Add", 1.0), ("Sub", 1.0), ("Mul", 2.0), ("Div", 2.0), ("Max", 0.2), ("Min", 0.2),
                  ("Mean", 0.2), ("Sum", 0.2), ("Pow", 2.0)):
        s[op] = ([_n(op, ["x", "k"])], [_f("k", k)], [1, 2])
    s.update({
        "Cast": ([_n("Cast", ["x"], to=TensorProto.FLOAT)], [], [1, 2]),
        "Clip": ([_n("Clip", ["x", "a", "b"])], [_f("a", -0.5), _f("b", 0.5)], [1, 2]),
        "PRelu": ([_n("PRelu", ["x", "s"])], [_f("s", [0.1, 0.3])], [1, 2]),
        "MatMul": ([_n("MatMul", ["x", "W"])], [_f("W", [[1, 2], [-1, 0.5]])], [1, 2]),
        "Gemm": ([_n("Gemm", ["x", "W", "b"], transB=1)], [_f("W", np.eye(2)), _f("b", [1, 2])], [1, 2]),
        "Flatten": ([_n("Flatten", ["x"])], [], X4),
        "Reshape": ([_n("Reshape", ["x", "s"])], [_i("s", [1, 4])], X4),
        "Conv": ([_n("Conv", ["x", "W"])], [_f("W", np.ones((1, 1, 1, 1)))], X4),
        "ConvTranspose": ([_n("ConvTranspose", ["x", "W"])], [_f("W", [[[[1, -1], [0.5, 2]]]])], X4),
        "BatchNormalization": ([_n("BatchNormalization", ["x", "s", "b", "m", "v"])],
                               [_f("s", [2.0]), _f("b", [1.0]), _f("m", [0.5]), _f("v", [4.0])], X4),
        "AveragePool": ([_n("AveragePool", ["x"], kernel_shape=[2, 1])], [], X4),
        "MaxPool": ([_n("MaxPool", ["x"], kernel_shape=[2, 1])], [], X4),
        "GlobalAveragePool": ([_n("GlobalAveragePool", ["x"])], [], X4),
        "Concat": ([_n("Concat", ["x", "k"], axis=1)], [_f("k", [[0.5, -0.5]])], [1, 2]),
        "DepthToSpace": ([_n("DepthToSpace", ["x"], blocksize=2, mode="CRD")], [], [1, 4, 1, 1]),
        "Expand": ([_n("Expand", ["x", "s"])], [_i("s", [1, 3, 2])], [1, 1, 2]),
        "Gather": ([_n("Gather", ["x", "i"], axis=1)], [_i("i", [2, 0])], [1, 3]),
        "GatherElements": ([_n("GatherElements", ["x", "i"], axis=1)], [_i("i", [[2, 0]])], [1, 3]),
        "LayerNormalization": ([_n("LayerNormalization", ["x", "g", "b"], axis=-1)],
                               [_f("g", [1.0, 2.0, 0.5]), _f("b", [0.0, 1.0, -1.0])], [1, 3], 17),
        "Softmax": ([_n("Softmax", ["x"], axis=-1)], [], [1, 3]),
        "LogSoftmax": ([_n("LogSoftmax", ["x"], axis=-1)], [], [1, 3]),
        "Pad": ([_n("Pad", ["x", "p"])], [_i("p", [0, 0, 1, 0, 0, 0, 0, 1])], X4),
        "ReduceMean": ([_n("ReduceMean", ["x"], axes=[1], keepdims=1)], [], [1, 3]),
        "ReduceSum": ([_n("ReduceSum", ["x", "a"], keepdims=1)], [_i("a", [1])], [1, 3]),
        "Resize": ([_n("Resize", ["x", "", "s"], mode="nearest")], [_f("s", [1, 1, 2, 2])], X4),
        "Upsample": ([_n("Upsample", ["x", "s"], mode="nearest")], [_f("s", [1, 1, 2, 2])], X4, 9),
        # Shape's output is an integer tensor: the shape of the perturbed input feeds a Reshape.
        "Shape": ([_n("Shape", ["x"], ["s"]), _n("Relu", ["x"], ["r"]), _n("Reshape", ["r", "s"])], [], X4),
        "Slice": ([_n("Slice", ["x", "b", "e", "a"])], [_i("b", [1]), _i("e", [3]), _i("a", [1])], [1, 4]),
        # Split has several outputs: they are added so the model has one.
        "Split": ([_n("Split", ["x", "s"], ["p", "q"], axis=1), _n("Sub", ["p", "q"])], [_i("s", [2, 2])], [1, 4]),
        "Squeeze": ([_n("Squeeze", ["x", "a"])], [_i("a", [1])], [1, 1, 2]),
        "Unsqueeze": ([_n("Unsqueeze", ["x", "a"])], [_i("a", [2])], [1, 2]),
        "Tile": ([_n("Tile", ["x", "r"])], [_i("r", [1, 2])], [1, 2]),
        "Transpose": ([_n("Transpose", ["x"], perm=[0, 2, 1])], [], [1, 2, 3]),
        "Where": ([_n("Where", ["c", "x", "k"])],
                  [numpy_helper.from_array(np.array([True, False]), "c"), _f("k", [0.3, -0.7])], [1, 2]),
    })
    # Booleans of the perturbed input (float indicators, onnx_booleans.py), back to float by a Cast.
    for op in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"):
        s[op] = ([_n(op, ["x", "k"], ["b"]), _n("Cast", ["b"], to=TensorProto.FLOAT)], [_f("k", [0.25, 0.0])], [1, 2])
    s["Not"] = ([_n("Greater", ["x", "k"], ["b"]), _n("Not", ["b"], ["n"]), _n("Cast", ["n"], to=TensorProto.FLOAT)],
                [_f("k", 0.25)], [1, 2])
    for op in ("And", "Or"):
        s[op] = ([_n("Greater", ["x", "k"], ["b"]), _n("Less", ["x", "m"], ["c"]), _n(op, ["b", "c"], ["n"]),
                  _n("Cast", ["n"], to=TensorProto.FLOAT)], [_f("k", -0.25), _f("m", 0.5)], [1, 2])
    s["Constant"] = ([helper.make_node("Constant", [], ["k"], value=_f("v", [0.5, -1.0])), _n("Add", ["x", "k"])],
                     [], [1, 2])
    s["ConstantOfShape"] = ([_n("ConstantOfShape", ["s"], ["k"], value=_f("v", [1.5])), _n("Mul", ["x", "k"])],
                            [_i("s", [1, 2])], [1, 2])
    return s


def op_model(tmp_path, op):
    spec = _specs()[op]
    nodes, inits, shape = spec[:3]
    opset = spec[3] if len(spec) > 3 else 13
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    p = tmp_path / f"{op}.onnx"
    onnx.save(model, p)
    n = int(np.prod(shape))
    lo, hi = (0.5, 2.0) if op in POSITIVE else (-1.0, 1.0)
    return str(p), np.full((1, n), lo, np.float32), np.full((1, n), hi, np.float32)


def ort_outputs(path, xs):
    """onnxruntime's output for each row of xs (flat inputs), [n, n_out] float64."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    return np.stack([np.asarray(sess.run(None, {"x": x.reshape(shape)})[0], np.float64).ravel() for x in xs])
