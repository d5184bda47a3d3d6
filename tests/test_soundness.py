"""Soundness of every bound method against sampling and attacks.

For every method (ibp, crown with our default options, pure crown, alpha-crown) and every op kind
(the zoo models: MLPs, CNNs with stride/padding/dilation/groups/BatchNorm, residual Add, input
normalisation; the real ONNX models mnist-net_256x2, cifar_base_kw, the SRI ResNet with residual
Adds and folded BN; and the test/ ONNX nets test_nano, test_tiny, test_small, test_sat), no attained
output may leave ``[lower, upper]``:

* 10,000 uniform random samples per box (5,000 for the SRI ResNet, to keep it affordable), plus
  box corners (all of them for inputs of <= 12 values, 1,000 random ones otherwise);
* a PGD attack (``dtensor_verify.attack.pgd``) that minimises and maximises each output separately;
* the intermediate bounds each method computes (every node of the bound graph, e.g. pre-ReLU
  bounds) must also contain every sampled intermediate value;
* on a few models, the same for a margin spec ``C`` (rows ``e_label - e_j``): bounds of ``C f(x)``.

Tolerance: ``TOL = 1e-5`` absolute (float32 outputs; a bound a hair inside an attained value by
rounding is not a soundness bug, anything more is).

Outputs are evaluated with ``BoundedModel.forward`` (the SRI ResNet's onnx2torch module has a
hard-coded batch-1 reshape); ``forward`` itself is checked against the original torch module
(zoo models) or onnxruntime (ONNX models).
"""
from __future__ import annotations

import gzip
import re
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch

import dtensor_verify as dv
import model_zoo as mz
from dtensor_verify.attack import pgd
from dtensor_verify.methods import alpha_crown, crown
from dtensor_verify.methods.ibp import ibp

TOL = 1e-5
N_SAMPLES = 10_000
PURE = dv.CrownOptions(intersect_ibp=False, skip_stable=False)
SRI = "sri_resnet_a/onnx/resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx.gz"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread while this module runs (restored after). These models are small, and
    with pytest-xdist each worker has its own core: more threads only oversubscribe the cores, and
    OpenMP spin-waits on busy cores made these tests ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------- cases
def _vnnlib_box(path: Path, input_shape):
    """Input box of a VNN-LIB file: every `(<= X_i v)` / `(>= X_i v)` term, also inside and/or."""
    text = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
    n = int(np.prod(input_shape))
    lo = torch.full((n,), float("nan"), dtype=torch.float64)
    hi = torch.full((n,), float("nan"), dtype=torch.float64)
    for op, i, v in re.findall(r"\((<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\)", text):
        (hi if op == "<=" else lo)[int(i)] = float(v)
    assert not (torch.isnan(lo).any() or torch.isnan(hi).any()), path
    return lo.float().reshape(1, *input_shape), hi.float().reshape(1, *input_shape)


def _zoo(name):
    if name == "mlp":
        return (*mz.random_mlp([5, 16, 12, 3], seed=0), 0.3)
    if name == "mlp_deep":
        return (*mz.random_mlp([8, 24, 24, 24, 24, 6], seed=2), 0.2)
    if name == "mlp_flatten":
        return (*mz.random_mlp([12, 10, 4], seed=1, flatten_input_shape=(3, 4)), 0.3)
    if name.startswith("cnn_"):
        return (*mz.random_cnn(name[4:], seed=0), 0.1)
    if name == "residual":
        return (*mz.residual_net(seed=0), 0.1)
    if name == "normalized_mlp":
        return (*mz.normalized_mlp(seed=0), 0.3)
    raise KeyError(name)


