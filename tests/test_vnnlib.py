"""VNN-LIB 1.0 reader: the shared VNN-COMP benchmark files, hand-written edge cases, errors."""
from __future__ import annotations

import gzip
import re
import time
from pathlib import Path

import numpy as np
import pytest

from dtensor_verify.specs import Property, VnnlibError, parse_vnnlib, read_vnnlib

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


def bench_dir(*parts: str) -> Path:
    """A benchmark folder; missing data is a broken checkout, so fail rather than skip."""
    d = BENCH.joinpath(*parts)
    if not d.is_dir():
        pytest.fail(f"benchmark folder {d} is missing (expected the shared VNN-COMP benchmarks "
                    f"next to the repository, at {BENCH})")
    return d


BENCH_SETS = [("mnist_fc/vnnlib", "*.vnnlib.gz", 30), ("oval21/vnnlib", "*.gz", 30),
              ("sri_resnet_a/vnnlib", "*.gz", 72), ("test", "*.vnnlib", 4)]


def benchmark_files(sub: str, pattern: str, minimum: int) -> list[Path]:
    found = sorted(bench_dir(sub).glob(pattern))
    assert len(found) >= minimum, f"{BENCH / sub}: expected >= {minimum} files, got {len(found)}"
    return found


def read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()


def naive_box(text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An independent, deliberately simple reading of single-line X bounds, for cross-checks."""
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    for op, i, v in re.findall(r"\(\s*(<=|>=)\s+X_(\d+)\s+(\S+?)\s*\)", text):
        i, v = int(i), float(v)
        if op == "<=":
            hi[i] = min(hi[i], v)
        else:
            lo[i] = max(lo[i], v)
    return lo, hi


def one_region(prop: Property):
    assert len(prop.regions) == 1
    return prop.regions[0]


def rows(disjunct) -> list[tuple[list[float], float]]:
    return [(list(c), float(d)) for c, d in zip(disjunct.C, disjunct.d)]


# ------------------------------------------------------------------------------------------
# Real benchmark files
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bench_set", BENCH_SETS, ids=[b[0].split("/")[0] for b in BENCH_SETS])
def test_every_benchmark_file_parses_and_matches_a_naive_reading(bench_set):
    for f in benchmark_files(*bench_set):
        prop = read_vnnlib(f)
        text = read_text(f)
        assert prop.n_inputs == len(re.findall(r"declare-const\s+X_", text)), f
        assert prop.n_outputs == len(re.findall(r"declare-const\s+Y_", text)), f
        assert prop.path == str(f)
        assert prop.regions, f
        for region in prop.regions:
            assert region.lower.dtype == np.float64 and region.lower.shape == (prop.n_inputs,)
            assert np.all(np.isfinite(region.lower)) and np.all(np.isfinite(region.upper))
            assert np.all(region.lower <= region.upper)
            for dj in region.disjuncts:
                assert dj.C.shape == (dj.d.shape[0], prop.n_outputs) and dj.C.dtype == np.float64
        if f.suffix == ".gz":   # image properties: one box, bounds bit-identical to the text
            lo, hi = naive_box(text, prop.n_inputs)
            r = one_region(prop)
            np.testing.assert_array_equal(r.lower, lo, err_msg=str(f))
            np.testing.assert_array_equal(r.upper, hi, err_msg=str(f))


def test_mnist_prop_0_structure_matches_file():
    f = bench_dir("mnist_fc", "vnnlib") / "prop_0_0.03.vnnlib.gz"
    prop = read_vnnlib(f)
    assert (prop.n_inputs, prop.n_outputs) == (784, 10)
    region = one_region(prop)
    # The file says (or (and (>= Y_j Y_label)) ...): unsafe iff Y_label - Y_j <= 0 for some j.
    pairs = [(int(j), int(lab)) for j, lab in
             re.findall(r"\(and \(>= Y_(\d+) Y_(\d+)\)\)", read_text(f))]
    assert len(pairs) == 9
    assert len(region.disjuncts) == 9
    for dj, (j, label) in zip(region.disjuncts, pairs):
        expected = np.zeros(10)
        expected[label], expected[j] = 1.0, -1.0
        assert dj.C.shape == (1, 10)
        np.testing.assert_array_equal(dj.C[0], expected)
        np.testing.assert_array_equal(dj.d, [0.0])


def test_mnist_path_without_gz_falls_back_to_gz():
    # instances.csv names "vnnlib/prop_0_0.03.vnnlib" while the folder ships the .gz.
    f = bench_dir("mnist_fc", "vnnlib") / "prop_0_0.03.vnnlib"
    prop = read_vnnlib(f)
    assert prop.n_inputs == 784 and prop.path == str(f) + ".gz"


def test_cifar_parses_fast():
    files = sorted(bench_dir("oval21", "vnnlib").glob("*.gz"))
    assert files, "no oval21 properties"
    best = np.inf
    for _ in range(3):   # best of three: robust to a busy machine under xdist
        t0 = time.perf_counter()
        prop = read_vnnlib(files[0])
        best = min(best, time.perf_counter() - t0)
    assert prop.n_inputs == 3072 and prop.n_outputs == 10
    assert len(one_region(prop).disjuncts) == 9
    assert best < 0.5, f"parsing {files[0].name} took {best:.3f} s"


def test_test_prop_one_region_one_disjunct_four_rows():
    prop = read_vnnlib(bench_dir("test") / "test_prop.vnnlib")
    region = one_region(prop)
    assert (prop.n_inputs, prop.n_outputs) == (5, 5)
    assert region.lower[0] == -0.30353115613746867 and region.upper[0] == -0.29855281193475053
    assert len(region.disjuncts) == 1
    dj = region.disjuncts[0]
    assert dj.C.shape == (4, 5)
    for j in range(1, 5):   # (<= Y_0 Y_j)  ->  y_0 - y_j <= 0
        expected = np.zeros(5)
        expected[0], expected[j] = 1.0, -1.0
        np.testing.assert_array_equal(dj.C[j - 1], expected)
    np.testing.assert_array_equal(dj.d, np.zeros(4))


def test_n_inputs_outputs_arguments():
    f = bench_dir("test") / "test_prop.vnnlib"
    assert read_vnnlib(f, n_inputs=5, n_outputs=5).n_inputs == 5
    with pytest.raises(VnnlibError, match=r"test_prop\.vnnlib:\d+: file declares 5 inputs"):
        read_vnnlib(f, n_inputs=6)
    with pytest.raises(VnnlibError, match=r"test_prop\.vnnlib:\d+: file declares 5 outputs"):
        read_vnnlib(f, n_outputs=4)


# ------------------------------------------------------------------------------------------
# Hand-written properties
# ------------------------------------------------------------------------------------------
HEAD2 = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
"""
BOX2 = """(assert (>= X_0 0))
(assert (<= X_0 1))
(assert (>= X_1 -1))
(assert (<= X_1 2))
"""


def test_le_ge_lt_gt_and_y_to_constant():
    prop = parse_vnnlib(HEAD2 + BOX2 + """
        (assert (<= Y_0 3))
        (assert (>= Y_1 -2.5))
        (assert (< Y_2 4))
        (assert (> Y_2 1))
        (assert (<= 7 Y_0))
    """)
    region = one_region(prop)
    np.testing.assert_array_equal(region.lower, [0, -1])
    np.testing.assert_array_equal(region.upper, [1, 2])
    (dj,) = region.disjuncts
    assert rows(dj) == [([1, 0, 0], 3.0), ([0, -1, 0], 2.5), ([0, 0, 1], 4.0),
                        ([0, 0, -1], -1.0), ([-1, 0, 0], -7.0)]


def test_input_bounds_in_all_operator_forms_and_tightest_wins():
    prop = parse_vnnlib("""
        (declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real)
        (assert (< X_0 5)) (assert (> X_0 -5))
        (assert (<= X_0 4)) (assert (>= -3 X_1)) (assert (<= -6 X_1))
        (assert (<= (* 2 X_0) 6))          ; X_0 <= 3, tighter than 4
        (assert (>= (- X_1) 4.5))          ; X_1 <= -4.5
        (assert (<= Y_0 0))
    """)
    region = one_region(prop)
    np.testing.assert_array_equal(region.lower, [-5, -6])
    np.testing.assert_array_equal(region.upper, [3, -4.5])


def test_y_to_y_and_linear_terms():
    prop = parse_vnnlib(HEAD2 + BOX2 + """
        (assert (>= Y_0 Y_1))
        (assert (<= (+ Y_0 (* 2 Y_1) -1) (- Y_2 3)))
        (assert (<= (- Y_0 Y_1 Y_2) (* -0.5 Y_0 2)))
        (assert (>= (* Y_2 3) (/ Y_1 4)))
        (assert (<= (- (- Y_0)) 1))
    """)
    (dj,) = one_region(prop).disjuncts
    assert rows(dj) == [
        ([-1, 1, 0], 0.0),          # Y_1 - Y_0 <= 0
        ([1, 2, -1], -2.0),         # Y_0 + 2 Y_1 - 1 - Y_2 + 3 <= 0
        ([2, -1, -1], 0.0),         # Y_0 - Y_1 - Y_2 + Y_0 <= 0
        ([0, 0.25, -3], 0.0),       # Y_1 / 4 - 3 Y_2 <= 0
        ([1, 0, 0], 1.0),
    ]
    assert not np.signbit(dj.d[dj.d == 0]).any()   # no -0.0 in d


def test_classification_or_gives_one_region_many_disjuncts():
    prop = parse_vnnlib(HEAD2 + BOX2 + """
        (assert (or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2))))
    """)
    region = one_region(prop)
    assert [rows(d) for d in region.disjuncts] == [[([-1, 0, 1], 0.0)], [([0, -1, 1], 0.0)]]


def test_nested_or_and_dnf():
    # (A or (B and (C or D))) and (E or F)  =  AE, AF, BCE, BCF, BDE, BDF
    prop = parse_vnnlib(HEAD2 + BOX2 + """
        (assert (or (<= Y_0 1) (and (<= Y_0 2) (or (<= Y_0 3) (<= Y_0 4)))))
        (assert (or (<= Y_1 5) (and (<= Y_1 6))))
    """)
    region = one_region(prop)
    got = [[(int(np.flatnonzero(c)[0]), float(d)) for c, d in zip(dj.C, dj.d)]
           for dj in region.disjuncts]
    assert got == [[(0, 1.0), (1, 5.0)], [(0, 1.0), (1, 6.0)],
                   [(0, 2.0), (0, 3.0), (1, 5.0)], [(0, 2.0), (0, 3.0), (1, 6.0)],
                   [(0, 2.0), (0, 4.0), (1, 5.0)], [(0, 2.0), (0, 4.0), (1, 6.0)]]


def test_input_disjunction_gives_several_regions_acasxu_style():
    prop = parse_vnnlib("""
        (declare-const X_0 Real) (declare-const X_1 Real)
        (declare-const Y_0 Real) (declare-const Y_1 Real)
        (assert (>= X_1 0)) (assert (<= X_1 1))
        (assert (or
            (and (>= X_0 0) (<= X_0 1) (<= Y_0 Y_1))
            (and (>= X_0 1) (<= X_0 2) (>= Y_0 10))
            (and (>= X_0 0) (<= X_0 1) (>= Y_1 3))
            (and (>= X_0 -1) (<= X_0 0.5) (>= X_1 0.25))
        ))
    """)
    assert len(prop.regions) == 3
    r0, r1, r2 = prop.regions
    np.testing.assert_array_equal(np.c_[r0.lower, r0.upper], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(np.c_[r1.lower, r1.upper], [[1, 2], [0, 1]])
    np.testing.assert_array_equal(np.c_[r2.lower, r2.upper], [[-1, 0.5], [0.25, 1]])
    # Identical boxes merged: first region has two disjuncts.
    assert [rows(d) for d in r0.disjuncts] == [[([1, -1], 0.0)], [([0, -1], -3.0)]]
    assert [rows(d) for d in r1.disjuncts] == [[([-1, 0], -10.0)]]
    # No output constraint: every output is unsafe, a disjunct with zero rows.
    assert r2.disjuncts[0].C.shape == (0, 2) and r2.disjuncts[0].d.shape == (0,)


def test_term_bound_looser_than_common_box_merges_with_it():
    prop = parse_vnnlib(HEAD2 + BOX2 + """
        (assert (or (and (<= X_0 5) (<= Y_0 1)) (<= Y_1 2)))
    """)
    region = one_region(prop)
    np.testing.assert_array_equal(region.upper, [1, 2])
    assert len(region.disjuncts) == 2


def test_bounds_inside_one_and_and_nested_box():
    prop = parse_vnnlib("""
        (declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
        (assert (and (and (>= X_0 -1) (<= X_0 1)) (or (>= Y_0 Y_1) (>= Y_1 Y_0))))
    """)
    region = one_region(prop)
    assert (region.lower[0], region.upper[0]) == (-1, 1)
    assert len(region.disjuncts) == 2


def test_comments_everywhere_and_odd_whitespace():
    text = """; header comment
(declare-const ; comment inside
   X_0 Real)   ; trailing
(declare-const Y_0 Real);no space
(assert ; here
  (<= X_0 ; and here
      1)) (assert (>=
X_0 -1))
(assert(<=\tY_0\t0))\r
; (assert (<= Y_0 99))  commented out
"""
    region = one_region(parse_vnnlib(text))
    assert (region.lower[0], region.upper[0]) == (-1, 1)
    assert [rows(d) for d in region.disjuncts] == [[([1.0], 0.0)]]


@pytest.mark.parametrize("literal, value", [
    ("1e-3", 1e-3), ("-2.5E+02", -250.0), ("+4", 4.0), ("3.", 3.0), (".5", 0.5),
    ("-.25e1", -2.5), ("0.1", 0.1), ("7", 7.0), ("-0.30353115613746867", -0.30353115613746867),
    ("1E5", 1e5),
])
def test_scientific_notation_fast_and_slow_paths(literal, value):
    fast = parse_vnnlib(f"(declare-const X_0 Real)(declare-const Y_0 Real)"
                        f"(assert (<= X_0 {literal}))(assert (>= X_0 -1e9))"
                        f"(assert (<= Y_0 {literal}))")
    slow = parse_vnnlib(f"(declare-const X_0 Real)(declare-const Y_0 Real)"
                        f"(assert (and (<= X_0 {literal}) (<= Y_0 {literal})))"
                        f"(assert (>= X_0 -1e9))")
    for prop in (fast, slow):
        region = one_region(prop)
        assert region.upper[0] == value
        assert region.disjuncts[0].d[0] == value


def test_constant_atoms_true_and_false():
    base = "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
    prop = parse_vnnlib(base + "(assert (or (and (<= 2 1) (<= Y_0 5)) (and (<= 1 2) (<= Y_0 6))))")
    assert [rows(d) for d in one_region(prop).disjuncts] == [[([1.0], 6.0)]]
    # Every term is false: the property can never be violated.
    assert parse_vnnlib(base + "(assert (<= 3 1))").regions == []


def test_ignored_smtlib_commands():
    prop = parse_vnnlib("(set-logic QF_LRA)(declare-const X_0 Real)(declare-const Y_0 Real)"
                        "(assert (<= X_0 1))(assert (>= X_0 0))(check-sat)(get-model)")
    assert one_region(prop).disjuncts[0].C.shape == (0, 1)


def test_gzip_detected_by_magic_bytes(tmp_path):
    text = HEAD2 + BOX2 + "(assert (<= Y_0 Y_1))\n"
    plain = tmp_path / "p.vnnlib"
    plain.write_text(text)
    disguised = tmp_path / "q.vnnlib"          # gzip content, no .gz suffix
    disguised.write_bytes(gzip.compress(text.encode()))
    gz = tmp_path / "r.vnnlib.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    for f in (plain, disguised, gz):
        prop = read_vnnlib(f)
        assert prop.path == str(f)
        assert rows(one_region(prop).disjuncts[0]) == [([1, -1, 0], 0.0)]


def test_dnf_blowup_is_refused():
    ors = "".join(f"(assert (or (<= Y_0 {i}) (<= Y_0 {i + 0.5})))\n" for i in range(20))
    with pytest.raises(VnnlibError, match=r"^big\.vnnlib:2[0-9]: .*disjunctive-normal-form terms"):
        parse_vnnlib(HEAD2 + BOX2 + ors, path="big.vnnlib")


# ------------------------------------------------------------------------------------------
# Malformed files: each error names the file and the line
# ------------------------------------------------------------------------------------------
DECL = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"      # lines 1-2
BOX = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"                  # lines 3-4


@pytest.mark.parametrize("text, line, message", [
    ("", 1, "empty file"),
    ("; only a comment\n\n", 1, "empty file"),
    (DECL + BOX + "(assert (<= Y_0 1)\n", 5, "unbalanced '\\('"),
    (DECL + BOX + "(assert (<= Y_0 1)))\n", 5, "unbalanced '\\)'"),
    (DECL + "(assert (>= X_0 0)\n(assert (<= X_0 1))\n", 4, "inside another expression"),
    (DECL + BOX + "(assert (<= Z_3 1))\n", 5, "unknown variable Z_3"),
    (DECL + BOX + "(assert (<= Y_1 1))\n", 5, "unknown variable Y_1"),
    (DECL + "(assert (<= X_1 1))\n", 3, "unknown variable X_1"),
    (DECL + BOX + "(assert (<= Y_0 1.2.3))\n", 5, "bad number '1.2.3'"),
    (DECL + BOX + "(assert (<= X_0 1e))\n", 5, "bad number '1e'"),
    (DECL + BOX + "(assert (<= Y_0 nan))\n", 5, "unknown variable nan"),
    (DECL + BOX + "(assert (=> Y_0 1))\n", 5, "unknown operator '=>'"),
    (DECL + BOX + "(assert (not (<= Y_0 1)))\n", 5, "unknown operator 'not'"),
    (DECL + BOX + "(assert (<= (sin Y_0) 1))\n", 5, "unknown operator 'sin'"),
    (DECL + BOX + "(assert (<= (* Y_0 Y_0) 1))\n", 5, "not linear"),
    (DECL + BOX + "(assert (<= Y_0))\n", 5, "at least two arguments"),
    (DECL + BOX + "(assert (<= Y_0 X_0))\n", 5, "mixes input \\(X\\) and output \\(Y\\)"),
    ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
     "(assert (<= (+ X_0 X_1) 1))\n", 4, "several input variables"),
    (DECL + BOX + "(assert Y_0)\n", 5, "expected a constraint"),
    (DECL + BOX + "(foo Y_0)\n", 5, "unknown command 'foo'"),
    (DECL + BOX + "X_0\n", 5, "outside parentheses"),
    (DECL + "(declare-const X_0 Real)\n", 3, "declared twice"),
    (DECL + "(declare-const X_1 Int)\n", 3, "unsupported sort 'Int'"),
    (DECL + "(declare-const input Real)\n", 3, "unsupported variable name"),
    ("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n",
     2, "X_1 is not declared"),
    ("(declare-const Y_0 Real)\n(assert (<= Y_0 1))\n", 1, "no input variables"),
    (DECL + "(assert (>= X_0 0))\n", 1, "X_0 has no finite upper bound"),
    ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
     "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= X_1 1))\n",
     2, "X_1 has no finite lower bound"),
    (DECL + "(assert (>= X_0 2))\n(assert (<= X_0 1))\n", 4, "lower bound 2.0 > upper bound 1.0"),
    (DECL + BOX + "(assert " + "(and " * 300 + "(<= Y_0 1)" + ")" * 301 + "\n", 5, "nested deeper"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, line, message):
    f = tmp_path / "bad.vnnlib"
    f.write_text(text)
    with pytest.raises(VnnlibError, match=rf"bad\.vnnlib:{line}: .*{message}"):
        read_vnnlib(f)
    with pytest.raises(VnnlibError, match=rf"^prop\.vnnlib:{line}: .*{message}"):
        parse_vnnlib(text, path="prop.vnnlib")


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(VnnlibError, match="nope.vnnlib: cannot read"):
        read_vnnlib(tmp_path / "nope.vnnlib")
    f = tmp_path / "latin.vnnlib"
    f.write_bytes(DECL.encode() + b"; caf\xe9\n")
    with pytest.raises(VnnlibError, match=r"latin\.vnnlib:3: not UTF-8"):
        read_vnnlib(f)
    g = tmp_path / "broken.vnnlib.gz"
    g.write_bytes(gzip.compress(DECL.encode())[:-6])
    with pytest.raises(VnnlibError, match=r"broken\.vnnlib\.gz:1: corrupt gzip"):
        read_vnnlib(g)


def test_error_is_value_error_and_input_spec_error():
    from dtensor_verify.errors import InputSpecError, VerifierError
    with pytest.raises(ValueError):
        parse_vnnlib("")
    assert issubclass(VnnlibError, InputSpecError) and issubclass(VnnlibError, VerifierError)
