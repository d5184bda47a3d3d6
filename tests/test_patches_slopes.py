"""Conv A-matrices as patches under alpha-CROWN slopes and beta-CROWN splits: the same bounds (and
slope gradients) as dense A-matrices, and the ReLU steps actually run on patches."""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.methods.crown import backward_bound, intermediate_bounds
from dtensor_verify.ops.patches import Patches
from dtensor_verify.ops.relu import ReluOp
from model_zoo import random_cnn, residual_net

PURE = dict(skip_stable=False, intersect_ibp=False)


def _models():
    for kind in ("dilated", "strided_pad"):
        yield (kind, *random_cnn(kind))
    yield ("residual", *residual_net())


def _count_slope_steps(monkeypatch):
    """Record every ReLU step on patches that got slopes or splits: (node, stayed patches?)."""
    used = []
    real = ReluOp.backward_patches

    def spy(self, lA, uA, input_bounds, params=None, alpha=None, beta=None):
        result = real(self, lA, uA, input_bounds, params, alpha, beta)
        if alpha is not None or beta is not None:
            used.append((self.name, result is not None))
        return result

    monkeypatch.setattr(ReluOp, "backward_patches", spy)
    return used


@pytest.mark.parametrize("name,model,shape", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_alpha_crown_on_patches_equals_dense(name, model, shape, monkeypatch):
    m = dv.load(model, shape)
    torch.manual_seed(0)
    x = torch.rand(2, *shape)
    box = (x - 0.1, x + 0.1)
    used = _count_slope_steps(monkeypatch)
    out = {}
    for patches in (False, True):
        opts = dv.AlphaOptions(iterations=3, lr=0.05, crown=dv.CrownOptions(patches=patches, **PURE))
        out[patches] = m.compute_bounds(*box, method="alpha-crown", alpha_options=opts)
        assert bool(used) == patches, (name, patches)
    for side in ("lower", "upper"):
        d, p = getattr(out[False], side), getattr(out[True], side)
        assert torch.allclose(d, p, atol=1e-6, rtol=1e-6), (name, side, (d - p).abs().max())
    # Sound on samples, and at least as tight as CROWN.
    xs = (box[0] + (box[1] - box[0]) * torch.rand(256, *box[0].shape)).reshape(-1, *shape)
    with torch.no_grad():
        y = model(xs).reshape(256, 2, -1)
    assert (y >= out[True].lower - 1e-5).all() and (y <= out[True].upper + 1e-5).all()
    crown = m.compute_bounds(*box, method="crown", crown_options=dv.CrownOptions(**PURE))
    assert (out[True].lower >= crown.lower - 1e-5).all()


def _conv_relu_net():
    torch.manual_seed(4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 3, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(3 * 5 * 5, 2)).eval()
    return net, (2, 9, 9)


def _sweep_setup():
    net, shape = _conv_relu_net()
    m = dv.load(net, shape)
    g = m.graph
    torch.manual_seed(1)
    x = torch.rand(2, *shape)
    box = (x - 0.2, x + 0.2)
    bounds, _ = intermediate_bounds(g, box, m.layout, dv.CrownOptions(**PURE))
    bounds[g.input_name] = box
    start = [n.name for n in g.nodes if n.op is not None and n.op.kind == "conv2d"][-1]
    relus = [n for n in g.nodes if isinstance(n.op, ReluOp) and n.name in g.ancestors(start)]
    assert len(relus) == 2
    return m, g, bounds, start, relus, torch.tensor([0, 3, 7, 12, 20, 33, 51, 74])


def _both_ways(g, m, start, bounds, rows, alphas, betas, leaves):
    results = {}
    for patches in (False, True):
        lo, up = backward_bound(g, start, None, None, bounds, m.layout, alphas, rows=rows, betas=betas,
                                patches=patches)
        grads = torch.autograd.grad(lo.sum() - up.sum(), leaves)
        results[patches] = (lo.detach(), up.detach(), grads)
    (dl, du, dg), (pl, pu, pg) = results[False], results[True]
    assert torch.allclose(dl, pl, atol=1e-6, rtol=1e-6), (dl - pl).abs().max()
    assert torch.allclose(du, pu, atol=1e-6, rtol=1e-6), (du - pu).abs().max()
    for a, b in zip(dg, pg):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6), (a - b).abs().max()


@pytest.mark.parametrize("splits", ["none", "in_windows", "in_windows_optimised", "everywhere"])
def test_sweep_with_slopes_and_splits_on_patches_equals_dense_with_gradients(splits, monkeypatch):
    """One intermediate sweep (the last conv's neurons) with random per-row slopes (and split
    multipliers) on each ReLU on its way, patches vs dense: the bounds and the gradients of the
    slopes and multipliers agree. Split terms inside each row's window stay patches; split terms
    outside it (a dense A-matrix's worth), or multipliers being optimised (whose gradient reaches
    outside the windows), make the step go dense."""
    m, g, bounds, start, relus, rows = _sweep_setup()
    K = len(rows)
    support = {}
    if splits.startswith("in_windows"):
        # Where a row's A-matrix reaches each ReLU (a subset of its window): split there only.
        backward_bound(g, start, None, None, bounds, m.layout, rows=rows, record=support)
    torch.manual_seed(2)
    alphas, betas, leaves = {}, {}, []
    for relu in relus:
        S = bounds[relu.inputs[0]][0].shape[1:]
        alphas[relu.name] = torch.rand(2, 2, K, *S).requires_grad_(True)
        leaves.append(alphas[relu.name])
        if splits == "none":
            continue
        mult = torch.rand(2, K, *S)
        if splits.startswith("in_windows"):
            mult = mult * (support[relu.name] != 0)
        betas[relu.name] = (mult, torch.randint(-1, 2, (2, *S)).float())
        if splits != "in_windows":
            leaves.append(mult.requires_grad_(True))
    used = _count_slope_steps(monkeypatch)
    _both_ways(g, m, start, bounds, rows, alphas, betas or None, leaves)
    stayed = [ok for _, ok in used]
    if splits in ("none", "in_windows"):
        assert stayed == [True, True], used
    else:
        assert stayed == [False], used          # the first ReLU step went dense, and the rest of the sweep


def test_gather_rows_picks_each_rows_own_window():
    torch.manual_seed(2)
    p = Patches(torch.randn(2, 3, 4, 3, 3), torch.tensor([-1, 2, 4]), torch.tensor([0, -2, 3]), (4, 5, 5))
    t = torch.randn(2, 3, 4, 5, 5)
    win = p.gather_rows(t)
    assert win.shape == (2, 3, 4, 3, 3)
    for k in range(3):
        for i in range(3):
            for j in range(3):
                h, w = int(p.top[k]) + i, int(p.left[k]) + j
                want = t[:, k, :, h, w] if 0 <= h < 5 and 0 <= w < 5 else torch.zeros(2, 4)
                assert torch.equal(win[:, k, :, i, j], want)
