"""The verdict pipeline (dtensor_verify.verify): sat only when onnxruntime confirms, unsat only
from bounds, timeouts honoured, errors never unsat."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.model_loading import read_bytes
from dtensor_verify.specs import parse_vnnlib, read_result_file, read_vnnlib, violates, write_result_file
from dtensor_verify.verify import AttackOptions, VerifyResult, verify_instance

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


def bench(*parts: str) -> Path:
    """A benchmark file; missing data is a broken checkout, so fail rather than skip."""
    p = BENCH.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"benchmark file {p} is missing (expected the shared VNN-COMP benchmarks next to "
                    f"the repository, at {BENCH})")
    return p


pytestmark = pytest.mark.usefixtures("one_thread")


_MODELS: dict = {}


def model_of(*parts):
    path = str(bench(*parts))
    if path not in _MODELS:
        _MODELS[path] = dv.load(path)
    return _MODELS[path], path


def ort_output(onnx_path, model, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(read_bytes(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    out = sess.run(None, {inp.name: np.asarray(x, np.float32).reshape(model.loaded.onnx_input_shape)})[0]
    return np.asarray(out, np.float64).ravel()


def test_sat_counterexample_confirmed_and_round_trips(tmp_path):
    model, onnx = model_of("test", "test_sat.onnx")
    prop = read_vnnlib(bench("test", "test_prop.vnnlib"), model.n_inputs, model.n_outputs)
    res = verify_instance(model, prop, onnx, timeout=60)
    assert isinstance(res, VerifyResult)
    assert res.verdict == "sat", res
    assert res.confirmed_by == "onnxruntime"
    x, y = res.counterexample
    region = prop.regions[0]
    assert np.all(x >= region.lower) and np.all(x <= region.upper)      # inside the box, exactly
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)   # what onnxruntime ran
    y_ort = ort_output(onnx, model, x)
    np.testing.assert_array_equal(y_ort, y)
    assert violates(prop, x, y_ort)

    path = tmp_path / "result.txt"
    write_result_file(path, res.verdict, x, y)
    verdict, x2, y2 = read_result_file(path)
    assert verdict == "sat"
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert violates(prop, x2, ort_output(onnx, model, x2))               # reproduces from the file


def test_unsat_proved_by_bounds():
    model, onnx = model_of("test", "test_unsat.onnx")
    prop = read_vnnlib(bench("test", "test_prop.vnnlib"), model.n_inputs, model.n_outputs)
    res = verify_instance(model, prop, onnx, timeout=60)
    assert res.verdict == "unsat", res
    assert res.decided_by in ("crown", "alpha-crown")
    assert res.counterexample is None
    assert all(d.status == "proved" and max(d.lower) > 0 for d in res.details)
    # Without an attack the verdict is the same: unsat never depends on the attack.
    assert verify_instance(model, prop, onnx, timeout=60, attack=False).verdict == "unsat"


def test_onnxruntime_disagreement_is_an_error():
    # Bound the network of test_sat, but name test_unsat's ONNX file (same architecture, other
    # weights) as the original: the self-check on the property's box catches it before bounding.
    model, _ = model_of("test", "test_sat.onnx")
    _, other = model_of("test", "test_unsat.onnx")
    prop = read_vnnlib(bench("test", "test_prop.vnnlib"), model.n_inputs, model.n_outputs)
    res = verify_instance(model, prop, other, timeout=60,
                          attack_options=AttackOptions(restarts=5, steps=30, extra_rounds=1))
    assert res.verdict == "error", res
    assert "self-check" in res.message and "differs from onnxruntime" in res.message, res.message
    assert res.counterexample is None


def test_onnxruntime_disagreement_is_never_sat(monkeypatch):
    # The same mismatch with the box self-check switched off: the attack's candidates reach
    # onnxruntime, which rejects them all.
    import dtensor_verify.selfcheck as selfcheck
    monkeypatch.setattr(selfcheck, "check_on_box", lambda *args, **kwargs: 0.0)
    model, _ = model_of("test", "test_sat.onnx")
    _, other = model_of("test", "test_unsat.onnx")
    prop = read_vnnlib(bench("test", "test_prop.vnnlib"), model.n_inputs, model.n_outputs)
    # Without branch and bound the attack's candidates are all that can give sat.
    res = verify_instance(model, prop, other, timeout=60, bab=False,
                          attack_options=AttackOptions(restarts=5, steps=30, extra_rounds=1))
    assert res.verdict == "unknown", res
    assert res.counterexample is None
    assert any(d.attack_margin is not None and d.attack_margin <= 0 for d in res.details)
    # Branch and bound keeps meeting candidates that onnxruntime rejects: never sat, never unsat.
    res = verify_instance(model, prop, other, timeout=6,
                          attack_options=AttackOptions(restarts=5, steps=30, extra_rounds=1))
    assert res.verdict in ("unknown", "timeout") and res.counterexample is None, res


def test_bound_guided_attack_finds_flat_region_counterexample():
    # PGD from random starts stalls on this instance; the vertex minimising CROWN's linear lower
    # bound is a counterexample (known sat).
    model, onnx = model_of("mnist_fc", "onnx", "mnist-net_256x2.onnx.gz")
    prop = read_vnnlib(bench("mnist_fc", "vnnlib", "prop_2_0.03.vnnlib.gz"), model.n_inputs, model.n_outputs)
    res = verify_instance(model, prop, onnx, timeout=60)
    assert res.verdict == "sat", res
    assert violates(prop, res.counterexample[0], ort_output(onnx, model, res.counterexample[0]))


@pytest.mark.parametrize("vnnlib,expected", [("prop_6_0.03", "unsat"), ("prop_0_0.05", "sat"),
                                             ("prop_7_0.05", "unsat")])
def test_short_timeout_never_wrong(vnnlib, expected):
    model, onnx = model_of("mnist_fc", "onnx", "mnist-net_256x2.onnx.gz")
    prop = read_vnnlib(bench("mnist_fc", "vnnlib", f"{vnnlib}.vnnlib.gz"), model.n_inputs, model.n_outputs)
    t0 = time.perf_counter()
    res = verify_instance(model, prop, onnx, timeout=0.5)
    assert time.perf_counter() - t0 < 0.5 + 5
    assert res.verdict in ("timeout", "unknown", expected), res


def test_timeout_on_bigger_network():
    model, onnx = model_of("oval21", "onnx", "cifar_base_kw.onnx.gz")
    prop = read_vnnlib(bench("oval21", "vnnlib", "cifar_base_kw-img8194-eps0.018300653594771243.vnnlib.gz"),
                       model.n_inputs, model.n_outputs)
    t0 = time.perf_counter()
    res = verify_instance(model, prop, onnx, timeout=1.0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0 + 5, elapsed
    assert res.verdict in ("timeout", "unknown", "sat", "unsat"), res
    assert res.seconds <= elapsed
    if res.verdict == "timeout":
        assert "time limit" in res.message
    if res.verdict == "sat":
        assert violates(prop, res.counterexample[0], ort_output(onnx, model, res.counterexample[0]))


def test_zero_timeout_is_timeout_not_unsat():
    model, onnx = model_of("test", "test_unsat.onnx")
    prop = read_vnnlib(bench("test", "test_prop.vnnlib"), model.n_inputs, model.n_outputs)
    assert verify_instance(model, prop, onnx, timeout=0).verdict == "timeout"


def test_exception_in_bounds_is_error_never_unsat(monkeypatch):
    import importlib
    crown_mod = importlib.import_module("dtensor_verify.methods.crown")   # (the package exports a function `crown`)

    model, onnx = model_of("test", "test_unsat.onnx")
    prop = read_vnnlib(bench("test", "test_prop.vnnlib"), model.n_inputs, model.n_outputs)

    def broken(*a, **k):
        raise RuntimeError("simulated failure in the bound computation")

    monkeypatch.setattr(crown_mod, "output_bound", broken)
    res = verify_instance(model, prop, onnx, timeout=60, attack=False)
    assert res.verdict == "error"
    assert "simulated failure" in res.message and res.traceback
    assert res.counterexample is None


def test_mismatched_property_is_error():
    model, onnx = model_of("test", "test_unsat.onnx")
    prop = parse_vnnlib("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                        "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= Y_0 1))\n")
    res = verify_instance(model, prop, onnx, timeout=60)
    assert res.verdict == "error"
    assert "inputs" in res.message


def test_regions_and_disjunct_without_output_rows():
    # test_tiny: one input, one output. Region 1 ([2, 3]) has a term with no output constraint:
    # any input there is a counterexample. Region 0 asks for an output the network cannot reach.
    model, onnx = model_of("test", "test_tiny.onnx")
    text = ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (or\n"
            "  (and (>= X_0 -1) (<= X_0 1) (>= Y_0 100))\n"
            "  (and (>= X_0 2) (<= X_0 3))\n))\n")
    prop = parse_vnnlib(text, "multi.vnnlib", model.n_inputs, model.n_outputs)
    assert len(prop.regions) == 2
    res = verify_instance(model, prop, onnx, timeout=30)
    assert res.verdict == "sat", res
    x, y = res.counterexample
    assert 2 <= x[0] <= 3 and violates(prop, x, y)
    # Only region 0: proved by bounds (the same property test_tiny.vnnlib states).
    only0 = parse_vnnlib(text.replace("  (and (>= X_0 2) (<= X_0 3))\n", ""), "one.vnnlib", 1, 1)
    assert verify_instance(model, only0, onnx, timeout=30).verdict == "unsat"


def test_multi_row_disjunct_proved_by_one_row():
    # The disjunct (Y_0 >= 100 and Y_0 <= 200) is infeasible because its first row is.
    model, onnx = model_of("test", "test_tiny.onnx")
    text = ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 -1))\n(assert (<= X_0 1))\n"
            "(assert (and (>= Y_0 100) (<= Y_0 200)))\n")
    prop = parse_vnnlib(text, "rows.vnnlib", 1, 1)
    res = verify_instance(model, prop, onnx, timeout=30)
    assert res.verdict == "unsat", res
    assert res.details[0].n_rows == 2 and max(res.details[0].lower) > 0


def test_torch_confirmation_without_onnx():
    # A model built from an nn.Module has no ONNX file: the traced module confirms instead.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    model = dv.load(net, input_shape=(2,))
    text = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
            "(declare-const Y_1 Real)\n(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n"
            "(assert (<= X_1 1))\n(assert (<= Y_0 1000))\n")
    prop = parse_vnnlib(text, "any.vnnlib", 2, 2)
    res = verify_instance(model, prop, None, timeout=30)
    assert res.verdict == "sat" and res.confirmed_by == "torch"
