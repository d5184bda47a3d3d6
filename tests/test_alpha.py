"""alpha-CROWN: never looser than CROWN, strictly tighter where neurons are unstable, and its slopes
really get gradients (output start node and intermediate start nodes).

auto_LiRPA's alpha-CROWN is not a reference here (DESIGN.md: it computes zero gradients under
torch 2.14); soundness of alpha-CROWN is checked in test_soundness.py.
"""
from __future__ import annotations


import pytest
import torch

import dtensor_verify as dv
import model_zoo as mz
from dtensor_verify.methods import alpha_crown, intermediate_bounds
from dtensor_verify.methods.alpha_crown import init_alphas
from dtensor_verify.methods.crown import node_bound_rows, output_bound, scatter_rows

MNIST = ("mnist_fc/onnx/mnist-net_256x2.onnx.gz", "mnist_fc/vnnlib/prop_0_0.03.vnnlib.gz", (784, 1))
CIFAR = ("oval21/onnx/cifar_base_kw.onnx.gz",
         "oval21/vnnlib/cifar_base_kw-img2578-eps0.021176470588235297.vnnlib.gz", (3, 32, 32))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread while this module runs (restored after). These models are small, and
    with pytest-xdist each worker has its own core: more threads only oversubscribe the cores, and
    OpenMP spin-waits on busy cores made these tests ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_CACHE: dict = {}


def _case(name):
    """(BoundedModel, x_lower, x_upper, AlphaOptions) built once per process."""
    if name in _CACHE:
        return _CACHE[name]
    opts = dv.AlphaOptions()
    if name in ("mnist_256x2", "cifar_base_kw"):
        onnx_rel, vnnlib_rel, shape = MNIST if name == "mnist_256x2" else CIFAR
        root = mz.benchmarks_dir()
        m = dv.load(root / onnx_rel)
        xl, xu = mz.vnnlib_input_box(root / vnnlib_rel, shape)
        if name == "cifar_base_kw":
            opts = dv.AlphaOptions(iterations=5)
    else:
        if name == "mlp_deep":
            model, shape = mz.random_mlp([8, 24, 24, 24, 24, 6], seed=2)
            eps = 0.2
        elif name == "mlp_wide":
            model, shape = mz.random_mlp([10, 64, 48, 5], seed=1)
            eps = 0.15
        elif name == "residual":
            model, shape = mz.residual_net(seed=0)
            eps = 0.1
        elif name.startswith("cnn_"):
            model, shape = mz.random_cnn(name[4:], seed=0)
            eps = 0.1
        else:
            raise KeyError(name)
        m = dv.load(model, input_shape=shape)
        xl, xu = mz.random_box(shape, eps, seed=11, batch=2)
    _CACHE[name] = (m, xl, xu, opts)
    return _CACHE[name]


def _margin_spec(m, xl, xu):
    with torch.no_grad():
        y = m.forward((xl + xu) / 2)
    batch, n = y.shape
    C = torch.zeros(batch, n - 1, n)
    for b, label in enumerate(y.argmax(1).tolist()):
        others = [j for j in range(n) if j != label]
        C[b, :, label] = 1.0
        C[b, torch.arange(n - 1), others] = -1.0
    return C


MODELS = ["mlp_deep", "mlp_wide", "cnn_bn", "cnn_strided_pad", "residual", "mnist_256x2", "cifar_base_kw"]