ZOO = ["mlp", "mlp_deep", "mlp_flatten", *[f"cnn_{k}" for k in mz.CNN_KINDS], "residual", "normalized_mlp"]
ONNX = {
    # name: (onnx path, vnnlib path, per-sample input shape), relative to benchmarks_dir()
    "mnist_256x2": ("mnist_fc/onnx/mnist-net_256x2.onnx.gz", "mnist_fc/vnnlib/prop_1_0.05.vnnlib.gz", (784, 1)),
    "cifar_base_kw": ("oval21/onnx/cifar_base_kw.onnx.gz",
                      "oval21/vnnlib/cifar_base_kw-img2578-eps0.021176470588235297.vnnlib.gz", (3, 32, 32)),
    "sri_resnet": (SRI, "sri_resnet_a/vnnlib/cifar10_spec_idx_1551_eps_0.00198.vnnlib.gz", (3, 32, 32)),
    "test_nano": ("test/test_nano.onnx", "test/test_nano.vnnlib", (1,)),
    "test_tiny": ("test/test_tiny.onnx", "test/test_tiny.vnnlib", (1,)),
    "test_small": ("test/test_small.onnx", "test/test_small.vnnlib", (1,)),
    "test_sat": ("test/test_sat.onnx", "test/test_prop.vnnlib", (1, 1, 5)),
}
# Per-case cost control. The SRI ResNet is the expensive one (one CROWN pass ~2 s, one alpha-CROWN
# iteration with gradients through every sweep ~4 s on one core): alpha-CROWN with 2 iterations and
# lr 0.5 (so that the second iterate's slopes are far from CROWN's), 5,000 samples in chunks, a
# shorter PGD, no pure-CROWN run and no second bound computation through the API for the costly
# methods.
DEFAULT_COST = dict(alpha=dv.AlphaOptions(iterations=20), n_samples=N_SAMPLES, chunk=5000, pgd_steps=30,
                    pgd_restarts=8, api_check=True)
COST = {
    "sri_resnet": dict(alpha=dv.AlphaOptions(iterations=2, lr=0.5), n_samples=5000, chunk=1000, pgd_steps=15,
                       pgd_restarts=3, api_check=False),
    "cifar_base_kw": dict(alpha=dv.AlphaOptions(iterations=5), chunk=2000, pgd_steps=20, pgd_restarts=4),
    "mnist_256x2": dict(alpha=dv.AlphaOptions(iterations=10), pgd_steps=30, pgd_restarts=6),
}
METHODS = ("ibp", "crown", "crown-pure", "alpha-crown")


def _load(name):
    """(BoundedModel, x_lower [B, *S], x_upper, reference fn or None)."""
    if name in ONNX:
        onnx_rel, vnnlib_rel, shape = ONNX[name]
        root = mz.benchmarks_dir()
        m = dv.load(root / onnx_rel)
        assert tuple(m.input_shape) == tuple(shape), (m.input_shape, shape)
        xl, xu = _vnnlib_box(root / vnnlib_rel, shape)
        return m, xl, xu, _onnxruntime_fn(root / onnx_rel)
    model, shape, eps = _zoo(name)
    m = dv.load(model, input_shape=shape)
    xl, xu = mz.random_box(shape, eps, seed=7, batch=2)
    return m, xl, xu, (lambda x: model(x).flatten(1))


def _onnxruntime_fn(path: Path):
    """The original ONNX file run by onnxruntime, [N, *S] -> [N, n_out]."""
    import onnxruntime as ort

    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    full = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]

    def run(x):  # one sample at a time: some models hard-code batch 1
        outs = [sess.run(None, {inp.name: xi.reshape(full).numpy()})[0].reshape(-1) for xi in x]
        return torch.from_numpy(np.stack(outs))

    return run


# --------------------------------------------------------------------------------------- checks
def _node_values(m, x):
    """Values of every bound-graph node for inputs x [N, *S] (the ops' forward rules)."""
    g = m.graph
    vals = {g.input_name: x}
    for node in g.nodes:
        if node.op is not None:
            vals[node.name] = node.op.forward(*[vals[i] for i in node.inputs])
    return vals


def _samples(xl, xu, n, seed):
    """n uniform samples of the box [1, *S] plus corners: all if <= 12 inputs, else 1,000 random."""
    g = torch.Generator().manual_seed(seed)
    shape = xl.shape[1:]
    u = torch.rand((n, *shape), generator=g)
    n_in = xl[0].numel()
    if n_in <= 12:
        corners = torch.tensor(list(product([0.0, 1.0], repeat=n_in))).reshape(-1, *shape)
    else:
        corners = torch.randint(0, 2, (1000, *shape), generator=g).float()
    u = torch.cat([u, corners])
    return xl + u * (xu - xl)


