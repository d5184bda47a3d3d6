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



def _reachable_tensors(obj, seen=None, depth=0):
    """The parameters and buffers of every module an op can reach: through its attributes, the
    cells of its functions' closures and containers (a device audit that meta tensors alone cannot
    do: F.conv1d of a meta input and a CPU weight runs). Plain constant tensors are left out: the
    ops' functions move those to the input's device when called (`ops/callables.py`)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _reachable_tensors(v, seen, depth + 1)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _reachable_tensors(v, seen, depth + 1)
    elif callable(obj) and getattr(obj, "__closure__", None):
        for cell in obj.__closure__:
            yield from _reachable_tensors(cell.cell_contents, seen, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for v in vars(obj).values():
            yield from _reachable_tensors(v, seen, depth + 1)


class Conv1dNet(nn.Module):
    """A Conv1d is an exact linear map whose IBP radius uses a |W| copy built with the op
    (pensieve's networks in nn4sys_2023; cGAN's ConvTranspose the same way)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.lin = nn.Linear(3 * 4, 2)

    def forward(self, x):                      # x [B, 2, 6]
        return self.lin(self.conv(x).relu().flatten(1))


def test_ops_own_modules_follow_the_model_device():
    """Seen on an H100: every pensieve / cGAN instance ended `error` with "Input type
    (torch.cuda.FloatTensor) and weight type (torch.FloatTensor)": the |W| copy behind a conv's
    IBP radius stayed on the CPU after `model.to("cuda")`. Moving the ops to meta shows the same."""
    torch.manual_seed(0)
    model = dv.load(Conv1dNet(), (2, 6), device="cpu")
    maps = [n.op for n in model.graph.nodes if isinstance(n.op, LinearMapOp) and n.op.abs_fn is not None
            and n.op.kind in ("conv", "conv_transpose")]
    assert maps, "the Conv1d should be a weighted exact linear map"
    model.graph.module.to("meta")
    for node in model.graph.nodes:
        if node.op is not None and callable(getattr(node.op, "to", None)):
            node.op.to("meta")
    for node in model.graph.nodes:
        if node.op is not None:
            off = [t.device for t in _reachable_tensors(node.op) if t.device.type != "meta"]
            assert not off, (node.name, off)
