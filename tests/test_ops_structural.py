"""Exact-linear ops from ONNX files (onnx2torch's modules): bounds hold for sampled and attacked
points, CROWN <= IBP, alpha <= CROWN; each op sits between two ReLU layers so that CROWN really
propagates through it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from onnx_factory import build, const, rand, shape_const
from op_checks import check_network

C, H, W = 3, 4, 4


def _net(tmp_path, name, op_nodes, inits, out_numel):
    """x [1,2,4,4] -> Conv(3, 3x3, pad 1) -> Relu -> (op nodes: 'r' -> 'o') -> Relu -> Flatten -> Gemm(4)."""
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), *op_nodes,
             helper.make_node("Relu", ["o"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], axis=1, name="flat"),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1, name="gemm")]
    inits = [const("cw", rand((C, 2, 3, 3), 1)), const("cb", rand((C,), 2)),
             const("gw", rand((4, out_numel), 3)), const("gb", rand((4,), 4)), *inits]
    return build(tmp_path, name, nodes, inits, [1, 2, H, W])


def _i64(name, v):
    return shape_const(name, v)


CASES = {
    "transpose": ([helper.make_node("Transpose", ["r"], ["o"], perm=[0, 2, 3, 1])], [], 48),
    "slice": ([helper.make_node("Slice", ["r", "s0", "s1", "ax", "st"], ["o"])],
              [_i64("s0", [0, 1]), _i64("s1", [2, 4]), _i64("ax", [1, 3]), _i64("st", [1, 2])], 2 * 4 * 2),
    "concat": ([helper.make_node("Neg", ["r"], ["n"]), helper.make_node("Concat", ["r", "n"], ["o"], axis=2)], [],
               96),
    "gather": ([helper.make_node("Gather", ["r", "gi"], ["o"], axis=2)], [_i64("gi", [3, 0, 0])], 36),
    "split": ([helper.make_node("Split", ["r", "sp"], ["a", "b"], axis=3),
               helper.make_node("Sub", ["a", "b"], ["o"])], [_i64("sp", [2, 2])], 24),
    "unsqueeze_squeeze": ([helper.make_node("Unsqueeze", ["r", "ua"], ["u"]),
                           helper.make_node("Squeeze", ["u", "ua"], ["o"])], [_i64("ua", [2])], 48),
    "expand": ([helper.make_node("ReduceSum", ["r", "ra"], ["s"], keepdims=1),
                helper.make_node("Expand", ["s", "es"], ["o"])], [_i64("ra", [1]), _i64("es", [1, 2, 4, 4])], 32),
    "reshape": ([helper.make_node("Reshape", ["r", "rs"], ["o"])], [_i64("rs", [1, 4, 12])], 48),
    "pad": ([helper.make_node("Pad", ["r", "pp", "pv"], ["o"], mode="constant")],
            [_i64("pp", [0, 0, 1, 0, 0, 0, 0, 2]), const("pv", 0.25)], 3 * 5 * 6),
    "avgpool": ([helper.make_node("AveragePool", ["r"], ["o"], kernel_shape=[2, 2], strides=[2, 2])], [], 12),
    "avgpool_pad": ([helper.make_node("AveragePool", ["r"], ["o"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      count_include_pad=0)], [], 48),
    "global_avgpool": ([helper.make_node("GlobalAveragePool", ["r"], ["o"])], [], 3),
    "reduce_mean": ([helper.make_node("ReduceMean", ["r"], ["o"], axes=[2], keepdims=0)], [], 12),
    "neg_sub_const": ([helper.make_node("Neg", ["r"], ["n"]), helper.make_node("Sub", ["cc", "n"], ["o"])],
                      [const("cc", rand((1, 1, 4), 7))], 48),
    "mul_div_broadcast": ([helper.make_node("Mul", ["r", "mc"], ["m"]), helper.make_node("Div", ["m", "dc"], ["o"])],
                          [const("mc", rand((3, 1, 4), 8)), const("dc", [2.0, -3.0, 4.0, 5.0])], 48),
    "add_broadcast": ([helper.make_node("ReduceSum", ["r", "ra"], ["s"], keepdims=1),
                       helper.make_node("Sub", ["r", "s"], ["o"])], [_i64("ra", [1])], 48),
    "conv_transpose": ([helper.make_node("ConvTranspose", ["r", "tw", "tb"], ["o"], strides=[2, 2])],
                       [const("tw", rand((3, 2, 2, 2), 9)), const("tb", rand((2,), 10))], 2 * 8 * 8),
    "resize_nearest": ([helper.make_node("Resize", ["r", "", "sc"], ["o"], mode="nearest")],
                       [const("sc", [1.0, 1.0, 2.0, 2.0])], 3 * 8 * 8),
    "where_const": ([helper.make_node("Where", ["wc", "r", "wv"], ["o"])],
                    [helper.make_tensor("wc", 9, [1, 1, 4], [True, False, True, False]), const("wv", 0.5)], 48),
    "cast_identity": ([helper.make_node("Cast", ["r"], ["k"], to=1), helper.make_node("Identity", ["k"], ["o"])],
                      [], 48),
    "tile": ([helper.make_node("Tile", ["r", "tr"], ["o"])], [_i64("tr", [1, 1, 2, 1])], 96),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_structural_op(tmp_path, case, one_thread):
    nodes, inits, numel = CASES[case]
    path = _net(tmp_path, case, nodes, inits, numel)
    check_network(path, None, seeds=(0,), width=0.4)


class _Structural(torch.nn.Module):
    """Transpose (permute), Slice, ConvTranspose, Concat, Flatten between ReLUs (torch module)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.ct = torch.nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.lin = torch.nn.Linear(140, 5)

    def forward(self, x):
        y = torch.relu(self.c(x))
        z = y.permute(0, 1, 3, 2)[:, :, 1:3]
        t = torch.relu(self.ct(y))
        return self.lin(torch.cat([z[..., :2].flatten(1), t.flatten(1)], 1))


class _Pooling(torch.nn.Module):
    """AveragePool, Neg, Add of a constant between ReLUs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.lin = torch.nn.Linear(12, 5)

    def forward(self, x):
        a = torch.nn.functional.avg_pool2d(torch.relu(self.c(x)), 2)
        return self.lin(torch.relu(-a + 0.1).flatten(1))


@pytest.mark.parametrize("net", [_Structural, _Pooling])
def test_structural_vs_auto_lirpa(net, one_thread):
    """Our CROWN is at least as tight as auto_LiRPA 0.3's on the same graph (1e-5)."""
    check_network(net().eval(), (2, 4, 4), seeds=(0,), width=0.3, lirpa=True, alpha_iters=3)


def test_abs_module_is_the_absolute_linear_part():
    """IBP's radius map of a padded convolution: |W|, no bias, padding constants 0 (a negative pad
    constant left in would shrink the radius)."""
    from onnx2torch.node_converters.pad import OnnxPadStatic

    from dtensor_verify.ops.structural import abs_module

    torch.manual_seed(0)
    seq = torch.nn.Sequential(OnnxPadStatic([1, 0, 1, 0], constant_value=-3.0), torch.nn.Conv2d(2, 2, 2))
    a = abs_module(seq)
    x = torch.rand(1, 2, 4, 4)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 0, 1, 0)), seq[1].weight.abs())
    assert torch.allclose(a(x), ref) and seq[0].constant_value == -3.0
