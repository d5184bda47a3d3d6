"""Constants that an op binds at build time follow the model to its device.

A ViT concatenates a learned class token (a constant) with the patch embeddings. The exact
linear-map op binds that constant when it is built, on the CPU; after `model.to("cuda")` the
op must use the constant on the GPU, not mix devices (seen on an H100: every vit_2023 instance
ended `error` with "Expected all tensors to be on the same device ... wrapper_CUDA_cat").
No GPU here: the op is run on meta tensors, which fails the same way on a CPU constant.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import dtensor_verify as dv
from dtensor_verify.ops.linear_map import LinearMapOp


class WithToken(nn.Module):
    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 4))
        self.lin = nn.Linear(4, 3)

    def forward(self, x):                      # x [B, 2, 4]
        t = self.token.expand(x.shape[0], 1, 4)
        return self.lin(torch.cat([t, x], dim=1).relu()).flatten(1)


def test_linear_map_constants_follow_the_input_device():
    torch.manual_seed(0)
    model = dv.load(WithToken(), (2, 4), device="cpu")
    maps = [n.op for n in model.graph.nodes if isinstance(n.op, LinearMapOp)]
    assert maps, "the concatenation should be an exact linear map"
    checked = 0
    for op in maps:
        xs = [torch.zeros(2, *s, device="meta") for s in op.in_shapes]
        out = op.fn(*xs)
        assert out.device.type == "meta", op.name
        checked += 1
    assert checked
    # and on the model's own device the values are unchanged
    x = torch.randn(5, 2, 4)
    lo, hi = (x - 0.1).numpy(), (x + 0.1).numpy()
    b = model.compute_bounds(lo[:1], hi[:1], method="crown")
    assert torch.all(b.lower <= b.upper)
