"""The VNN-LIB reader's term limits (specs/vnnlib_formula.py): a *sum* of terms (an `or`, nn4sys
lindex_60000's 120 000 boxes) may exceed MAX_DNF_TERMS, up to what the file's size allows; a
*product* of disjunctions (an `and` of `or`s: exponential) may not. The disjuncts of an `or` are
converted to DNF as they close, so the reader never holds the s-expression of a large disjunction."""
from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import pytest

from dtensor_verify.specs import VnnlibError, parse_vnnlib, read_vnnlib
from dtensor_verify.specs import vnnlib_formula

HEAD = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
LINDEX = Path(__file__).resolve().parents[1].parent.parent / "shared" / "benchmarks" / "nn4sys_2023"


def _lindex_like(n: int) -> str:
    """`(or (and box_i (<= Y_0 lo_i)) (and box_i (>= Y_0 hi_i)) ...)`: 2 n terms on n boxes."""
    terms = []
    for i in range(n):
        box = f"(>= X_0 {i / n!r}) (<= X_0 {(i + 0.5) / n!r})"
        terms.append(f"  (and {box} (<= Y_0 {i - 0.01!r}))\n  (and {box} (>= Y_0 {i + 0.01!r}))\n")
    return HEAD + "(assert (or\n" + "".join(terms) + "))\n"


def test_a_sum_beyond_the_product_limit_is_read(monkeypatch):
    monkeypatch.setattr(vnnlib_formula, "MAX_DNF_TERMS", 50)
    prop = parse_vnnlib(_lindex_like(100))          # 200 terms > 50
    assert len(prop.regions) == 100
    for i, r in enumerate(prop.regions):
        assert (float(r.lower[0]), float(r.upper[0])) == (i / 100, (i + 0.5) / 100)
        assert [(d.C.tolist(), d.d.tolist()) for d in r.disjuncts] == [([[1.0]], [i - 0.01]), ([[-1.0]], [-(i + 0.01)])]


def test_a_product_beyond_the_limit_is_still_refused(monkeypatch):
    monkeypatch.setattr(vnnlib_formula, "MAX_DNF_TERMS", 50)
    ors = "".join(f"(assert (or (<= Y_0 {i}) (<= Y_0 {i + 0.5})))\n" for i in range(6))   # 2^6 = 64 > 50
    text = HEAD + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n" + ors
    with pytest.raises(VnnlibError, match=r"^p\.vnnlib:\d+: formula has more than 50 disjunctive-normal-form terms"):
        parse_vnnlib(text, path="p.vnnlib")
    five = parse_vnnlib(HEAD + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n" + "".join(ors.splitlines(True)[:5]))
    assert len(five.regions[0].disjuncts) == 32


def test_a_sum_is_limited_by_the_file(monkeypatch):
    """An `or` cannot give more terms than the file has comparisons: the limit for sums is the
    file's count of '(' (here forced below it by a nested or that repeats one long disjunction)."""
    monkeypatch.setattr(vnnlib_formula, "term_limit", lambda text: 150)
    monkeypatch.setattr("dtensor_verify.specs.vnnlib.term_limit", lambda text: 150)
    with pytest.raises(VnnlibError, match="more than 150 disjunctive-normal-form terms"):
        parse_vnnlib(_lindex_like(100))


def test_nested_ors_and_ands_read_as_before():
    """Eager conversion of an `or`'s disjuncts keeps the meaning: (a or (b and (c or d)))."""
    text = (HEAD + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
            "(assert (or (<= Y_0 1) (and (<= Y_0 5) (or (>= Y_0 2) (>= Y_0 3)))))\n")
    rows = [(d.C.tolist(), d.d.tolist()) for d in parse_vnnlib(text).regions[0].disjuncts]
    assert rows == [([[1.0]], [1.0]), ([[1.0], [-1.0]], [5.0, -2.0]), ([[1.0], [-1.0]], [5.0, -3.0])]
    with pytest.raises(VnnlibError, match=r"^<string>:4: unknown operator 'foo'"):
        parse_vnnlib(HEAD + "(assert (>= X_0 0))\n(assert (or (foo Y_0) (<= Y_0 1)))\n")


def test_memory_of_a_large_disjunction_grows_linearly():
    """Peak traced memory per term of a flat `or` stays about the same from 1 000 to 4 000 terms
    (no quadratic copy), and well below the text's s-expression tree per term."""
    per_term = []
    for n in (500, 2000):
        text = _lindex_like(n)
        tracemalloc.start()
        prop = parse_vnnlib(text)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(prop.regions) == n
        per_term.append(peak / (2 * n))
    assert per_term[1] < 1.5 * per_term[0], per_term
    assert per_term[1] < 4000, per_term             # bytes per term, the Property included


@pytest.mark.slow
def test_nn4sys_lindex_60000_is_read():
    f = LINDEX / "vnnlib" / "lindex_60000.vnnlib.gz"
    if not f.exists():
        pytest.fail(f"{f}: the shared benchmarks are missing")
    prop = read_vnnlib(f, n_inputs=1, n_outputs=1)
    assert len(prop.regions) == 60000
    assert sum(len(r.disjuncts) for r in prop.regions) == 120000
    text = gzip.decompress(f.read_bytes()).decode()
    assert text.count("(and") == 120000
