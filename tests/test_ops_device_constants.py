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


def test_outward_rounding_of_intercepts_is_differentiable():
    """alpha-CROWN differentiates through the intercepts of general activations; the one-ulp
    outward rounding must keep the value (rounded outward) and pass the gradient through (on an
    H100, 'the derivative for nextafter is not implemented' ended the vit runs)."""
    from dtensor_verify.ops.scalar_base import round_out

    x = torch.tensor([0.1, 1 / 3, -2 / 7, 5.0], dtype=torch.float64, requires_grad=True)
    for down in (True, False):
        b64 = 3 * x
        out = round_out(b64, torch.float32, down)
        assert out.dtype == torch.float32
        assert bool(((out.double() <= b64) if down else (out.double() >= b64)).all())
        assert torch.equal(out.detach(), round_out(b64.detach(), torch.float32, down))
        # torch 2.11 (our GPU image, in pyproject's range) has no derivative for nextafter even
        # where a newer CPU build has one: it must not be in the graph at all.
        seen, todo = set(), [out.grad_fn]
        while todo:
            fnode = todo.pop()
            if fnode is None or fnode in seen:
                continue
            seen.add(fnode)
            assert "Nextafter" not in type(fnode).__name__, type(fnode).__name__
            todo += [nxt for nxt, _ in fnode.next_functions]
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.allclose(g, torch.full_like(g, 3.0))
