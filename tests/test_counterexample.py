"""Counterexample text, VNN-COMP result files and the `violates` check."""
from __future__ import annotations

import numpy as np
import pytest

from dtensor_verify.specs import (format_counterexample, parse_counterexample, parse_vnnlib,
                                  read_result_file, violates, write_result_file)

TRICKY = np.array([0.1, -0.30353115613746867, 1e-300, 5e-324, -0.0, 0.0, 1.7976931348623157e308,
                   2.0 / 3.0, np.nextafter(1.0, 2.0), -1234567.890123, 3.0, 1e22])


def test_format_layout():
    text = format_counterexample(np.array([[0.5, -1.0]]), np.array([2.0]))
    assert text == "(\n(X_0 0.5)\n(X_1 -1.0)\n(Y_0 2.0)\n)\n"


def test_round_trip_is_bit_exact():
    rng = np.random.default_rng(0)
    x = np.concatenate([TRICKY, rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500)])
    y = rng.standard_normal(10).astype(np.float32).astype(np.float64)
    x2, y2 = parse_counterexample(format_counterexample(x, y))
    assert x2.dtype == np.float64 and y2.dtype == np.float64
    assert x2.tobytes() == x.tobytes() and y2.tobytes() == y.tobytes()


def test_float32_inputs_are_written_exactly():
    x = np.array([0.1, 1 / 3], dtype=np.float32)
    x2, _ = parse_counterexample(format_counterexample(x, np.zeros(1)))
    assert np.array_equal(x2.astype(np.float32), x) and np.array_equal(x2, x.astype(np.float64))


@pytest.mark.parametrize("text", [
    "sat\n((X_0 1.5)\n (X_1 -2)\n (Y_0 3e-2))\n",
    "((X_0 1.5) (X_1 -2) (Y_0 0.03))",
    "  sat  \n(\n(Y_0 0.03)\n(X_1 -2.0)\n(X_0 1.5)\n)\n",       # any order
    "; produced by a tool\n(X_0 1.5) (X_1 -2) (Y_0 0.03)\n",   # bare entries
])
def test_parse_accepted_forms(text):
    x, y = parse_counterexample(text)
    np.testing.assert_array_equal(x, [1.5, -2.0])
    np.testing.assert_array_equal(y, [0.03])


@pytest.mark.parametrize("text", [
    "", "sat\n", "((X_0 1.0)", "((X_0 1.0) (Y_0))", "((X_0 abc) (Y_0 1))", "((X_0 1) (X_0 2))",
    "((X_0 1) (X_2 1) (Y_0 1))", "((Z_0 1))", "((Y_0 1))", "((X_0 1 2) (Y_0 1))", "((X_01 1))",
])
def test_parse_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_counterexample(text)


def test_result_file_round_trip(tmp_path):
    f = tmp_path / "out.txt"
    x, y = TRICKY, np.array([-1.0, 2.5e-7])
    write_result_file(f, "sat", x, y)
    assert f.read_text().startswith("sat\n(\n(X_0 0.1)\n")
    verdict, x2, y2 = read_result_file(f)
    assert verdict == "sat" and x2.tobytes() == x.tobytes() and y2.tobytes() == y.tobytes()
    for v in ("unsat", "timeout", "unknown", "error"):
        write_result_file(f, v)
        assert f.read_text() == v + "\n"
        assert read_result_file(f) == (v, None, None)
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]   # no temporary left behind


def test_result_file_errors_and_old_words(tmp_path):
    f = tmp_path / "r.txt"
    with pytest.raises(ValueError):
        write_result_file(f, "proved")
    with pytest.raises(ValueError):
        write_result_file(f, "sat")            # sat needs a counterexample
    f.write_text("maybe\n")
    with pytest.raises(ValueError, match="unknown verdict"):
        read_result_file(f)
    f.write_text("sat\n((X_0 1) (Y_0 nope))\n")
    with pytest.raises(ValueError, match="r.txt"):
        read_result_file(f)
    f.write_text("violated\n((X_0 1) (Y_0 2))\n")   # VNN-COMP 2021 wording
    verdict, x, y = read_result_file(f)
    assert verdict == "sat" and x.tolist() == [1.0] and y.tolist() == [2.0]
    f.write_text("holds\n")
    assert read_result_file(f) == ("unsat", None, None)
    f.write_text("sat\n")                      # sat without a counterexample still reads
    assert read_result_file(f) == ("sat", None, None)


PROP = parse_vnnlib("""
    (declare-const X_0 Real) (declare-const X_1 Real)
    (declare-const Y_0 Real) (declare-const Y_1 Real)
    (assert (>= X_1 0)) (assert (<= X_1 1))
    (assert (or
        (and (>= X_0 0) (<= X_0 1) (>= Y_0 Y_1) (>= Y_0 5))
        (and (>= X_0 0) (<= X_0 1) (<= Y_1 -3))
        (and (>= X_0 2) (<= X_0 3))
    ))
""")


@pytest.mark.parametrize("x, y, expected", [
    ([0.5, 0.5], [6.0, 1.0], True),          # region 0, first disjunct
    ([0.5, 0.5], [4.0, 1.0], False),         # first disjunct fails on Y_0 >= 5, second on Y_1
    ([0.5, 0.5], [0.0, -3.0], True),         # region 0, second disjunct
    ([0.5, 0.5], [4.99995, 1.0], False),     # just below Y_0 >= 5: no tolerance by default
    ([0.5, 0.5], [4.999, 1.0], False),
    ([1.00005, 0.5], [6.0, 1.0], False),     # just outside the box: no tolerance by default
    ([1.001, 0.5], [6.0, 1.0], False),       # input outside every box
    ([2.5, 0.5], [-100.0, 100.0], True),     # region without output rows: any output
    ([2.5, 1.5], [-100.0, 100.0], False),
    ([np.nan, 0.5], [6.0, 1.0], False),
    ([0.5, 0.5], [np.nan, 1.0], False),
])
def test_violates(x, y, expected):
    assert len(PROP.regions) == 2
    assert violates(PROP, np.array(x), np.array(y)) is expected


def test_violates_tolerance_and_shapes():
    assert violates(PROP, np.array([[0.5], [0.5]]), np.array([4.999, 1.0]), tol=1e-2)
    with pytest.raises(ValueError, match="3 inputs"):
        violates(PROP, np.zeros(3), np.zeros(2))


def test_violates_accepts_parsed_counterexample():
    x, y = parse_counterexample(format_counterexample(np.array([0.25, 1.0]), np.array([0.0, -4.0])))
    assert violates(PROP, x, y)
