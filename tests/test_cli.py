"""The `dtensor-verify` command line: bounds / run / benchmark, and its handling of bad input."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dtensor_verify.cli import main
from dtensor_verify.model_loading import read_bytes
from dtensor_verify.specs import read_result_file, read_vnnlib, violates

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"
MNIST = "mnist_fc/onnx/mnist-net_256x2.onnx.gz"
MNIST_PROP = "mnist_fc/vnnlib/prop_0_0.03.vnnlib.gz"


def bench(rel: str) -> Path:
    """A benchmark file; missing data is a broken checkout, so fail rather than skip."""
    p = BENCH / rel
    if not p.exists():
        pytest.fail(f"benchmark file {p} is missing (expected the shared VNN-COMP benchmarks next to "
                    f"the repository, at {BENCH})")
    return p


pytestmark = pytest.mark.usefixtures("one_thread")


def ort_output(onnx_path, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(read_bytes(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return np.asarray(sess.run(None, {inp.name: np.asarray(x, np.float32).reshape(shape)})[0], np.float64).ravel()


def assert_user_error(capsys, rc, *needles):
    """Non-zero exit, exactly one stderr line 'dtensor-verify: error: ...' naming the culprit."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("dtensor-verify: error: ")]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


# ------------------------------------------------------------------------------------------ bounds

def test_bounds_json_on_mnist(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bounds", str(bench(MNIST)), "--vnnlib", str(bench(MNIST_PROP)), "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "Y_9" in table and "crown" in table
    data = json.loads(out.read_text())
    for key in ("lower", "upper", "method", "seconds", "world_size", "plan", "memory", "model", "spec"):
        assert key in data, key
    assert data["method"] == "crown" and data["world_size"] == 1 and data["plan"] == "replicate"
    assert isinstance(data["memory"], dict) and data["seconds"] >= 0
    if importlib.util.find_spec("dtensor_verify.memory") is not None:
        rank0 = data["memory"]["per_rank"][0]
        assert rank0["peak_bytes"] >= rank0["baseline_bytes"] > 0
    assert data["model"].endswith("mnist-net_256x2.onnx.gz") and data["spec"]["path"].endswith(".vnnlib.gz")
    lower, upper = np.array(data["lower"]), np.array(data["upper"])
    assert lower.shape == upper.shape == (10,) and np.all(lower <= upper)
    # Sound: onnxruntime outputs at points of the box lie inside the bounds.
    region = read_vnnlib(bench(MNIST_PROP)).regions[0]
    rng = np.random.default_rng(0)
    for x in [(region.lower + region.upper) / 2, region.lower, region.upper,
              *rng.uniform(region.lower, region.upper, size=(5, 784))]:
        y = ort_output(bench(MNIST), x)
        assert np.all(y >= lower - 1e-5) and np.all(y <= upper + 1e-5)


def test_bounds_spec_rows_alpha_at_least_as_tight_as_crown(tmp_path, capsys):
    outs = {}
    for method in ("crown", "alpha-crown"):
        outs[method] = tmp_path / f"{method}.json"
        rc = main(["bounds", str(bench(MNIST)), "--vnnlib", str(bench(MNIST_PROP)), "--spec-rows",
                   "--method", method, "--iterations", "10", "--json", str(outs[method]), "--quiet"])
        assert rc == 0
    assert capsys.readouterr().out == ""          # --quiet with --json: no table
    crown, alpha = (json.loads(outs[m].read_text()) for m in ("crown", "alpha-crown"))
    assert len(crown["lower"]) == 9 and crown["spec_rows"] is True
    assert alpha["method"] == "alpha-crown"
    assert np.all(np.array(alpha["lower"]) >= np.array(crown["lower"]) - 1e-5)
    # prop_0_0.03 is unsat: every row of C y - d is positive under alpha-CROWN.
    assert min(alpha["lower"]) > 0


def test_bounds_from_box_files(tmp_path, capsys):
    onnx = bench("test/test_sat.onnx")
    region = read_vnnlib(bench("test/test_prop.vnnlib")).regions[0]
    (tmp_path / "lo.txt").write_text(", ".join(repr(float(v)) for v in region.lower) + "\n")
    (tmp_path / "hi.txt").write_text("\n".join(repr(float(v)) for v in region.upper))
    np.save(tmp_path / "hi.npy", region.upper)
    ref, a, b = tmp_path / "ref.json", tmp_path / "a.json", tmp_path / "b.json"
    assert main(["bounds", str(onnx), "--vnnlib", str(bench("test/test_prop.vnnlib")), "--json", str(ref)]) == 0
    assert main(["bounds", str(onnx), "--lower", str(tmp_path / "lo.txt"), "--upper", str(tmp_path / "hi.txt"),
                 "--json", str(a)]) == 0
    assert main(["bounds", str(onnx), "--lower", str(tmp_path / "lo.txt"), "--upper", str(tmp_path / "hi.npy"),
                 "--method", "ibp", "--json", str(b)]) == 0
    ref, a, b = (json.loads(p.read_text()) for p in (ref, a, b))
    assert a["lower"] == ref["lower"] and a["upper"] == ref["upper"]
    assert np.all(np.array(b["lower"]) <= np.array(a["lower"]) + 1e-6)      # IBP is looser than CROWN
    capsys.readouterr()


def test_bounds_lower_above_upper_file(tmp_path, capsys):
    onnx = bench("test/test_sat.onnx")
    (tmp_path / "lo.txt").write_text("0 0 0.5 0 0")
    (tmp_path / "hi.txt").write_text("1 1 0.4 1 1")
    rc = main(["bounds", str(onnx), "--lower", str(tmp_path / "lo.txt"), "--upper", str(tmp_path / "hi.txt")])
    assert_user_error(capsys, rc, "X_2", "lower")


# ------------------------------------------------------------------------------------------ run

def test_run_sat_and_unsat_result_files(tmp_path, capsys):
    prop_path = bench("test/test_prop.vnnlib")
    res = tmp_path / "sat.txt"
    j = tmp_path / "sat.json"
    rc = main(["run", "--onnx", str(bench("test/test_sat.onnx")), "--vnnlib", str(prop_path),
               "--results", str(res), "--timeout", "60", "--json", str(j), "--quiet"])
    assert rc == 0
    verdict, x, y = read_result_file(res)
    assert verdict == "sat"
    prop = read_vnnlib(prop_path)
    y_ort = ort_output(bench("test/test_sat.onnx"), x)
    assert violates(prop, x, y_ort)
    np.testing.assert_allclose(y, y_ort, rtol=0, atol=1e-6)
    info = json.loads(j.read_text())
    assert info["verdict"] == "sat" and info["confirmed_by"] == "onnxruntime" and "counterexample" in info

    res = tmp_path / "unsat.txt"
    rc = main(["run", "--onnx", str(bench("test/test_unsat.onnx")), "--vnnlib", str(prop_path),
               "--results", str(res), "--timeout", "60"])
    assert rc == 0
    assert read_result_file(res) == ("unsat", None, None)
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "unsat"


def _sigmoid_onnx(path: Path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "W")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "B")
    nodes = [helper.make_node("Gemm", ["X", "W", "B"], ["h"], name="fc", transB=1),
             helper.make_node("Softsign", ["h"], ["Y"], name="squash")]     # (Sigmoid has a rule now)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))


