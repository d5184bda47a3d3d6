"""The fast forms of the patches steps equal the forms they replace (issues 20/21, TinyYOLO):
`patches.WindowGather` equals the per-call advanced-indexing gather, `patches_relu.relu_patches_step`
(the relaxation once per node, one gather per piece) equals ReLU's rule run on every window
(`row_pieces.windowed_elementwise`), whatever the pieces; and CROWN's bounds on small CNNs with a
softmax downstream of the conv ReLUs (so `best_of_shifts` runs every sweep twice) are those of the
old form to 1e-6 relative, and sound on sampled points."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dtensor_verify as dv
import dtensor_verify.ops.patches_relu as patches_relu
from dtensor_verify.ops import row_pieces
from dtensor_verify.ops.patches import Patches, WindowGather
from dtensor_verify.ops.relu import ReluOp, relaxation


def _gather_by_advanced_indexing(A: Patches, t: torch.Tensor) -> torch.Tensor:
    """The gather these replace: pad per call, index the [Hp, Wp, B, C] grid by rows x columns."""
    (pt, pb, pl, pr), ih, iw = A._indices()
    grid = F.pad(t, (pl, pr, pt, pb)).permute(2, 3, 0, 1)
    return grid[ih.unsqueeze(2), iw.unsqueeze(1)].permute(3, 0, 4, 1, 2)


def _random_patches(B=1, K=37, C=3, kh=4, kw=5, H=9, W=8, seed=0) -> Patches:
    gen = torch.Generator().manual_seed(seed)
    top = torch.randint(-kh + 1, H, (K,), generator=gen)
    left = torch.randint(-kw + 1, W, (K,), generator=gen)
    A = Patches(torch.randn(B, K, C, kh, kw, generator=gen), top, left, (C, H, W))
    return A.with_P(A.P * A.inside())


def _fast_step(lA, uA, lower, upper):
    up_slope, up_intercept, adaptive, _, _ = relaxation(lower, upper)
    return patches_relu.relu_patches_step(lA, uA, adaptive, up_slope, up_intercept)


def _bounds(B, C, H, W, seed=1):
    gen = torch.Generator().manual_seed(seed)
    lower = torch.randn(B, C, H, W, generator=gen)
    upper = lower + 2 * torch.rand(B, C, H, W, generator=gen)
    lower[:, 0, :2] = 0.5                       # some stable neurons of each sign
    upper[:, 1, :2] = -0.5
    return lower, upper.maximum(lower)


@pytest.mark.parametrize("batch", [1, 3])
def test_window_gather_equals_advanced_indexing_on_every_piece(batch):
    A = _random_patches(B=batch)
    t = torch.randn(batch, 3, 9, 8)
    want = _gather_by_advanced_indexing(A, t)
    assert torch.equal(A.gather(t), want)
    windows = WindowGather(A, t, 2 * t)
    for rows in (slice(0, 5), slice(5, 6), slice(6, 37), slice(3, 3)):
        got, twice = windows.rows(rows)
        assert got.is_contiguous() and torch.equal(got, want[:, rows]) and torch.equal(twice, 2 * want[:, rows])


@pytest.mark.parametrize("case", ["shared", "separate", "lower_only", "upper_only", "expanded"])
def test_relu_step_equals_the_rule_on_windows(case, monkeypatch):
    A = _random_patches(B=2, seed=3)
    if case == "expanded":                      # a sweep's start: one P expanded over the batch
        A = A.with_P(A.P[:1].expand(2, -1, -1, -1, -1))
    other = A.with_P(torch.randn_like(A.P) * A.inside())
    lower, upper = _bounds(2, 3, 9, 8)
    lA, uA = {"shared": (A, A), "separate": (A, other), "lower_only": (A, None),
              "upper_only": (None, other), "expanded": (A, A)}[case]
    want = row_pieces.windowed_elementwise(ReluOp("r", None), lA, uA, [(lower, upper)])
    for size in (None, 1, 7 * 60):              # one piece, a row per piece, a few rows per piece
        if size is not None:
            monkeypatch.setattr(patches_relu, "piece_size", lambda like, temps, size=size: size)
        got = _fast_step(lA, uA, lower, upper)
        for w, g in zip(want.input_A[0], got.input_A[0]):
            assert (w is None) == (g is None)
            if w is not None:
                assert torch.equal(w.P, g.P) and torch.equal(w.top, g.top) and w.shape == g.shape
        for w, g in ((want.lbias, got.lbias), (want.ubias, got.ubias)):
            if isinstance(w, torch.Tensor):
                assert torch.allclose(w, g, rtol=1e-6, atol=1e-6)
            else:
                assert not isinstance(g, torch.Tensor) and g == w


class _ConvSoftmax(nn.Module):
    """TinyYOLO in small, then a softmax: conv -> relu -> conv + residual -> relu -> zero pad ->
    2 x 2 average pool -> conv -> relu -> fc -> softmax -> fc -> relu -> fc. The ReLU after the
    softmax is bounded by `best_of_shifts` (two sweeps back through the conv ReLUs)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 5 * 5, 6)
        self.fc2 = nn.Linear(6, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h) + h)
        h = F.avg_pool2d(F.pad(h, (0, 1, 0, 1)), 2)
        h = torch.relu(self.c3(h)).flatten(1)
        y = torch.softmax(2.0 * self.fc1(h), dim=-1)
        return self.fc3(torch.relu(self.fc2(y)))


