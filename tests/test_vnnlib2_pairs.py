"""Candidates next to an input relation (`specs/vnnlib2_pairs.py`): a relational query whose
violation lives in a narrow pocket is found there, checked exactly; a monotone one is never `sat`."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dtensor_verify import solver_cli
from dtensor_verify.multinet import check_mapping, load_product
from dtensor_verify.specs.vnnlib2 import holds, read_query
from dtensor_verify.specs.vnnlib2_pairs import relation_rows, try_relations
from dtensor_verify.specs.vnnlib2_property import build_property

pytestmark = pytest.mark.usefixtures("one_thread")


def bump_net(tmp_path, rise: float, name: str = "bump.onnx") -> str:
    """y[1] = -(x0 + 1) + rise * (relu(x0 - 0.5) - relu(x0 - 0.52)) over x0 >= -1: decreasing in
    x0 except on [0.5, 0.52], where the slope is rise - 1; y[0] = 0."""
    W1 = np.array([[1, 0], [1, 0], [1, 0]], np.float32)
    b1 = np.array([1.0, -0.5, -0.52], np.float32)
    W2 = np.array([[0, 0, 0], [-1.0, rise, -rise]], np.float32)
    inits = [numpy_helper.from_array(W1.T.copy(), "W1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(W2.T.copy(), "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "b1"], ["p"]),
             helper.make_node("Relu", ["p"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    p = tmp_path / name
    onnx.save(model, p)
    return str(p)


QUERY = """(vnnlib-version <2.0>)
(declare-network f (declare-input X_f float32 [2]) (declare-output Y_f float32 [2]))
(declare-network g (equal-to f) (declare-input X_g float32 [2]) (declare-output Y_g float32 [2]))
(assert (and (>= X_f[0] -1.0) (<= X_f[0] 1.0) (>= X_f[1] -1.0) (<= X_f[1] 1.0)))
(assert (and (<= X_f[0] X_g[0]) (<= X_g[0] 1.0)))
(assert (== X_f[1] X_g[1]))
(assert (< Y_f[1] Y_g[1]))
"""


def _setup(tmp_path, rise):
    net = bump_net(tmp_path, rise)
    path = tmp_path / "mono.vnnlib"
    path.write_text(QUERY)
    q = read_query(str(path))
    files = check_mapping(q, {"f": net}, [])
    prop = build_property(q, allow_unbounded=True)
    product = load_product(q, files, prop.M, "cpu")
    prop.checker = solver_cli._checker(product, q, prop)
    return q, product, prop


def test_relation_rows_are_the_input_relation(tmp_path):
    _, _, prop = _setup(tmp_path, 3.0)
    (region,) = prop.regions
    (dj,) = region.disjuncts
    rows = relation_rows(prop, dj)
    assert rows is not None and rows.A.shape == (1, prop.n_inputs)      # X_f[0] - X_g[0] <= 0
    assert sorted(rows.A[0].tolist()) == sorted([1.0, -1.0] + [0.0] * (prop.n_inputs - 2))
    assert rows.b.tolist() == [0.0]


def test_pocket_found_and_checked(tmp_path):
    q, product, prop = _setup(tmp_path, 3.0)
    # a draw from the box misses the pocket: the pair's spread loses the rise
    rng = np.random.default_rng(0)
    (region,) = prop.regions
    z = region.lower + (region.upper - region.lower) * rng.random((256, prop.n_inputs))
    assert not any(prop.violated_by(p, None) for p in z[:64])
    assert try_relations(product.model, prop)
    got = prop.last_assignment
    assert holds(q, got)
    xf, xg = float(got["X_f"][0]), float(got["X_g"][0])
    assert xf <= xg and 0.49 <= xf <= 0.53 and float(got["Y_f"][1]) < float(got["Y_g"][1])


def test_monotone_network_never_sat(tmp_path):
    _, product, prop = _setup(tmp_path, 0.5)             # slope -0.5 in the pocket: monotone
    assert not try_relations(product.model, prop)
    assert prop.last_assignment is None


def test_verify_finds_the_pocket(tmp_path, capsys):
    net = bump_net(tmp_path, 3.0)
    path = tmp_path / "mono.vnnlib"
    path.write_text(QUERY)
    rc = solver_cli_main(["verify", str(path), "--network", f"f={net}", "--device", "cpu", "--quiet",
                          "--timeout", "60"])
    out = capsys.readouterr()
    assert rc == 0 and out.out.splitlines()[0] == "sat", out.err


def solver_cli_main(argv):
    from dtensor_verify.cli import main

    return main(argv)


def test_monotonic_acasxu_former_timeout(tmp_path):
    """monotonic_acasxu_2026 on ACASXU_run2a_5_4 (a timeout at 30 s before this pass): found by
    the relation pass alone, confirmed against the query's AST."""
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2026" / "monotonic_acasxu_2026"
    if not bench.exists():
        pytest.skip(f"{bench} is absent (the shared VNN-COMP 2026 benchmarks)")
    q = read_query(str(bench / "vnnlib" / "instance_0.fixed.vnnlib"))
    files = check_mapping(q, {"f": str(bench / "onnx" / "original" / "ACASXU_run2a_5_4_batch_2000.onnx")}, [])
    prop = build_property(q, allow_unbounded=True)
    product = load_product(q, files, prop.M, "cpu")
    prop.checker = solver_cli._checker(product, q, prop)
    assert try_relations(product.model, prop)
    got = prop.last_assignment
    assert holds(q, got) and float(got["X_f"][0]) <= float(got["X_g"][0])
    assert float(got["Y_f"][1]) < float(got["Y_g"][1])