def _bad_case(kind: str, tmp: Path):
    onnx, prop = bench("test/test_sat.onnx"), bench("test/test_prop.vnnlib")
    if kind == "truncated-onnx":
        bad = tmp / "cut.onnx"
        bad.write_bytes(onnx.read_bytes()[:700])
        return bad, prop, ["cut.onnx"]
    if kind == "malformed-vnnlib":
        bad = tmp / "bad.vnnlib"
        bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)\n")
        return onnx, bad, ["bad.vnnlib:"]
    if kind == "lower-above-upper":
        bad = tmp / "box.vnnlib"
        text = prop.read_text().replace("(assert (>= X_3 0.3))", "(assert (>= X_3 0.7))")
        assert text != prop.read_text()
        bad.write_text(text)
        return onnx, bad, ["box.vnnlib", "X_3"]
    if kind == "missing-file":
        return tmp / "nope.onnx", prop, ["nope.onnx"]
    if kind == "unsupported-op":
        bad = tmp / "sig.onnx"
        _sigmoid_onnx(bad)
        text = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const X_2 Real)\n"
                "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                + "".join(f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n" for i in range(3))
                + "(assert (>= Y_0 2))\n")
        p = tmp / "sig.vnnlib"
        p.write_text(text)
        return bad, p, ["Softsign"]
    raise AssertionError(kind)


BAD = ["truncated-onnx", "malformed-vnnlib", "lower-above-upper", "missing-file", "unsupported-op"]


@pytest.mark.parametrize("kind", BAD)
def test_run_bad_input_is_one_line_error(kind, tmp_path, capsys):
    onnx, prop, needles = _bad_case(kind, tmp_path)
    res = tmp_path / "result.txt"
    rc = main(["run", "--onnx", str(onnx), "--vnnlib", str(prop), "--results", str(res), "--timeout", "30"])
    assert_user_error(capsys, rc, *needles)
    assert res.read_text().splitlines()[0] == "error"