@pytest.mark.parametrize("net", ["conv_softmax", "residual"])
def test_crown_bounds_equal_the_old_form_and_are_sound(net, monkeypatch):
    from model_zoo import residual_net
    torch.manual_seed(5)
    model, shape = (_ConvSoftmax().eval(), (2, 10, 10)) if net == "conv_softmax" else residual_net(2)
    m = dv.load(model, shape)
    x = torch.rand(2, *shape)
    box = (x - 0.15, x + 0.15)
    calls = []
    real = patches_relu.relu_patches_step
    monkeypatch.setattr(patches_relu, "relu_patches_step", lambda *a: calls.append(1) or real(*a))
    new = m.compute_bounds(*box, method="crown")
    assert calls, "no ReLU step ran on patches"
    real_rule = ReluOp.backward_patches
    monkeypatch.setattr(ReluOp, "backward_patches", lambda self, lA, uA, ib, params=None, alpha=None, beta=None:
                        row_pieces.windowed_elementwise(self, lA, uA, ib) if alpha is None and beta is None
                        else real_rule(self, lA, uA, ib, params, alpha, beta))
    n_calls = len(calls)
    old = m.compute_bounds(*box, method="crown")
    assert len(calls) == n_calls, "the old form ran the new step"
    for a, b in ((new.lower, old.lower), (new.upper, old.upper)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))
    xs = box[0] + (box[1] - box[0]) * torch.rand(256, *box[0].shape)
    with torch.no_grad():
        y = model(xs.reshape(-1, *shape)).reshape(256, 2, -1)
    assert (y >= new.lower - 1e-5).all() and (y <= new.upper + 1e-5).all()
    assert (new.upper - new.lower).min() > 0
    dense = m.compute_bounds(*box, method="crown", crown_options=dv.CrownOptions(patches=False))
    for a, b in ((new.lower, dense.lower), (new.upper, dense.upper)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))


def test_residual_windows_add_by_slices_as_by_scatter(monkeypatch):
    """A conv branch's 3 x 3 windows meet an identity branch's 1 x 1 windows (each at one offset
    of the other): the sum by slices equals the sum by per-row scatter, bitwise."""
    from dtensor_verify.ops.patches import add_A
    gen = torch.Generator().manual_seed(7)
    rows = torch.tensor([0, 9, 17, 30, 35])
    one = Patches.identity(rows, (2, 6, 6), 2, torch.float32, "cpu")
    b = one.with_P(torch.randn(2, 5, 2, 1, 1, generator=gen))
    a = Patches(torch.randn(2, 5, 2, 3, 3, generator=gen), one.top - 1, one.left - 1, (2, 6, 6))
    a = a.with_P(a.P * a.inside())
    fast = add_A(a, b)
    assert b.uniform_offset(a.top, a.left) == (1, 1)
    monkeypatch.setattr(Patches, "uniform_offset", lambda self, top, left: None)
    slow = add_A(a, b)
    assert torch.equal(fast.P, slow.P) and torch.equal(fast.top, slow.top)
    assert torch.equal(fast.to_dense(), a.to_dense() + b.to_dense())


def test_piece_size_follows_the_device_share(monkeypatch):
    like = torch.empty(0)
    assert row_pieces.piece_size(like, 7) == row_pieces.WINDOWED_PIECE_ELEMENTS      # a CPU: fixed
    meta = torch.empty(0, device="meta")
    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", str(1 << 32))
    monkeypatch.setenv("DTENSOR_VERIFY_SHARE_DEVICE", "2")
    want = int((1 << 31) * row_pieces.PIECE_MEMORY_FRACTION) // (7 * 4)
    assert row_pieces.piece_size(meta, 7) == want
    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", "1000")          # little memory: never below the base
    assert row_pieces.piece_size(meta, 7) == row_pieces.WINDOWED_PIECE_ELEMENTS


def test_the_fast_step_steps_aside_for_autograd():
    A = _random_patches(B=1)
    lower, upper = _bounds(1, 3, 9, 8)
    assert patches_relu.applies(A, A, lower, upper)
    tracked = A.with_P(A.P.clone().requires_grad_())
    assert not patches_relu.applies(tracked, tracked, lower, upper)
    with torch.no_grad():
        assert patches_relu.applies(tracked, tracked, lower, upper)
    got = ReluOp("r", None).backward_patches(tracked, tracked, [(lower, upper)])
    got.input_A[0][0].P.sum().backward()
    assert tracked.P.grad is not None
