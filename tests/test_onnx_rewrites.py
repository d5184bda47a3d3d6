"""ONNX-level rewrites (dtensor_verify/onnx_rewrites.py) of forms onnx2torch cannot convert:
Split at opset 18 (one Slice per output) and Conv / pooling `auto_pad` (explicit pads). Each
model loads (self-check against onnxruntime) and its bounds hold (sampling + PGD, every method)."""
from __future__ import annotations

import pytest
import numpy as np
from onnx import helper

from onnx_factory import build, const, rand, shape_const
from op_checks import check_network


@pytest.mark.parametrize("form", ["num_outputs_uneven", pytest.param("sizes", marks=pytest.mark.slow),
                                  pytest.param("num_outputs", marks=pytest.mark.slow)])
def test_split_opset18(tmp_path, form):
    if form == "sizes":
        split = helper.make_node("Split", ["r", "sp"], ["a", "b"], axis=1)
        inits, width = [shape_const("sp", [2, 3])], 5
    else:
        width = 6 if form == "num_outputs" else 5
        split = helper.make_node("Split", ["r"], ["a", "b"], axis=-1, num_outputs=2)
        inits = []
    nodes = [helper.make_node("Gemm", ["x", "w", "bias"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["r"]),
             split, helper.make_node("ReduceSum", ["a", "ax"], ["sa"], keepdims=1),
             helper.make_node("Sub", ["b", "sa"], ["y"])]
    inits += [const("w", rand((width, 3), 1)), const("bias", rand((width,), 2)), shape_const("ax", [1])]
    path = build(tmp_path, f"split_{form}", nodes, inits, [1, 3], opset=18)
    check_network(path, None, seeds=(0,), alpha_iters=3)


@pytest.mark.parametrize("op, mode, stride", [
    ("Conv", "SAME_LOWER", 2), pytest.param("Conv", "SAME_UPPER", 1, marks=pytest.mark.slow),
    pytest.param("MaxPool", "SAME_UPPER", 2, marks=pytest.mark.slow),
    pytest.param("Conv", "VALID", 1, marks=pytest.mark.slow),
    pytest.param("AveragePool", "VALID", 2, marks=pytest.mark.slow)])
def test_auto_pad(tmp_path, op, mode, stride):
    if op == "Conv":
        layer = helper.make_node("Conv", ["x", "cw"], ["c"], auto_pad=mode, strides=[stride, stride])
        inits = [const("cw", rand((1, 1, 2, 3), 3))]
    else:
        layer = helper.make_node(op, ["x"], ["c"], auto_pad=mode, kernel_shape=[2, 3], strides=[stride, stride])
        inits = []
    nodes = [layer, helper.make_node("Relu", ["c"], ["y"])]
    path = build(tmp_path, f"{op}_{mode}", nodes, inits, [1, 1, 4, 5])
    check_network(path, None, seeds=(0,), alpha_iters=3)


def test_upsample_opset9(tmp_path):
    """Two opset-9 Upsamples beside a node named "Constant_1" (cgan_2023's
    cGAN_imgSz32_nCh_3_upsample): the version converter adds unnamed Constant nodes (Resize-11's
    roi) that onnx2torch would name "Constant", "Constant_1", ..., colliding with the file's own."""
    from onnx import TensorProto

    shape = helper.make_tensor("s", TensorProto.INT64, [4], [1, 2, 4, 4])
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], name="Conv_0"),
             helper.make_node("Constant", [], ["shp"], value=shape, name="Constant_1"),
             helper.make_node("Reshape", ["c", "shp"], ["c2"], name="Reshape_2"),
             helper.make_node("Relu", ["c2"], ["r"], name="Relu_3"),
             helper.make_node("Upsample", ["r", "sc"], ["u"], mode="nearest", name="Upsample_4"),
             helper.make_node("Upsample", ["u", "sc"], ["u2"], mode="nearest", name="Upsample_5"),
             helper.make_node("Conv", ["u2", "cw2"], ["y"], name="Conv_6")]
    inits = [const("cw", rand((2, 1, 2, 2), 4)), const("cw2", rand((1, 2, 5, 5), 5)),
             const("sc", np.array([1.0, 1.0, 2.0, 2.0], dtype=np.float32))]
    path = build(tmp_path, "upsample9", nodes, inits, [1, 1, 5, 5], opset=9)
    check_network(path, None, seeds=(0,), alpha_iters=3)
