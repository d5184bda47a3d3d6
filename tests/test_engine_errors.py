"""User errors at the API level raise a `dv.VerifierError` subclass whose message names the file,
node or op at fault; never a bare KeyError / RuntimeError / DecodeError traceback."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from torch import nn

import dtensor_verify as dv
import model_zoo as mz

CIFAR = "oval21/onnx/cifar_base_kw.onnx.gz"


def _raises(exc_type, fn, *needles):
    """fn() raises exactly a subclass `exc_type` of VerifierError whose message holds every needle."""
    assert issubclass(exc_type, dv.VerifierError) and exc_type is not dv.VerifierError
    with pytest.raises(dv.VerifierError) as info:
        fn()
    err = info.value
    assert isinstance(err, exc_type), f"{type(err).__name__}: {err}"
    msg = str(err)
    for needle in needles:
        assert str(needle) in msg, f"{needle!r} not in {msg!r}"
    # One readable line, not a chained traceback dump.
    assert msg and "Traceback" not in msg
    return err


@pytest.fixture(scope="module")
def mlp():
    model, shape = mz.random_mlp([4, 6, 3], seed=0)
    return dv.load(model, input_shape=shape)


@pytest.fixture(scope="module")
def cnn():
    model, shape = mz.random_cnn("basic", seed=0)
    return dv.load(model, input_shape=shape)


# ------------------------------------------------------------------------- model files
@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.9, 0.999])
def test_truncated_onnx(tmp_path, fraction):
    data = gzip.decompress((mz.benchmarks_dir() / CIFAR).read_bytes())
    path = tmp_path / "cifar_truncated.onnx"
    path.write_bytes(data[:int(len(data) * fraction)])
    _raises(dv.ModelLoadError, lambda: dv.load(path), path)


def test_truncated_onnx_every_prefix_of_small_net(tmp_path):
    """Every prefix of a small ONNX file (protobuf may parse some of them) is rejected cleanly."""
    data = (mz.benchmarks_dir() / "test/test_small.onnx").read_bytes()
    path = tmp_path / "small_truncated.onnx"
    for n in range(0, len(data), 7):
        path.write_bytes(data[:n])
        _raises(dv.ModelLoadError, lambda: dv.load(path), path)


def test_truncated_gzip(tmp_path):
    raw = (mz.benchmarks_dir() / CIFAR).read_bytes()
    path = tmp_path / "cifar_truncated.onnx.gz"
    path.write_bytes(raw[:len(raw) // 2])
    _raises(dv.ModelLoadError, lambda: dv.load(path), path)


def test_empty_and_missing_file(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _raises(dv.ModelLoadError, lambda: dv.load(empty), empty)
    missing = tmp_path / "does_not_exist.onnx"
    _raises(dv.ModelLoadError, lambda: dv.load(missing), missing)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    _raises(dv.ModelLoadError, lambda: dv.load(path), path)


# ------------------------------------------------------------------------- unsupported ops
def _onnx_with(tmp_path, op_type: str, node_name: str):
    import onnx
    from onnx import TensorProto, helper

    values = np.random.default_rng(0).standard_normal(12).astype(np.float32)
    w = helper.make_tensor("W", TensorProto.FLOAT, [3, 4], values)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul_0"),
         helper.make_node(op_type, ["h"], ["y"], name=node_name)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path = tmp_path / f"{op_type.lower()}.onnx"
    onnx.save(model, str(path))
    return path


# Sigmoid / Tanh have bound rules now (ops/activation.py): ops without one stand in for them.
@pytest.mark.parametrize("op_type", ["Softsign", "Selu"])
def test_unsupported_onnx_op(tmp_path, op_type):
    path = _onnx_with(tmp_path, op_type, f"my_{op_type.lower()}")
    err = _raises(dv.UnsupportedOpError, lambda: dv.load(path), f"my_{op_type.lower()}")
    assert op_type.lower() in str(err).lower(), err   # the op type (onnx2torch: OnnxFunction tanh)


class _SigmoidNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return nn.functional.softsign(self.fc(x))


def test_unsupported_module_op():
    _raises(dv.UnsupportedOpError, lambda: dv.load(_SigmoidNet(), input_shape=(3,)), "softsign")
    _raises(dv.UnsupportedOpError, lambda: dv.load(nn.Sequential(nn.Linear(3, 2), nn.SELU()), input_shape=(3,)),
            "SELU")


class _ArgmaxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return torch.argmax(self.fc(x), dim=1, keepdim=True).float()


def test_discrete_post_processing_is_unsupported():
    """Products of activations have a rule now (McCormick); integer post-processing has none."""
    _raises(dv.UnsupportedOpError, lambda: dv.load(_ArgmaxNet(), input_shape=(3,)), "argmax")


def test_module_needs_input_shape():
    _raises(dv.InputSpecError, lambda: dv.load(_SigmoidNet()), "input_shape")


# ------------------------------------------------------------------------- input boxes
def test_lower_above_upper(mlp):
    xl, xu = torch.zeros(1, 4), torch.ones(1, 4)
    xl[0, 2] = 2.0
    _raises(dv.InputSpecError, lambda: mlp.compute_bounds(xl, xu, method="crown"), "lower > upper", "X_2")


@pytest.mark.parametrize("where", ["lower", "upper"])
def test_nan_bounds(mlp, where):
    xl, xu = torch.zeros(1, 4), torch.ones(1, 4)
    (xl if where == "lower" else xu)[0, 1] = float("nan")
    for method in dv.METHODS:
        _raises(dv.InputSpecError, lambda: mlp.compute_bounds(xl, xu, method=method), "NaN")


def test_infinite_bounds(mlp):
    xl, xu = torch.zeros(1, 4), torch.ones(1, 4)
    xu[0, 0] = float("inf")
    _raises(dv.InputSpecError, lambda: mlp.compute_bounds(xl, xu, method="ibp"), "inf")


def test_box_shape_mismatch(mlp, cnn):
    # element count not a multiple of the model's input size
    _raises(dv.InputSpecError, lambda: mlp.compute_bounds(torch.zeros(1, 5), torch.ones(1, 5)), "[4]")
    _raises(dv.InputSpecError, lambda: cnn.compute_bounds(torch.zeros(1, 1, 7, 7), torch.ones(1, 1, 7, 7)),
            "[1, 8, 8]")
    # lower and upper of different shapes
    _raises(dv.InputSpecError, lambda: mlp.compute_bounds(torch.zeros(1, 4), torch.ones(2, 4)), "shape")
    # a multiple of the input size in the wrong layout is refused, not silently re-chunked into boxes
    _raises(dv.InputSpecError, lambda: mlp.compute_bounds(torch.zeros(8), torch.ones(8)), "[8]")
    _raises(dv.InputSpecError, lambda: mlp.compute_bounds(torch.zeros(2, 2, 2), torch.ones(2, 2, 2)), "[2, 2, 2]")
    _raises(dv.InputSpecError, lambda: cnn.compute_bounds(torch.zeros(2, 8, 8), torch.ones(2, 8, 8)), "[1, 8, 8]")


def test_spec_matrix_shape_mismatch(mlp):
    xl, xu = torch.zeros(1, 4), torch.ones(1, 4)
    _raises(dv.InputSpecError, lambda: mlp.compute_bounds(xl, xu, method="crown", C=torch.ones(1, 2, 5)), "C")


@pytest.mark.parametrize("method", ["beta-crown", "crown-ibp", ""])
def test_unknown_method(mlp, method):
    xl, xu = torch.zeros(1, 4), torch.ones(1, 4)
    _raises(dv.InputSpecError, lambda: mlp.compute_bounds(xl, xu, method=method), "unknown method",
            repr(method))


def test_valid_calls_still_work(mlp):
    """The checks do not reject good input: a flat box is reshaped, aliases are accepted."""
    xl, xu = torch.zeros(4), torch.ones(4)
    for method in ("ibp", "CROWN", "alpha_crown", "alpha"):
        r = mlp.compute_bounds(xl, xu, method=method)
        assert r.lower.shape == (1, 3) and (r.lower <= r.upper).all()
    # a batch of flat boxes [B, n] is accepted too
    r = mlp.compute_bounds(torch.zeros(2, 4), torch.ones(2, 4), method="ibp")
    assert r.lower.shape == (2, 3)
