"""Conv A-matrices as patches (dtensor_verify/ops/patches.py): the same bounds as dense A-matrices,
sound on sampled points, and actually used where they are smaller."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dtensor_verify as dv
from dtensor_verify.methods.crown import intermediate_bounds
from dtensor_verify.ops.conv import Conv2dOp
from dtensor_verify.ops.patches import Patches, add_A
from model_zoo import CNN_KINDS, random_cnn, residual_net

PURE = dict(skip_stable=False, intersect_ibp=False)

# (C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CONVS = [
    (3, 7, 7, 4, 3, 1, 1, 1, 1),
    (2, 9, 8, 4, 3, 2, 1, 1, 2),
    (4, 10, 10, 6, (3, 2), (2, 1), (0, 1), (2, 1), 2),
    (3, 11, 9, 2, 5, 3, 2, 1, 1),
    (4, 8, 8, 4, 3, 1, 2, 2, 4),
]


def _conv_op(c_in, h, w, c_out, k, s, p, d, g, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g)
    with torch.no_grad():
        out_shape = tuple(conv(torch.zeros(1, c_in, h, w)).shape[1:])
    return Conv2dOp("conv", conv, out_shape, [(c_in, h, w)])


@pytest.mark.parametrize("geom", CONVS)
def test_conv_step_on_patches_equals_dense_step(geom):
    op = _conv_op(*geom)
    B, rows = 2, torch.tensor([0, 5, 7, op.out_shape[1] * op.out_shape[2] + 3, -1]) % \
        (op.out_shape[0] * op.out_shape[1] * op.out_shape[2])
    # A random A-matrix given as patches: the identity rows through one conv, then random values.
    start = Patches.identity(rows, op.out_shape, B, torch.float32, "cpu")
    start = start.with_P(start.P * torch.randn(B, len(rows), 1, 1, 1))
    res_p = op.backward_patches(start, start, None)
    res_d = op.backward(start.to_dense(), start.to_dense(), None)
    (pl, _), = res_p.input_A
    (dl, _), = res_d.input_A
    assert isinstance(pl, Patches)
    assert torch.allclose(pl.to_dense(), dl, atol=1e-6)
    assert torch.allclose(res_p.lbias, res_d.lbias, atol=1e-6)
    # A second step through a conv of matching channels keeps agreeing.
    x = torch.randn(B, *op.in_shapes[0])
    assert torch.allclose(pl.gather(x).mul(pl.P).flatten(2).sum(-1),
                          (dl * x.unsqueeze(1)).flatten(2).sum(-1), atol=1e-5)


def test_dense_round_trip_and_gather():
    torch.manual_seed(1)
    p = Patches(torch.randn(2, 3, 4, 3, 3), torch.tensor([-1, 2, 4]), torch.tensor([0, -2, 3]), (4, 5, 5))
    p = p.with_P(p.P * p.inside())
    d = p.to_dense()
    assert d.shape == (2, 3, 4, 5, 5)
    # Every in-grid coefficient lands once: the totals agree.
    assert torch.allclose(d.flatten(2).sum(-1), p.P.flatten(2).sum(-1), atol=1e-6)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose((d * x.unsqueeze(1)).flatten(2).sum(-1), (p.P * p.gather(x)).flatten(2).sum(-1),
                          atol=1e-5)


class _Chain(nn.Module):
    """conv -> relu -> conv -> BN -> relu, two same-geometry branches added, relu -> conv -> relu -> fc."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4).eval()
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 1.5)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 3, 3, padding=1, dilation=1)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.bn(self.c2(h)))
        h = torch.relu(self.a(h) + self.b(h))
        h = torch.relu(self.c3(h))
        return self.fc(h.flatten(1))


