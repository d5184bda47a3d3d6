"""ConvTranspose2d on patches (ops/conv_transpose_patches.py): the step equals the dense adjoint,
and CROWN bounds of generator-like nets (cGAN) equal those of dense A-matrices."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dtensor_verify as dv
from dtensor_verify.methods.crown import intermediate_bounds
from dtensor_verify.ops.conv_transpose_patches import transposed_conv_step
from dtensor_verify.ops.linear_map import LinearMapOp
from dtensor_verify.ops.patches import Patches

PURE = dict(skip_stable=False, intersect_ibp=False)

# (C_in, H, W, C_out, kernel, stride, padding, output_padding, dilation, groups)
GEOMS = [
    (3, 5, 5, 4, 4, 2, 0, 0, 1, 1),         # the cGAN generators' layers
    (3, 6, 6, 2, 3, 1, 0, 0, 1, 1),
    (4, 5, 6, 4, 3, 2, 1, 1, 1, 2),
    (2, 7, 5, 3, (3, 2), (2, 3), (1, 0), (1, 2), (1, 2), 1),
    (2, 6, 6, 2, 1, 3, 0, 0, 1, 1),         # kernel 1, stride 3: outputs no input reaches
    (4, 9, 9, 4, 3, 2, 2, 0, 2, 4),
]


@pytest.mark.parametrize("geom", GEOMS)
def test_step_on_patches_equals_the_dense_adjoint(geom):
    c_in, h, w, c_out, k, s, p, op_, d, g = geom
    torch.manual_seed(0)
    m = nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=p, output_padding=op_, dilation=d, groups=g)
    out_shape = tuple(m(torch.zeros(1, c_in, h, w)).shape[1:])
    n_out = out_shape[0] * out_shape[1] * out_shape[2]
    rows = torch.tensor([0, 7, out_shape[2] + 3, n_out // 2, n_out - 1])
    B = 2
    # Patches with 3x3 random windows around each row's neuron, zero off the grid.
    start = Patches.identity(rows, out_shape, B, torch.float32, "cpu")
    start = Patches(torch.randn(B, len(rows), out_shape[0], 3, 3), start.top - 1, start.left - 1, out_shape)
    start = start.with_P(start.P * start.inside())
    got = transposed_conv_step(m, (c_in, h, w), start)
    dense = start.to_dense()
    flat = dense.reshape(B * len(rows), *out_shape)
    x = torch.zeros(B * len(rows), c_in, h, w, requires_grad=True)
    y = nn.functional.conv_transpose2d(x, m.weight, None, m.stride, m.padding, m.output_padding, m.groups,
                                       m.dilation)
    want, = torch.autograd.grad(y, x, flat)
    want = want.reshape(B, len(rows), c_in, h, w)
    assert isinstance(got, Patches), "these windows stay smaller than the input grid"
    assert got.window[0] * got.window[1] < h * w
    assert torch.allclose(got.to_dense(), want, atol=1e-6)


class _Generator(nn.Module):
    """cGAN-like: Linear -> reshape -> (ConvTranspose -> BN -> ReLU) x 2 -> ConvTranspose -> conv -> ReLU -> fc."""

    def __init__(self):
        super().__init__()
        self.fc_in = nn.Linear(4, 8 * 2 * 2)
        self.t1 = nn.ConvTranspose2d(8, 6, 4, stride=2)
        self.bn1 = nn.BatchNorm2d(6).eval()
        self.t2 = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1)
        self.t3 = nn.ConvTranspose2d(4, 2, 3, stride=1)
        self.c = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 7 * 7, 2)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.3, 0.3)
            self.bn1.running_var.uniform_(0.5, 1.5)

    def forward(self, z):
        h = self.fc_in(z).reshape(-1, 8, 2, 2)
        h = torch.relu(self.bn1(self.t1(h)))
        h = torch.relu(self.t2(h))
        h = torch.relu(self.c(self.t3(h)))
        return self.fc(h.flatten(1))


def test_generator_bounds_on_patches_equal_dense_and_are_sound(monkeypatch):
    torch.manual_seed(3)
    net = _Generator().eval()
    m = dv.load(net, (4,))
    z = torch.rand(2, 4)
    box = (z - 0.3, z + 0.3)
    used = []
    real = LinearMapOp._transposed_conv_patches
    monkeypatch.setattr(LinearMapOp, "_transposed_conv_patches",
                        lambda self, *a: (lambda r: used.append(r is not None) or r)(real(self, *a)))
    dense, _ = intermediate_bounds(m.graph, box, m.layout, dv.CrownOptions(patches=False, **PURE))
    assert not used
    patched, _ = intermediate_bounds(m.graph, box, m.layout, dv.CrownOptions(patches=True, **PURE))
    assert any(used), "no ConvTranspose step ran on patches"
    for k in dense:
        for i in (0, 1):
            assert torch.allclose(dense[k][i], patched[k][i], atol=1e-6, rtol=1e-6), k
    out_d = m.compute_bounds(*box, crown_options=dv.CrownOptions(patches=False))
    out_p = m.compute_bounds(*box, crown_options=dv.CrownOptions(patches=True))
    assert torch.allclose(out_d.lower, out_p.lower, atol=1e-6) and torch.allclose(out_d.upper, out_p.upper, atol=1e-6)
    zs = box[0] + (box[1] - box[0]) * torch.rand(512, *box[0].shape)
    with torch.no_grad():
        y = net(zs.reshape(-1, 4)).reshape(512, 2, -1)
    assert (y >= out_p.lower - 1e-5).all() and (y <= out_p.upper + 1e-5).all()


def _dense_adjoint(m, in_shape, A: Patches) -> torch.Tensor:
    """J^T A through autograd of the module's own function, [B, K, C_in, H, W]."""
    B, K = A.P.shape[:2]
    flat = A.to_dense().reshape(B * K, *A.shape)
    x = torch.zeros(B * K, *in_shape, requires_grad=True)
    y = nn.functional.conv_transpose2d(x, m.weight, None, m.stride, m.padding, m.output_padding, m.groups,
                                       m.dilation)
    want, = torch.autograd.grad(y, x, flat)
    return want.reshape(B, K, *in_shape)


