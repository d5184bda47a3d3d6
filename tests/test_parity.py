"""Parity of our IBP / CROWN bounds with auto_LiRPA 0.3 (the reference, see lirpa_reference.py).

Tolerance: ``atol=1e-5, rtol=1e-5`` (float32 bounds computed with different summation orders).

* IBP: ours vs auto_LiRPA's 'IBP'.
* Pure CROWN: ours with ``CrownOptions(intersect_ibp=False, skip_stable=False)`` vs auto_LiRPA's
  'CROWN' with ``bound_opts={'sparse_intermediate_bounds': False}``: the same algorithm, so the
  bounds must agree.
* Default CROWN: ours (IBP-intersected intermediate bounds, stable neurons skipped) is never looser
  than auto_LiRPA's default 'CROWN' (lower >= theirs - 1e-5, upper <= theirs + 1e-5).
* A non-identity spec matrix C (margin rows ``y_true - y_j``) for CROWN (pure and default). Not for
  IBP: auto_LiRPA folds C into the last Linear layer before its IBP step (``C W`` and ``C b``),
  while our ``ibp_output`` applies C to the output box afterwards, which is sound but looser
  (e.g. 0.3 on mlp_deep, 1.7 on mnist_256x2), so IBP-with-C bounds are not expected to match.

Models: random MLPs (several widths/depths), random CNNs of every zoo kind (stride, padding,
dilation, groups, BatchNorm), the residual net, the normalized MLP (all with a batch of 2 boxes),
and the VNN-COMP ONNX models mnist-net_256x2 (a real mnist_fc property box) and cifar_base_kw (a
real oval21 box). ONNX models are loaded with ``dv.load(path)`` for us and through onnx2torch for
auto_LiRPA.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import dtensor_verify as dv
import lirpa_reference as lr
import model_zoo as mz

ATOL = 1e-5
RTOL = 1e-5
PURE = dv.CrownOptions(intersect_ibp=False, skip_stable=False)
LIRPA_PURE = {"sparse_intermediate_bounds": False}


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
def _zoo_case(name):
    """(torch model, per-sample input shape, eps) for a zoo model."""
    if name == "mlp_small":
        return (*mz.random_mlp([5, 16, 12, 3], seed=0), 0.2)
    if name == "mlp_wide":
        return (*mz.random_mlp([10, 64, 48, 5], seed=1), 0.1)
    if name == "mlp_deep":
        return (*mz.random_mlp([8, 24, 24, 24, 24, 24, 6], seed=2), 0.15)
    if name == "mlp_flatten":
        return (*mz.random_mlp([12, 10, 4], seed=1, flatten_input_shape=(3, 4)), 0.2)
    if name.startswith("cnn_"):
        return (*mz.random_cnn(name[4:], seed=0), 0.05)
    if name == "residual":
        return (*mz.residual_net(seed=0), 0.05)
    if name == "normalized_mlp":
        return (*mz.normalized_mlp(seed=0), 0.2)
    raise KeyError(name)


ZOO = ["mlp_small", "mlp_wide", "mlp_deep", "mlp_flatten", *[f"cnn_{k}" for k in mz.CNN_KINDS],
       "residual", "normalized_mlp"]

ONNX = {
    "mnist_256x2": ("mnist_fc/onnx/mnist-net_256x2.onnx.gz", "mnist_fc/vnnlib/prop_0_0.03.vnnlib.gz",
                    (784, 1)),
    "cifar_base_kw": ("oval21/onnx/cifar_base_kw.onnx.gz",
                      "oval21/vnnlib/cifar_base_kw-img2578-eps0.021176470588235297.vnnlib.gz",
                      (3, 32, 32)),
}

_CACHE: dict = {}


def _case(name):
    """(ours: BoundedModel, theirs: nn.Module, x_lower, x_upper), built once per process."""
    if name in _CACHE:
        return _CACHE[name]
    if name in ONNX:
        onnx_rel, vnnlib_rel, shape = ONNX[name]
        root = mz.benchmarks_dir()
        ours = dv.load(root / onnx_rel)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = mz.load_onnx_torch(root / onnx_rel)
        xl, xu = mz.vnnlib_input_box(root / vnnlib_rel, shape)
        assert tuple(ours.input_shape) == tuple(shape)
    else:
        theirs, shape, eps = _zoo_case(name)
        ours = dv.load(theirs, input_shape=shape)
        xl, xu = mz.random_box(shape, eps, seed=3, batch=2)
    _CACHE[name] = (ours, theirs, xl, xu)
    return _CACHE[name]


def _lirpa(model, xl, xu, method, C=None, bound_opts=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lr.lirpa_bounds(model, xl, xu, method, C=C, bound_opts=bound_opts)


def _margin_spec(ours, xl, xu):
    """C [B, n_out - 1, n_out] with rows e_true - e_j, true = predicted class at the box centre."""
    with torch.no_grad():
        y = ours.forward((xl + xu) / 2)
    batch, n_out = y.shape
    C = torch.zeros(batch, n_out - 1, n_out)
    for b, label in enumerate(y.argmax(1).tolist()):
        others = [j for j in range(n_out) if j != label]
        C[b, :, label] = 1.0
        C[b, torch.arange(n_out - 1), others] = -1.0
    return C


def _assert_close(ours, theirs, what):
    lo, up = ours
    tlo, tup = theirs
    assert lo.shape == tlo.shape and up.shape == tup.shape, (what, lo.shape, tlo.shape)
    torch.testing.assert_close(lo, tlo, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what} lower: {m}")
    torch.testing.assert_close(up, tup, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what} upper: {m}")


def _assert_not_looser(ours, theirs, what):
    lo, up = ours
    tlo, tup = theirs
    assert (lo >= tlo - ATOL).all(), f"{what}: lower looser than auto_LiRPA by {(tlo - lo).max().item():.3g}"
    assert (up <= tup + ATOL).all(), f"{what}: upper looser than auto_LiRPA by {(up - tup).max().item():.3g}"


ALL = ZOO + list(ONNX)


# --------------------------------------------------------------------------------------- tests
# One test per model runs the three identity-spec checks, so that auto_LiRPA's BoundedModule for a
# model is built in one xdist worker only.
@pytest.mark.parametrize("name", ALL)
def test_parity(name):
    ours, theirs, xl, xu = _case(name)

    # IBP
    r = ours.compute_bounds(xl, xu, method="ibp")
    _assert_close((r.lower, r.upper), _lirpa(theirs, xl, xu, "IBP"), f"{name} IBP")

    # pure CROWN == auto_LiRPA CROWN without sparse intermediate bounds
    pure = ours.compute_bounds(xl, xu, method="crown", crown_options=PURE)
    ref = _lirpa(theirs, xl, xu, "CROWN", bound_opts=LIRPA_PURE)
    _assert_close((pure.lower, pure.upper), ref, f"{name} pure CROWN")
    # The box really exercises the relaxation: CROWN is not a point bound, and beats IBP somewhere.
    assert (pure.upper - pure.lower).min() > 0
    assert ((pure.upper - pure.lower) < (r.upper - r.lower)).any()

    # default CROWN: never looser than auto_LiRPA's default, nor than our own pure CROWN
    d = ours.compute_bounds(xl, xu, method="crown")
    _assert_not_looser((d.lower, d.upper), _lirpa(theirs, xl, xu, "CROWN"), f"{name} default CROWN")
    _assert_not_looser((d.lower, d.upper), (pure.lower, pure.upper), f"{name} default vs pure CROWN")


@pytest.mark.parametrize("name", ["mlp_deep", "cnn_strided_pad", "residual", "mnist_256x2", "cifar_base_kw"])
def test_crown_parity_margin_spec(name):
    ours, theirs, xl, xu = _case(name)
    C = _margin_spec(ours, xl, xu)
    r = ours.compute_bounds(xl, xu, method="crown", C=C, crown_options=PURE)
    assert r.lower.shape == C.shape[:2]
    ref = _lirpa(theirs, xl, xu, "CROWN", C=C, bound_opts=LIRPA_PURE)
    _assert_close((r.lower, r.upper), ref, f"{name} pure CROWN, margin C")
    d = ours.compute_bounds(xl, xu, method="crown", C=C)
    _assert_not_looser((d.lower, d.upper), _lirpa(theirs, xl, xu, "CROWN", C=C), f"{name} default CROWN, margin C")
    # C f(x) by C applied to identity-spec bounds is a valid but looser bound: the backward pass
    # with C folded in must be at least as tight.
    full = ours.compute_bounds(xl, xu, method="crown", crown_options=PURE)   # identity spec
    mid, rad = (full.upper + full.lower) / 2, (full.upper - full.lower) / 2
    naive_lo = (C @ mid.unsqueeze(-1)).squeeze(-1) - (C.abs() @ rad.unsqueeze(-1)).squeeze(-1)
    assert (r.lower >= naive_lo - ATOL).all()


@pytest.mark.parametrize("name", ["cnn_bn", "mlp_deep"])
def test_batch_rows_independent(name):
    """Bounding two boxes at once gives each box's bounds alone (IBP, pure and default CROWN; the
    default's stable-neuron skipping unites the unstable rows of the batch, which only adds sound,
    exact-relaxation rows)."""
    ours, _, xl, xu = _case(name)
    for method, opts in (("ibp", None), ("crown", PURE), ("crown", None)):
        both = ours.compute_bounds(xl, xu, method=method, crown_options=opts)
        for b in range(xl.shape[0]):
            one = ours.compute_bounds(xl[b:b + 1], xu[b:b + 1], method=method, crown_options=opts)
            _assert_close((both.lower[b:b + 1], both.upper[b:b + 1]), (one.lower, one.upper),
                          f"{name} {method} box {b}")