class _Pooled(nn.Module):
    """conv -> relu -> constant pad -> avg pool -> conv -> relu -> zero pad -> avg pool (padded) -> conv (TinyYOLO's pattern)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.pad1 = nn.ConstantPad2d((1, 0, 0, 1), 0.3)
        self.pool1 = nn.AvgPool2d(2, 2)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.pad2 = nn.ZeroPad2d((0, 1, 1, 0))
        self.pool2 = nn.AvgPool2d(3, 2, padding=1, count_include_pad=True)
        self.c3 = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 6 * 6, 3)

    def forward(self, x):
        h = self.pool1(self.pad1(torch.relu(self.c1(x))))
        h = self.pool2(self.pad2(torch.relu(self.c2(h))))
        return self.fc(torch.relu(self.c3(h)).flatten(1))


def _node_values(graph, x):
    values = {graph.input_name: x}
    with torch.no_grad():
        for node in graph.nodes:
            if node.op is not None:
                values[node.name] = node.op.forward(*[values[i] for i in node.inputs])
    return values


def _models():
    for kind in CNN_KINDS:
        yield (kind, *random_cnn(kind))
    yield ("residual", *residual_net())
    torch.manual_seed(3)
    yield ("chain", _Chain().eval(), (2, 12, 12))
    torch.manual_seed(5)
    yield ("pooled", _Pooled().eval(), (2, 19, 19))


@pytest.mark.parametrize("name,model,shape", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_patches_give_dense_bounds_and_are_sound(name, model, shape, monkeypatch):
    m = dv.load(model, shape)
    torch.manual_seed(0)
    x = torch.rand(2, *shape)
    box = (x - 0.15, x + 0.15)
    used = []
    real = Conv2dOp.backward_patches
    monkeypatch.setattr(Conv2dOp, "backward_patches", lambda self, *a, **k: used.append(self.name) or real(self, *a, **k))
    dense, _ = intermediate_bounds(m.graph, box, m.layout, dv.CrownOptions(patches=False, **PURE))
    assert not used
    patched, _ = intermediate_bounds(m.graph, box, m.layout, dv.CrownOptions(patches=True, **PURE))
    assert used, f"{name}: no conv step ran on patches"
    for k in dense:
        for i in (0, 1):
            assert torch.allclose(dense[k][i], patched[k][i], atol=1e-6, rtol=1e-6), (name, k)
    # Sampled points (and the box corners' centre) stay inside every node's patched bounds.
    xs = box[0] + (box[1] - box[0]) * torch.rand(256, *box[0].shape)
    xs = xs.reshape(-1, *shape)
    values = _node_values(m.graph, xs)
    for k, (lo, up) in patched.items():
        v = values[k].reshape(256, 2, *lo.shape[1:])
        assert (v >= lo - 1e-5).all() and (v <= up + 1e-5).all(), (name, k)
    out_d = m.compute_bounds(*box, crown_options=dv.CrownOptions(patches=False))
    out_p = m.compute_bounds(*box, crown_options=dv.CrownOptions(patches=True))
    assert torch.allclose(out_d.lower, out_p.lower, atol=1e-5)
    y = model(xs).reshape(256, 2, -1)
    assert (y >= out_p.lower - 1e-5).all() and (y <= out_p.upper + 1e-5).all()


def test_same_geometry_branches_stay_patches(monkeypatch):
    """The Add of two convs of one geometry meets as patches (no dense conversion at the join)."""
    torch.manual_seed(3)
    model, shape = _Chain().eval(), (2, 12, 12)
    m = dv.load(model, shape)
    x = torch.rand(1, *shape)
    dense_calls = []
    real = Patches.to_dense
    monkeypatch.setattr(Patches, "to_dense", lambda self: dense_calls.append((self.window, self.shape)) or real(self))
    intermediate_bounds(m.graph, (x - 0.1, x + 0.1), m.layout, dv.CrownOptions(patches=True, **PURE))
    # The two branches meet at h ([4, 6, 6]) as patches; conversions happen only later, on the
    # 12 x 12 grid, where the first conv's windows (13 x 13) would be no smaller than dense.
    assert dense_calls
    assert all(shape == (4, 12, 12) for _, shape in dense_calls), dense_calls


def test_windows_of_different_sizes_add_as_patches():
    torch.manual_seed(2)
    a = Patches(torch.randn(2, 3, 4, 3, 3), torch.tensor([1, 2, 3]), torch.tensor([0, 4, 2]), (4, 9, 9))
    b = Patches(torch.randn(2, 3, 4, 1, 2), torch.tensor([2, 0, 5]), torch.tensor([1, 7, 2]), (4, 9, 9))
    a, b = a.with_P(a.P * a.inside()), b.with_P(b.P * b.inside())
    s = add_A(a, b)
    assert isinstance(s, Patches)
    assert torch.allclose(s.to_dense(), a.to_dense() + b.to_dense(), atol=1e-6)
    # A union as large as the grid is summed dense.
    c = Patches(torch.randn(2, 3, 4, 9, 9), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), (4, 9, 9))
    assert not isinstance(add_A(c, b), Patches)
    assert torch.allclose(add_A(c, b), c.to_dense() + b.to_dense(), atol=1e-6)


def test_dense_plus_patches():
    torch.manual_seed(4)
    p = Patches(torch.randn(1, 3, 2, 3, 3), torch.tensor([-1, 2, 4]), torch.tensor([0, -2, 3]), (2, 5, 5))
    p = p.with_P(p.P * p.inside())
    d = torch.randn(2, 3, 2, 5, 5)
    keep = d.clone()
    assert torch.allclose(add_A(d, p), d + p.to_dense(), atol=1e-6)
    assert torch.allclose(add_A(p, d), d + p.to_dense(), atol=1e-6)
    assert torch.equal(d, keep)


def test_flattened_feature_map_output_bounds_every_output_as_patches(monkeypatch):
    """A net ending in a flattened conv map (TinyYOLO): CROWN without a spec bounds each output
    as a row started from patches, with the dense (identity spec) bounds."""
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 2, 1), nn.Flatten()).eval()
    m = dv.load(net, (2, 9, 9))
    x = torch.rand(2, 2, 9, 9)
    box = (x - 0.1, x + 0.1)
    dense = m.compute_bounds(*box, crown_options=dv.CrownOptions(patches=False))
    starts = []
    real = Patches.identity
    monkeypatch.setattr(Patches, "identity", staticmethod(lambda rows, shape, *a: starts.append(shape) or
                                                          real(rows, shape, *a)))
    patched = m.compute_bounds(*box, crown_options=dv.CrownOptions(patches=True))
    assert (2, 9, 9) in starts                      # the output's rows, on the last conv's map
    assert torch.allclose(dense.lower, patched.lower, atol=1e-5)
    assert torch.allclose(dense.upper, patched.upper, atol=1e-5)
    xs = box[0] + (box[1] - box[0]) * torch.rand(200, 2, 2, 9, 9)
    y = net(xs.reshape(400, 2, 9, 9)).reshape(200, 2, -1)
    assert (y >= patched.lower - 1e-5).all() and (y <= patched.upper + 1e-5).all()


class _FunctionalPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 3, 3)
        self.fc = nn.Linear(3 * 8 * 7, 2)

    def forward(self, x):
        h = torch.nn.functional.pad(torch.relu(self.c1(x)), (1, 0, 2, 0), value=0.2)
        return self.fc(torch.relu(self.c2(h)).flatten(1))


def test_padding_given_as_a_function_is_probed_and_bounds_match(monkeypatch):
    torch.manual_seed(7)
    m = dv.load(_FunctionalPad().eval(), (2, 8, 8))
    pad = next(n.op for n in m.graph.nodes if n.op is not None and n.op.kind == "pad")
    assert pad.window_map is not None and pad.window_map.padding == (2, 1)
    x = torch.rand(2, 2, 8, 8)
    box = (x - 0.1, x + 0.1)
    dense, _ = intermediate_bounds(m.graph, box, m.layout, dv.CrownOptions(patches=False, **PURE))
    patched, _ = intermediate_bounds(m.graph, box, m.layout, dv.CrownOptions(patches=True, **PURE))
    for k in dense:
        assert torch.allclose(dense[k][0], patched[k][0], atol=1e-6) and torch.allclose(dense[k][1], patched[k][1], atol=1e-6)