@pytest.mark.parametrize("name", MODELS)
def test_alpha_never_looser_than_crown(name):
    """Per row, identity spec and a margin spec: alpha-CROWN keeps the best of CROWN and its
    iterates, so it is never looser (exactly: no tolerance needed). Its optimised intermediate
    bounds are never looser than CROWN's either."""
    m, xl, xu, opts = _case(name)
    box = (xl, xu)
    for C in (None, _margin_spec(m, xl, xu)):
        cr = m.compute_bounds(xl, xu, method="crown", C=C)
        if C is None:   # the method itself, for its info (intermediate bounds, slopes)
            res = alpha_crown(m.graph, box, opts=opts)          # an AlphaResult
            lo, up, info = res.lower, res.upper, vars(res)
        else:           # through the API
            al = m.compute_bounds(xl, xu, method="alpha-crown", C=C, alpha_options=opts)
            lo, up, info = al.lower, al.upper, al.info
        assert lo.shape == cr.lower.shape
        assert (lo >= cr.lower).all(), (lo - cr.lower).min()
        assert (up <= cr.upper).all(), (cr.upper - up).min()
        # info carries CROWN's bounds as computed inside alpha-CROWN: the same as the CROWN method.
        torch.testing.assert_close(info["crown_lower"], cr.lower, atol=0, rtol=0)
        torch.testing.assert_close(info["crown_upper"], cr.upper, atol=0, rtol=0)
        assert 1 <= info["iterations"] <= opts.iterations
        if C is None:
            with torch.no_grad():
                crown_inter, _ = intermediate_bounds(m.graph, box)
            for node, (nlo, nup) in info["intermediate"].items():
                assert (nlo >= crown_inter[node][0]).all() and (nup <= crown_inter[node][1]).all(), node
            # Projection: every slope stays in [0, 1].
            for per_start in info["alphas"].values():
                for a in per_start.values():
                    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("name, max_width_ratio", [
    ("mnist_256x2", 0.6),   # real property box (eps = 0.03), many unstable neurons (measured ~0.41)
    ("mlp_deep", 0.9),      # random MLP, batch of 2 boxes (measured ~0.78)
    ("mlp_wide", 0.95),     # random MLP, batch of 2 boxes (measured ~0.90)
])
def test_alpha_strictly_tighter_with_unstable_neurons(name, max_width_ratio):
    """A clear margin: the summed bound width shrinks to at most `max_width_ratio` of CROWN's, and
    at least 90 % of the rows improve by more than rounding."""
    m, xl, xu, opts = _case(name)
    with torch.no_grad():
        bounds, _ = intermediate_bounds(m.graph, (xl, xu))
    n_unstable = sum(int(((bounds[n][0] < 0) & (bounds[n][1] > 0)).sum()) for n in m.graph.preactivation_nodes())
    assert n_unstable >= 20, n_unstable
    cr = m.compute_bounds(xl, xu, method="crown")
    al = m.compute_bounds(xl, xu, method="alpha-crown", alpha_options=opts)
    ratio = ((al.upper - al.lower).sum() / (cr.upper - cr.lower).sum()).item()
    assert ratio <= max_width_ratio, ratio
    gain = torch.cat([(al.lower - cr.lower).flatten(), (cr.upper - al.upper).flatten()])
    assert (gain > 1e-4).float().mean() >= 0.9, gain


def _nonzero_grad(t):
    return t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().max() > 0


@pytest.mark.parametrize("name", ["mnist_256x2", "residual"])
def test_alpha_slopes_get_gradients_in_optimizer(name):
    """The real alpha_crown loop: after one iteration, the slopes of the output start node and of
    an intermediate start node hold non-zero gradients from the bound loss."""
    m, xl, xu, _ = _case(name)
    alphas = alpha_crown(m.graph, (xl, xu), opts=dv.AlphaOptions(iterations=1)).alphas
    out = m.graph.output_name
    assert alphas[out], "no slopes for the output start node"
    assert any(_nonzero_grad(a) for a in alphas[out].values()), "output slopes got no gradient"
    inter = [s for s in alphas if s != out and alphas[s]]
    assert inter, "no intermediate start node with slopes"
    assert any(_nonzero_grad(a) for s in inter for a in alphas[s].values()), "intermediate slopes got no gradient"


def test_alpha_slopes_get_gradients_one_backward_pass():
    """One hand-built backward pass through `init_alphas` / `node_bound_rows` / `output_bound`: the
    loss -sum(lower) + sum(upper) reaches the output node's slopes and, through the intermediate
    bounds of the last pre-activation layer, the slopes of that intermediate start node."""
    m, xl, xu, _ = _case("mnist_256x2")
    g, box = m.graph, (xl, xu)
    opts = dv.CrownOptions()
    with torch.no_grad():
        bounds, rows = intermediate_bounds(g, box, opts=opts)
    starts = {g.output_name: m.n_outputs, **{n: len(r) for n, r in rows.items()}}
    alphas = init_alphas(g, bounds, starts, m.layout)
    inter_start = [n for n in rows if alphas[n]][-1]
    cur = dict(bounds)
    lo_i, up_i = node_bound_rows(g, inter_start, rows[inter_start], cur, m.layout, opts, xl.shape[0],
                                 lambda s, e: {r: a[:, :, s:e] for r, a in alphas[inter_start].items()})
    assert lo_i.requires_grad and up_i.requires_grad
    cur[inter_start] = scatter_rows(*bounds[inter_start], rows[inter_start], lo_i, up_i, intersect=True)
    C = torch.eye(m.n_outputs).unsqueeze(0)
    lo, up = output_bound(g, cur, C, m.layout, alphas[g.output_name])
    (up.sum() - lo.sum()).backward()
    assert any(_nonzero_grad(a) for a in alphas[g.output_name].values()), "output slopes got no gradient"
    assert any(_nonzero_grad(a) for a in alphas[inter_start].values()), \
        f"slopes of intermediate start '{inter_start}' got no gradient"
    # With the initial (CROWN-adaptive) slopes the bound is CROWN's.
    with torch.no_grad():
        cr = m.compute_bounds(xl, xu, method="crown")
    torch.testing.assert_close(lo.detach(), cr.lower, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(up.detach(), cr.upper, atol=1e-5, rtol=1e-5)