@pytest.mark.parametrize("geom", GEOMS)
def test_many_rows_take_the_phase_basis_and_equal_the_dense_adjoint(geom, monkeypatch):
    """Every output neuron a row with a 2x2 window (a generator sweep's start): the step runs by
    phases (a basis per canvas offset, no per-row canvas) and equals the dense adjoint."""
    import dtensor_verify.ops.conv_transpose_patches as ctp

    c_in, h, w, c_out, k, s, p, op_, d, g = geom
    torch.manual_seed(1)
    m = nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=p, output_padding=op_, dilation=d, groups=g)
    out_shape = tuple(m(torch.zeros(1, c_in, h, w)).shape[1:])
    rows = torch.arange(out_shape[0] * out_shape[1] * out_shape[2])
    start = Patches.identity(rows, out_shape, 2, torch.float32, "cpu")
    start = Patches(torch.randn(2, len(rows), out_shape[0], 2, 2), start.top, start.left, out_shape)
    start = start.with_P(start.P * start.inside())
    calls = []
    real = ctp._by_phases
    monkeypatch.setattr(ctp, "_by_phases", lambda *a: calls.append(1) or real(*a))
    got = transposed_conv_step(m, (c_in, h, w), start)
    if got is None:     # the dense rule holds fewer elements here
        return
    assert calls, "many rows: the phase basis should be the smaller form"
    assert torch.allclose(got.to_dense(), _dense_adjoint(m, (c_in, h, w), start), atol=1e-5)


def test_windows_covering_the_input_grid_stay_patches_when_smaller_than_the_dense_rule():
    """The cGAN's first layer (128 x 2 x 2 -> 128 x 6 x 6, kernel 4, stride 2) in small: the input
    windows cover the 2x2 grid; the dense rule would start from the 6x6 A-matrix, 9x the result."""
    torch.manual_seed(2)
    m = nn.ConvTranspose2d(8, 8, 4, stride=2)
    rows = torch.arange(8 * 6 * 6)
    start = Patches.identity(rows, (8, 6, 6), 1, torch.float32, "cpu")
    start = Patches(torch.randn(1, len(rows), 8, 2, 2), start.top, start.left, (8, 6, 6))
    start = start.with_P(start.P * start.inside())
    got = transposed_conv_step(m, (8, 2, 2), start)
    assert isinstance(got, Patches) and got.smaller_as_dense()
    assert got.P[0].numel() < 8 * 6 * 6 * len(rows)
    assert torch.allclose(got.to_dense(), _dense_adjoint(m, (8, 2, 2), start), atol=1e-5)


def _basis_by_convolution(m, C, kh, kw, oh, ow, canvas):
    """The reference form of a phase basis: the canvas convolution of the identity."""
    M = C * kh * kw
    grid = torch.zeros(M, C, *canvas)
    grid[:, :, oh:oh + kh, ow:ow + kw] = torch.eye(M).reshape(M, C, kh, kw)
    return nn.functional.conv2d(grid, m.weight.detach(), None, m.stride, 0, m.dilation, m.groups).reshape(M, -1)


@pytest.mark.parametrize("geom", GEOMS)
def test_phase_basis_read_off_the_weight_equals_the_canvas_convolution(geom):
    import dtensor_verify.ops.conv_transpose_patches as ctp

    c_in, _, _, c_out, k, s, p, op_, d, g = geom
    torch.manual_seed(4)
    m = nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=p, output_padding=op_, dilation=d, groups=g)
    w = m.weight.detach()
    for kh, kw, canvas in ((2, 2, (8, 9)), (3, 5, (11, 12))):
        for oh in range(0, canvas[0] - kh + 1, 2):
            for ow in range(0, canvas[1] - kw + 1, 3):
                want = _basis_by_convolution(m, c_out, kh, kw, oh, ow, canvas)
                assert torch.equal(ctp._basis(m, w, c_out, kh, kw, oh, ow, canvas, w), want)


def test_phase_basis_is_kept_per_module_until_its_weight_changes():
    import dtensor_verify.ops.conv_transpose_patches as ctp

    m = nn.ConvTranspose2d(3, 2, 4, stride=2)
    w = m.weight.detach()
    first = ctp._phase_basis(m, w, 2, 2, 2, 3, 3, (6, 6), w)
    assert ctp._phase_basis(m, w, 2, 2, 2, 3, 3, (6, 6), w) is first
    assert ctp._phase_basis(m, w, 2, 2, 2, 4, 3, (6, 6), w) is not first          # another phase
    with torch.no_grad():
        m.weight.mul_(2.0)                                                        # in place: a new version
    again = ctp._phase_basis(m, w, 2, 2, 2, 3, 3, (6, 6), w)
    assert again is not first and torch.equal(again, 2.0 * first)
    other = nn.ConvTranspose2d(3, 2, 4, stride=2)
    assert not torch.equal(ctp._phase_basis(other, other.weight.detach(), 2, 2, 2, 3, 3, (6, 6), w), again)
