"""The auto_LiRPA 0.3 reference harness runs on every zoo model and the shared ONNX models."""
from __future__ import annotations

import pytest
import torch

import lirpa_reference as lr
import model_zoo as mz

N_SAMPLES = 1000
TOL = 1e-5


def _zoo(name):
    if name == "mlp":
        return mz.random_mlp([5, 16, 12, 3], seed=0), 0.2
    if name == "mlp_flatten":
        return mz.random_mlp([12, 10, 4], seed=1, flatten_input_shape=(3, 4)), 0.2
    if name.startswith("cnn_"):
        return mz.random_cnn(name[4:], seed=0), 0.05
    if name == "residual":
        return mz.residual_net(seed=0), 0.05
    if name == "normalized_mlp":
        return mz.normalized_mlp(seed=0), 0.2
    raise KeyError(name)


ZOO = ["mlp", "mlp_flatten", *[f"cnn_{k}" for k in mz.CNN_KINDS], "residual", "normalized_mlp"]
METHODS = ["IBP", "CROWN", "CROWN-IBP"]


def _samples(xl, xu, n=N_SAMPLES, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand((n, *xl.shape[1:]), generator=g)
    r[: n // 10] = r[: n // 10].round()  # some box corners
    return xl + r * (xu - xl)


def _check_sound(model, xl, xu, lo, up, C=None):
    assert lo.shape == up.shape
    assert torch.isfinite(lo).all() and torch.isfinite(up).all()
    assert (lo <= up + TOL).all()
    for b in range(xl.shape[0]):
        x = _samples(xl[b:b + 1], xu[b:b + 1], seed=b)
        with torch.no_grad():
            y = model(x).reshape(x.shape[0], -1)
        if C is not None:
            y = y @ C[b].T
        assert (y >= lo[b] - TOL).all(), (y.min(0).values - lo[b]).min()
        assert (y <= up[b] + TOL).all(), (up[b] - y.max(0).values).min()


def test_patch_is_idempotent():
    lr.patch_auto_lirpa()
    lr.patch_auto_lirpa()
    import auto_LiRPA  # noqa: F401
    import numpy.lib.arraysetops as a
    assert hasattr(a, "isin")
    assert hasattr(torch._C.Node, "__getitem__")


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_sound(name):
    (model, shape), eps = _zoo(name)
    xl, xu = mz.random_box(shape, eps, seed=3, batch=2)
    res = {}
    for method in METHODS:
        lo, up = lr.lirpa_bounds(model, xl, xu, method)
        assert lo.shape == (2, 5 if name.startswith("cnn_") else up.shape[1])
        _check_sound(model, xl, xu, lo, up)
        res[method] = (lo, up)
    # CROWN is no looser than IBP on these small nets (not a theorem; a sanity check here)
    assert (res["CROWN"][1] - res["CROWN"][0]).sum() <= (res["IBP"][1] - res["IBP"][0]).sum()


@pytest.mark.parametrize("name", ["mlp", "cnn_basic", "residual"])
def test_spec_matrix_and_batch_rows_independent(name):
    (model, shape), eps = _zoo(name)
    xl, xu = mz.random_box(shape, eps, seed=5, batch=2)
    with torch.no_grad():
        n_out = model(xl).reshape(2, -1).shape[1]
    C = torch.randn(2, 4, n_out, generator=torch.Generator().manual_seed(0))
    lo, up = lr.lirpa_bounds(model, xl, xu, "CROWN", C=C)
    assert lo.shape == (2, 4)
    _check_sound(model, xl, xu, lo, up, C=C)
    lo1, up1 = lr.lirpa_bounds(model, xl[1:], xu[1:], "CROWN", C=C[1:])
    assert torch.equal(lo[1:], lo1) and torch.equal(up[1:], up1)


def test_conv_mode_choice():
    assert lr.lirpa_conv_mode(mz.random_cnn("basic", 0)[0]) == "patches"
    assert lr.lirpa_conv_mode(mz.random_cnn("dilated", 0)[0]) == "matrix"
    assert lr.lirpa_conv_mode(mz.random_cnn("grouped", 0)[0]) == "matrix"


ONNX = {
    "mnist_256x2": (mz.mnist_256x2, "mnist_fc/vnnlib/prop_0_0.03.vnnlib.gz"),
    "cifar_base_kw": (mz.cifar_base_kw,
                      "oval21/vnnlib/cifar_base_kw-img2578-eps0.021176470588235297.vnnlib.gz"),
}


@pytest.mark.parametrize("name", list(ONNX))
def test_onnx_models_sound(name):
    factory, vnnlib = ONNX[name]
    model, shape = factory()
    xl, xu = mz.vnnlib_input_box(mz.benchmarks_dir() / vnnlib, shape)
    widths = {}
    for method in METHODS:
        lo, up = lr.lirpa_bounds(model, xl, xu, method)
        assert lo.shape == (1, 10)
        _check_sound(model, xl, xu, lo, up)
        widths[method] = (up - lo).sum().item()
    assert widths["CROWN"] < widths["IBP"]
    assert widths["CROWN"] > 0  # the box reaches unstable neurons (not a constant output)