def _compute(m, xl, xu, methods, alpha_opts, api_check=True):
    """method -> (output lower [B, K], output upper, {node: (lower, upper) [B, *S]}).

    Bounds come from the engine's methods (which also return the intermediate bounds); the API's
    `compute_bounds` gives the same output bounds (same code, deterministic), checked bitwise where
    affordable."""
    box = (xl, xu)
    res = {}
    for method in methods:
        with torch.no_grad():
            if method == "ibp":
                inter = ibp(m.graph, box)
                lo, up = inter[m.graph.output_name]
                lo, up = lo.flatten(1), up.flatten(1)
                api = dict(method="ibp")
            elif method in ("crown", "crown-pure"):
                opts = PURE if method == "crown-pure" else dv.CrownOptions()
                lo, up, inter = crown(m.graph, box, None, opts=opts)
                api = dict(method="crown", crown_options=opts)
        if method == "alpha-crown":
            res_alpha = alpha_crown(m.graph, box, opts=alpha_opts)
            lo, up, inter = res_alpha.lower, res_alpha.upper, res_alpha.intermediate
            api = dict(method="alpha-crown", alpha_options=alpha_opts)
        if api_check or method == "ibp":
            r = m.compute_bounds(xl, xu, **api)
            torch.testing.assert_close((r.lower, r.upper), (lo, up), atol=0, rtol=0)
        assert lo.shape == up.shape == (xl.shape[0], m.n_outputs), method
        assert torch.isfinite(lo).all() and torch.isfinite(up).all(), method
        assert (lo <= up + TOL).all(), method
        assert set(inter) == {n.name for n in m.graph.nodes}, method
        res[method] = (lo, up, inter)
    return res


def _attack(m, xl, xu, steps, restarts, C=None):
    """PGD minimising and maximising each row of C f(x) (C [K, n_out]; None = identity), per box.
    Returns the attack points, [B, 2K, *S]."""
    C = torch.eye(m.n_outputs) if C is None else C
    B, K = xl.shape[0], C.shape[0]
    n = 2 * K
    lo = xl.repeat_interleave(n, 0)
    hi = xu.repeat_interleave(n, 0)
    idx = torch.arange(K).repeat(2).repeat(B)                       # row attacked by each entry
    sign = torch.cat([torch.ones(K), -torch.ones(K)]).repeat(B)     # +1: minimise, -1: maximise

    def objective(out):                                             # out: [R, B*2K, n_out] -> [R, B*2K]
        rows = out @ C.T
        picked = rows.gather(-1, idx.view(1, -1, 1).expand(rows.shape[0], -1, 1)).squeeze(-1)
        return picked * sign

    x_best, val = pgd(m.forward, lo, hi, objective, steps=steps, restarts=restarts, seed=0)
    with torch.no_grad():
        y = m.forward(x_best) @ C.T
    # The attack reports what the model attains at its points.
    torch.testing.assert_close(val, y.gather(1, idx.view(-1, 1)).squeeze(1) * sign, atol=1e-5, rtol=1e-5)
    return x_best.reshape(B, n, *xl.shape[1:])


def _check_case(name, methods=METHODS):
    m, xl, xu, reference = _load(name)
    cost = {**DEFAULT_COST, **COST.get(name, {})}
    res = _compute(m, xl, xu, methods, cost["alpha"], cost["api_check"])
    failures = []
    batch = xl.shape[0]
    for b in range(batch):
        x_all = _samples(xl[b:b + 1], xu[b:b + 1], cost["n_samples"], seed=100 + b)
        # forward() is what we test against: check it is the model.
        with torch.no_grad():
            y_ref = reference(x_all[:8])
            torch.testing.assert_close(m.forward(x_all[:8]), y_ref.float(), atol=1e-4, rtol=1e-4)
        # Stream the samples: track per-node min / max (elementwise) and the output extremes.
        node_min, node_max = {}, {}
        with torch.no_grad():
            for s in range(0, x_all.shape[0], cost["chunk"]):
                x = x_all[s:s + cost["chunk"]]
                vals = _node_values(m, x)
                torch.testing.assert_close(vals[m.graph.output_name].flatten(1), m.forward(x), atol=0, rtol=0)
                for k, v in vals.items():
                    vmin, vmax = v.amin(0), v.amax(0)
                    node_min[k] = vmin if k not in node_min else torch.minimum(node_min[k], vmin)
                    node_max[k] = vmax if k not in node_max else torch.maximum(node_max[k], vmax)
                del vals
        x_att = _attack(m, xl[b:b + 1], xu[b:b + 1], cost["pgd_steps"], cost["pgd_restarts"])[0]
        with torch.no_grad():
            y_att = m.forward(x_att)
        out = m.graph.output_name
        y_min = torch.minimum(node_min[out].flatten(), y_att.min(0).values)
        y_max = torch.maximum(node_max[out].flatten(), y_att.max(0).values)
        for method, (lo, up, inter) in res.items():
            gap_lo = (lo[b] - y_min).max().item()      # > 0: some attained output is below the bound
            gap_up = (y_max - up[b]).max().item()
            if gap_lo > TOL or gap_up > TOL:
                failures.append(f"{name} box {b} {method}: output bound violated by "
                                f"{max(gap_lo, gap_up):.3g} (lower {lo[b].tolist()}, upper {up[b].tolist()}, "
                                f"attained min {y_min.tolist()}, max {y_max.tolist()})")
            for node, (nlo, nup) in inter.items():
                g = max((nlo[b] - node_min[node]).max().item(), (node_max[node] - nup[b]).max().item())
                if g > TOL:
                    failures.append(f"{name} box {b} {method}: bounds of node '{node}' violated by {g:.3g}")
    assert not failures, "\n".join(failures)
    return m, res