@pytest.mark.parametrize("kind", ["truncated-onnx", "malformed-vnnlib", "unsupported-op"])
def test_bounds_bad_input_is_one_line_error(kind, tmp_path, capsys):
    onnx, prop, needles = _bad_case(kind, tmp_path)
    rc = main(["bounds", str(onnx), "--vnnlib", str(prop)])
    assert_user_error(capsys, rc, *needles)


def test_bad_arguments(tmp_path, capsys):
    assert main(["bounds", str(bench("test/test_sat.onnx"))]) == 2          # no box given
    assert "Traceback" not in capsys.readouterr().err
    assert main(["run", "--onnx", "x"]) == 2                                # argparse: missing options
    err = capsys.readouterr().err
    assert "dtensor-verify: error:" in err and "Traceback" not in err
    assert main(["bounds", str(bench("test/test_sat.onnx")), "--vnnlib", str(bench("test/test_prop.vnnlib")),
                 "--plan", "fc*=no-such-policy"]) == 2
    err = capsys.readouterr().err
    assert "dtensor-verify: error:" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ benchmark

def _write_expected(path: Path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["onnx", "vnnlib", "verdict"])
        w.writerows(rows)


def test_benchmark_on_test_folder(tmp_path, capsys):
    folder = bench("test")
    expected = tmp_path / "expected.csv"
    _write_expected(expected, [("test_sat.onnx", "test_prop.vnnlib", "sat"),
                               ("test_unsat.onnx", "test_prop.vnnlib", "unsat")])
    out = tmp_path / "out.csv"
    rc = main(["benchmark", str(folder), "--expected", str(expected), "--csv", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    assert list(rows[0])[:6] == ["onnx", "vnnlib", "verdict", "seconds", "expected", "agreement"]
    by = {(r["onnx"], r["vnnlib"]): r for r in rows}
    assert by[("test_sat.onnx", "test_prop.vnnlib")]["verdict"] == "sat"
    assert by[("test_unsat.onnx", "test_prop.vnnlib")]["agreement"] == "agree"
    assert all(r["verdict"] != "error" for r in rows)
    assert "2 agree" in text and "0 contradiction" in text and "median" in text

    # A forced contradiction (test_unsat is proved unsat; claim it is sat) fails the run.
    _write_expected(expected, [("test_unsat.onnx", "test_prop.vnnlib", "sat")])
    rc = main(["benchmark", str(folder), "--expected", str(expected), "--csv", str(out), "--quiet",
               "--filter", "test_unsat"])
    captured = capsys.readouterr()
    assert rc != 0
    assert "CONTRADICTION" in captured.out and "contradict" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["agreement"] == "CONTRADICTION"


def test_benchmark_gz_fallback_and_limit(tmp_path, capsys):
    inst = tmp_path / "instances.csv"
    inst.write_text("onnx/mnist-net_256x2.onnx,vnnlib/prop_0_0.03.vnnlib,120\n"
                    "onnx/mnist-net_256x2.onnx,vnnlib/prop_1_0.03.vnnlib,120\n")
    out = tmp_path / "out.csv"
    rc = main(["benchmark", str(bench("mnist_fc")), "--instances", str(inst), "--csv", str(out), "--limit", "1",
               "--expected", str(bench("mnist_fc/expected_256x2.csv")), "--quiet"])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["verdict"] for r in rows] == ["unsat"] and rows[0]["agreement"] == "agree"
    capsys.readouterr()


# ------------------------------------------------------------------------------------------ processes

def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_python_dash_m_subprocess(tmp_path):
    res = tmp_path / "r.txt"
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(bench("test/test_unsat.onnx").read_bytes()[:500])
    proc = subprocess.run([sys.executable, "-m", "dtensor_verify", "run", "--onnx", str(cut),
                           "--vnnlib", str(bench("test/test_prop.vnnlib")), "--results", str(res),
                           "--timeout", "30"], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("dtensor-verify: error: ")
    assert "cut.onnx" in proc.stderr
    assert res.read_text().splitlines()[0] == "error"


def test_vnncomp_run_instance_script(tmp_path):
    script = REPO / "scripts" / "vnncomp" / "run_instance.sh"
    res = tmp_path / "r.txt"
    proc = subprocess.run(["bash", str(script), "v1", "test", str(bench("test/test_unsat.onnx")),
                           str(bench("test/test_prop.vnnlib")), str(res), "60"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_result_file(res) == ("unsat", None, None)
    bad = subprocess.run(["bash", str(script), "v2", "test", "a", "b", "c", "1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "v1" in bad.stderr
