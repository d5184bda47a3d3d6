"""Softmax over two entries (ops/decompose.py `_two_class`): [sigmoid(x0 - x1), 1 - sigmoid(x0 - x1)],
exact, sound (sampling + PGD, every method), no overflow on a wide box, and the two outputs sum to 1
in the bounds of any row that adds them."""
from __future__ import annotations

import torch
from onnx import helper

import dtensor_verify as dv
from onnx_factory import build, const, rand
from op_checks import check_network


class _Soft(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lin = torch.nn.Linear(4, 6)
        self.dim = dim

    def forward(self, x):
        h = torch.relu(self.lin(x)).reshape(-1, 3, 2) if self.dim == 2 else torch.relu(self.lin(x)).reshape(-1, 2, 3)
        return torch.softmax(h, dim=self.dim).flatten(1)


def test_two_class_softmax_sound_on_both_layouts(one_thread):
    torch.manual_seed(0)
    for dim in (1, 2):
        check_network(_Soft(dim).eval(), (4,), seeds=(0,), width=1.0, alpha_iters=3)


def test_two_class_softmax_onnx_wide_box(tmp_path):
    """ONNX Softmax of [1, 2] on a box of width 2000: finite, tight bounds, sum exactly 1."""
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1), helper.make_node("Softmax", ["g"], ["y"], axis=-1)]
    path = build(tmp_path, "soft2", nodes, [const("w", [[1.0, 0.0], [0.0, 1.0]])], [1, 2])
    model = dv.load(path)
    lo, hi = torch.tensor([[1.0, -1000.0]]), torch.tensor([[1000.0, 0.0]])
    r = model.compute_bounds(lo, hi, "crown")
    assert torch.isfinite(r.lower).all() and torch.isfinite(r.upper).all()
    assert r.lower[0, 0] >= 0.73 and r.upper[0, 1] <= 0.27          # x0 - x1 >= 1: sigmoid(1) = 0.731
    check_network(path, None, seeds=(0,), width=3.0, alpha_iters=3)
