"""The reader's shortcut for simple comparisons (`specs/vnnlib_simple.py`) gives the property the
general path gives, constraint for constraint and error for error."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from dtensor_verify.specs import vnnlib_simple
from dtensor_verify.specs.vnnlib import VnnlibError, parse_vnnlib

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
DECL = "".join(f"(declare-const X_{i} Real)\n" for i in range(3)) + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
TEXTS = [
    # mscn-like: an `or` of boxes, each with one output comparison; zeros of both signs
    "(assert (or (and (>= X_0 0.0) (<= X_0 0.0) (>= X_1 -0.0) (<= X_1 0.5) (>= X_2 1) (<= X_2 1) (<= Y_0 0.25))"
    " (and (>= X_0 0.0) (<= X_0 0.0) (>= X_1 -0.0) (<= X_1 0.5) (>= X_2 1) (<= X_2 1) (>= Y_0 0.75))))",
    # strict comparisons, scientific numbers, an `and` of several outputs, odd spacing
    "(assert (and ( >  X_0 -1e-3 ) (< X_0 2.5E1) (>= X_1 .5) (<= X_1 +1.) (>= X_2 0) (<= X_2 0)"
    " (or (< Y_0 Y_1) (> Y_1 3) (<= Y_0 -2))))",
    # top-level fast asserts and a comparison directly under `assert` (general path)
    "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))(assert (<= X_2 1))"
    "(assert (>= X_2 0))(assert (<= Y_0 0.1))",
    # `or` of input comparisons (a disjunction of half-spaces) inside an `and`
    "(assert (and (>= X_0 0) (<= X_0 1) (or (<= X_1 0.2) (>= X_1 0.8)) (>= X_1 0) (<= X_1 1) (>= X_2 0)"
    " (<= X_2 1) (>= Y_1 5)))",
    # a constant-false bound (empty box)
    "(assert (and (>= X_0 2) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= X_2 0) (<= X_2 1) (<= Y_0 0)))",
]
BAD = [
    "(assert (and (>= X_0 0) (<= X_7 1) (<= Y_0 0)))",                    # undeclared name
    "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= X_2 0) (<= X_2 1) (<= Y_0 0))",  # unbalanced
    "(<= X_0 1)",                                                           # outside an assert
]


def _parse(text, enabled, monkeypatch):
    monkeypatch.setattr(vnnlib_simple, "ENABLED", enabled)
    try:
        return parse_vnnlib(text, "t.vnnlib", 3, 2)
    except VnnlibError as exc:
        return str(exc)


def _same(a, b):
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    assert len(a.regions) == len(b.regions)
    for ra, rb in zip(a.regions, b.regions):
        for f in ("lower", "upper", "lower_strict", "upper_strict"):
            x, y = getattr(ra, f), getattr(rb, f)
            assert (x is None) == (y is None) and (x is None or np.array_equal(x, y)), f
        assert np.array_equal(np.signbit(ra.lower), np.signbit(rb.lower))
        assert np.array_equal(np.signbit(ra.upper), np.signbit(rb.upper))
        assert len(ra.disjuncts) == len(rb.disjuncts)
        for da, db in zip(ra.disjuncts, rb.disjuncts):
            assert np.array_equal(da.C, db.C) and np.array_equal(da.d, db.d)
            assert np.array_equal(da.strict_rows(), db.strict_rows())


@pytest.mark.parametrize("body", TEXTS + BAD)
def test_shortcut_gives_the_general_paths_property(body, monkeypatch):
    text = DECL + body
    _same(_parse(text, True, monkeypatch), _parse(text, False, monkeypatch))


def test_shortcut_errors_name_the_same_line(monkeypatch):
    text = DECL + BAD[0]
    fast, slow = _parse(text, True, monkeypatch), _parse(text, False, monkeypatch)
    assert isinstance(fast, str) and fast == slow and "X_7" in fast


@pytest.mark.skipif(not (BENCH / "nn4sys_2023").is_dir(), reason="no shared benchmarks")
def test_shortcut_on_an_mscn_property(monkeypatch):
    text = gzip.open(BENCH / "nn4sys_2023/vnnlib/cardinality_0_1_128.vnnlib.gz", "rt").read()
    props = []
    for enabled in (True, False):
        monkeypatch.setattr(vnnlib_simple, "ENABLED", enabled)
        props.append(parse_vnnlib(text, "c.vnnlib", 154, 1))
    _same(*props)
    assert len(props[0].regions) == 1 and len(props[0].regions[0].disjuncts) == 2
