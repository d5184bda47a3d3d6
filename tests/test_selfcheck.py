"""The loader's self-check: a loaded model that does not compute what the original computes
(onnxruntime on the file, or the nn.Module as given) is an error in every entry point, never a
verdict. The mismatches are made on purpose by breaking a rewrite (the old MatMul(W, x) bug)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import dtensor_verify as dv
import dtensor_verify.model_loading as ml
from dtensor_verify.cli import main
from dtensor_verify.specs import parse_vnnlib, read_result_file
from dtensor_verify.verify import verify_instance
from onnx_factory import build, const

W = np.arange(9, dtype=np.float32).reshape(3, 3) - 4.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def broken_rewrite(monkeypatch):
    """Reinstate the old bug: `W @ x` read as `Linear(W)`, i.e. x @ W^T, for any x."""
    def old_left_product(self, node, w, x):
        return self.add_linear(node, x, w, name_hint=node.name)
    monkeypatch.setattr(ml._Canonicalizer, "left_product", old_left_product)


@pytest.fixture
def wx_model(tmp_path):
    return build(tmp_path, "wx", [helper.make_node("MatMul", ["W", "x"], ["y"], name="mm")], [const("W", W)],
                 [1, 3, 3])


@pytest.fixture
def wx_spec(tmp_path):
    spec = tmp_path / "wx.vnnlib"
    decl = " ".join(f"(declare-const X_{i} Real)" for i in range(9)) + " " + \
        " ".join(f"(declare-const Y_{j} Real)" for j in range(9))
    box = " ".join(f"(assert (>= X_{i} -1.0)) (assert (<= X_{i} 1.0))" for i in range(9))
    spec.write_text(f"{decl} {box} (assert (>= Y_0 100.0))")
    return spec


def test_load_refuses_a_model_that_differs_from_onnxruntime(wx_model, broken_rewrite):
    with pytest.raises(dv.ModelLoadError) as info:
        dv.load(wx_model)
    msg = str(info.value)
    assert wx_model in msg and "differs from onnxruntime" in msg and "tolerance" in msg, msg
    assert "\n" not in msg


def test_a_faithful_model_passes(wx_model):
    model = dv.load(wx_model)
    assert model.self_check_deviation is not None and model.self_check_deviation <= 1e-6


def test_run_gives_error_exit_2(tmp_path, wx_model, wx_spec, broken_rewrite, capsys):
    out = tmp_path / "result.txt"
    rc = main(["run", "--onnx", wx_model, "--vnnlib", str(wx_spec), "--results", str(out), "--timeout", "20",
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and read_result_file(out)[0] == "error"
    assert "Traceback" not in err and "differs from onnxruntime" in err and len(err.strip().splitlines()) == 1, err


def test_bounds_gives_error_exit_2(wx_model, wx_spec, broken_rewrite, capsys):
    rc = main(["bounds", wx_model, "--vnnlib", str(wx_spec)])
    err = capsys.readouterr().err
    assert rc == 2 and "differs from onnxruntime" in err and "Traceback" not in err, err


def test_benchmark_row_is_error(tmp_path, wx_model, wx_spec, broken_rewrite, capsys):
    (tmp_path / "instances.csv").write_text(f"wx.onnx,{wx_spec.name},20\n")
    out = tmp_path / "rows.csv"
    rc = main(["benchmark", str(tmp_path), "--csv", str(out), "--quiet"])
    capsys.readouterr()
    (row,) = list(csv.DictReader(out.open()))
    assert rc == 0 and row["verdict"] == "error" and "differs from onnxruntime" in row["message"], row


def test_verify_instance_checks_the_property_box(wx_model, wx_spec, broken_rewrite, monkeypatch):
    """Even if the load-time check were blind, the check on the property's box catches it."""
    import dtensor_verify.api as api
    monkeypatch.setattr(api, "check_loaded_model", lambda model: None)
    model = dv.load(wx_model)
    prop = parse_vnnlib(wx_spec.read_text())
    res = verify_instance(model, prop, wx_model, timeout=20)
    assert res.verdict == "error", res
    assert "property's box" in res.message and "differs from onnxruntime" in res.message, res.message


class _TracesDifferently(nn.Module):
    """fx traces one branch, eager runs the other: the traced graph is not the module."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):
            return self.fc(x)
        return self.fc(x) + 1.0


def test_modules_are_checked_against_themselves():
    with pytest.raises(dv.ModelLoadError, match="_TracesDifferently module as given"):
        dv.load(_TracesDifferently(), input_shape=(3,))
    ok = dv.load(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), input_shape=(3,))
    assert ok.self_check_deviation is not None and ok.self_check_deviation <= 1e-6
