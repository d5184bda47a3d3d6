"""Elementwise affine maps (BatchNorm, constants) on patches: the per-channel form (no A-sized
windows of scale / shift) and the general form both equal the dense step."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dtensor_verify.ops.elementwise_affine import ElementwiseAffineOp, from_batchnorm
from dtensor_verify.ops.patches import Patches

SHAPE = (3, 5, 6)


def _op(kind: str) -> ElementwiseAffineOp:
    torch.manual_seed(0)
    if kind == "batchnorm":
        bn = nn.BatchNorm2d(SHAPE[0]).eval()
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
        op = from_batchnorm("bn", bn)
        op.scale, op.shift = op.scale.reshape(-1, 1, 1), op.shift.reshape(-1, 1, 1)    # as graph.py does
    else:                                       # constants that vary over the grid
        op = ElementwiseAffineOp("aff", torch.randn(SHAPE), torch.randn(SHAPE))
    op.out_shape, op.in_shapes = SHAPE, [SHAPE]
    op.finalize()
    return op


@pytest.mark.parametrize("kind", ["batchnorm", "grid"])
def test_affine_step_on_patches_equals_dense(kind):
    op = _op(kind)
    assert (op._per_channel() is not None) == (kind == "batchnorm")
    rows = torch.tensor([0, 4, 17, 29, 45, 89])
    start = Patches.identity(rows, SHAPE, 2, torch.float32, "cpu")
    A = Patches(torch.randn(2, len(rows), SHAPE[0], 3, 3), start.top - 1, start.left - 1, SHAPE)
    A = A.with_P(A.P * A.inside())
    got = op.backward_patches(A, A, None)
    want = op.backward(A.to_dense(), A.to_dense(), None)
    (got_A, _), = got.input_A
    (want_A, _), = want.input_A
    assert torch.allclose(got_A.to_dense(), want_A, atol=1e-6)
    assert torch.allclose(got.lbias, want.lbias, atol=1e-5)