# The SRI ResNet first: its tests are the longest, so xdist should start them early.
@pytest.mark.parametrize("methods", [("ibp", "crown"), ("alpha-crown",)], ids="+".join)
def test_sound_sri_resnet(methods):
    """The SRI ResNet (Conv, folded BN, residual Add, Reshape, Gemm) with a real property box.
    Split by method so that two xdist workers share it; pure CROWN (every row of every conv layer,
    ~3 s more) is left to the other models."""
    m, res = _check_case("sri_resnet", methods)
    if "ibp" in res:
        # The box is wide enough to matter: CROWN is much tighter than IBP, and not a point bound.
        ibp_w = (res["ibp"][1] - res["ibp"][0]).sum()
        crown_w = (res["crown"][1] - res["crown"][0]).sum()
        assert 0 < crown_w < ibp_w / 10


@pytest.mark.parametrize("name", ZOO + [n for n in ONNX if n != "sri_resnet"])
def test_sound(name):
    _check_case(name)


@pytest.mark.parametrize("name", ["residual", "cnn_strided_pad", "mnist_256x2", "test_sat"])
def test_sound_with_margin_spec(name):
    """Bounds of C f(x) for a margin spec C (rows e_label - e_j) contain every sampled / attacked
    C f(x), for every method."""
    m, xl, xu, _ = _load(name)
    cost = {**DEFAULT_COST, **COST.get(name, {})}
    with torch.no_grad():
        labels = m.forward((xl + xu) / 2).argmax(1)
    n = m.n_outputs
    C = torch.zeros(xl.shape[0], n - 1, n)
    for b, label in enumerate(labels.tolist()):
        C[b, :, label] = 1.0
        C[b, torch.arange(n - 1), [j for j in range(n) if j != label]] = -1.0
    bounds = {}
    for method, kw in (("ibp", {}), ("crown", {}), ("crown", {"crown_options": PURE}),
                       ("alpha-crown", {"alpha_options": cost["alpha"]})):
        r = m.compute_bounds(xl, xu, method=method, C=C, **kw)
        assert r.lower.shape == (xl.shape[0], n - 1)
        bounds[f"{method}{'-pure' if kw.get('crown_options') is PURE else ''}"] = (r.lower, r.upper)
    failures = []
    for b in range(xl.shape[0]):
        x = _samples(xl[b:b + 1], xu[b:b + 1], cost["n_samples"], seed=200 + b)
        x_att = _attack(m, xl[b:b + 1], xu[b:b + 1], cost["pgd_steps"], cost["pgd_restarts"], C[b])[0]
        with torch.no_grad():
            z = torch.cat([m.forward(x), m.forward(x_att)]) @ C[b].T
        for method, (lo, up) in bounds.items():
            g = max((lo[b] - z.amin(0)).max().item(), (z.amax(0) - up[b]).max().item())
            if g > TOL:
                failures.append(f"{name} box {b} {method}: margin bound violated by {g:.3g}")
    assert not failures, "\n".join(failures)
