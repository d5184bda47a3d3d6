"""Hostile inputs refused or handled by definition (issue 18): NaN / Inf weights are refused at
load naming the tensor; a disjunct whose input box is empty is false and dropped (only empty
terms: `unsat`, said so); error messages quote at most a short excerpt of huge inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import dtensor_verify as dv
from dtensor_verify.cli import main
from dtensor_verify.errors import ModelLoadError
from dtensor_verify.specs import VnnlibError, parse_vnnlib, read_result_file, read_vnnlib
from onnx_factory import build, const, const_node, rand

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("dtensor-verify: error: "), err[:2000]
    return lines[0]


def _net(tmp_path, name, w, b=None, as_node=False):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    inits = [const("W2", rand((3, 2), 1))]
    if as_node:
        nodes.insert(0, const_node("W", w))
    else:
        inits.append(const("W", w))
    return build(tmp_path, name, nodes, inits, [1, 2], check=False)


SPEC = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("as_node", [False, True])
def test_nan_or_inf_weights_are_refused_at_load(tmp_path, capsys, bad, as_node):
    w = rand((2, 3), 0)
    w[1, 2] = bad
    path = _net(tmp_path, "poisoned", w, as_node=as_node)
    with pytest.raises(ModelLoadError, match="'W'|const_W" if not as_node else "const_W"):
        dv.load(path)
    spec = tmp_path / "p.vnnlib"
    spec.write_text(SPEC + "(assert (<= Y_0 Y_1))\n")
    res = tmp_path / "res.txt"
    rc = main(["run", "--onnx", path, "--vnnlib", str(spec), "--results", str(res), "--timeout", "20", "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "finite" in line and ("'W'" in line or "const_W" in line), line
    assert read_result_file(res)[0] == "error"


def test_nan_parameter_of_an_nn_module_is_refused():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[2].bias[1] = float("nan")
    with pytest.raises(ModelLoadError, match="'2.bias'"):
        dv.load(net, input_shape=(2,))


# ------------------------------------------------------------------------------ empty disjuncts

def test_a_term_with_an_empty_box_is_dropped_and_the_rest_verified(tmp_path):
    text = SPEC + ("(assert (or (and (>= X_0 1) (<= X_0 -1) (<= Y_0 100))\n"
                   "            (and (<= X_0 0.5) (>= Y_0 -1000))))\n")
    p = parse_vnnlib(text, "p.vnnlib")
    (region,) = p.regions
    assert p.empty_terms == 1 and len(region.disjuncts) == 1
    assert region.upper[0] == 0.5 and region.lower[0] == -1
    # Intersected with the top-level box: [1.5, 2] against X_0 <= 1 is empty too.
    p2 = parse_vnnlib(SPEC + "(assert (or (and (>= X_0 1.5) (<= X_0 2)) (and (<= Y_0 0))))\n")
    assert p2.empty_terms == 1 and len(p2.regions) == 1 and p2.regions[0].lower[0] == -1
    # Open bounds at one point: empty as well.
    p3 = parse_vnnlib(SPEC + "(assert (or (and (> X_1 0.5) (< X_1 0.5)) (and (<= Y_1 0))))\n")
    assert p3.empty_terms == 1 and len(p3.regions) == 1


def test_sat_term_next_to_an_empty_one_gives_sat(tmp_path, capsys):
    path = _net(tmp_path, "ok", rand((2, 3), 0))
    spec = tmp_path / "p.vnnlib"
    spec.write_text(SPEC + "(assert (or (and (>= X_0 1) (<= X_0 -1)) (and (>= Y_0 -1000))))\n")
    res = tmp_path / "res.txt"
    rc = main(["run", "--onnx", path, "--vnnlib", str(spec), "--results", str(res), "--timeout", "20", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert read_result_file(res)[0] == "sat"


def test_only_empty_terms_is_unsat_by_definition_and_says_so(tmp_path):
    path = _net(tmp_path, "ok", rand((2, 3), 0))
    spec = tmp_path / "p.vnnlib"
    spec.write_text(SPEC + "(assert (or (and (>= X_0 1) (<= X_0 -1) (>= Y_0 -1000)) (and (> X_1 0) (< X_1 0))))\n")
    prop = read_vnnlib(spec)
    assert prop.regions == [] and prop.empty_terms == 2 and "unsat by definition" in prop.note
    res = tmp_path / "res.txt"
    js = tmp_path / "r.json"
    rc = main(["run", "--onnx", path, "--vnnlib", str(spec), "--results", str(res), "--timeout", "20",
               "--quiet", "--json", str(js)])
    assert rc == 0 and read_result_file(res)[0] == "unsat"
    import json
    data = json.loads(js.read_text())
    assert data["decided_by"] == "spec" and "empty input box" in data["message"] and "X_0 in [1.0, -1.0]" in data["message"]


def test_an_empty_top_level_box_stays_an_error():
    with pytest.raises(VnnlibError, match="X_0 has lower bound 2.0 > upper bound 1.0"):
        parse_vnnlib("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 2))\n(assert (<= X_0 1))\n"
                     "(assert (or (and (<= Y_0 0)) (and (>= X_0 0) (>= Y_0 1))))\n")


# ------------------------------------------------------------------------------ bounded messages

@pytest.mark.parametrize("content", ["zeros", "nul", "atom"])
def test_error_messages_quote_a_short_excerpt_of_huge_inputs(tmp_path, capsys, content):
    big = 20 * 1024 * 1024
    spec = tmp_path / "big.vnnlib"
    if content == "zeros":
        spec.write_bytes(b"0" * big)
    elif content == "nul":
        spec.write_bytes(b"\0" * big)
    else:
        spec.write_bytes(SPEC.encode() + b"(assert (<= Y_0 " + b"9" * big + b"x))\n")
    path = _net(tmp_path, "ok", rand((2, 3), 0))
    res = tmp_path / "res.txt"
    rc = main(["run", "--onnx", path, "--vnnlib", str(spec), "--results", str(res), "--timeout", "20", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err) < 1200, err[:300]
    line = _one_line(err)
    assert "big.vnnlib" in line and "characters" in line, line
    assert read_result_file(res)[0] == "error"


def test_forward_of_an_empty_batch(tmp_path):
    """A rank with no domain of its own runs branch and bound's forward on an empty batch under
    torchrun; that must give [0, n_out] (it raised in reshape, and the run ended `error`)."""
    model = dv.load(_net(tmp_path, "ok", rand((2, 3), 0)))
    assert tuple(model.forward(torch.zeros(0, 2)).shape) == (0, 2)
