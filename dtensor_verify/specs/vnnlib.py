"""A fast reader for VNN-LIB 1.0 properties (the dialect used by VNN-COMP 2021-2024).

A property file declares the network inputs `X_i` and outputs `Y_j` as `Real` constants and
asserts constraints on them; the asserted formula describes the *unsafe* set. The reader turns it
into a `Property`: a list of input boxes (`Region`), each with a disjunction of output polytopes
(`OutputDisjunct`, rows `C @ y <= d`). The property is violated ("sat") iff for some region some
`x` in its box gives an output satisfying one of its disjuncts.

How a file is turned into regions:

* Top-level asserts are conjoined; the whole conjunction is put in disjunctive normal form.
* Atoms over one input variable are box bounds; atoms over outputs become rows `c . y <= d`;
  `(= a b)` is the two rows `a <= b`, `b <= a`. Numbers are read as the nearest float64.
* Strictness is kept on the side: `<` / `>` rows and bounds are bounded as `<=` / `>=` (the
  closure: a sound over-approximation of the unsafe set, fine for proving it empty), and marked
  strict (`OutputDisjunct.strict`, `Region.lower_strict` / `upper_strict`) so that `violates`
  checks a counterexample against the property as written. A comparison of constants is decided
  exactly: `(< 1 1)` and `(> Y_0 Y_0)` are false, so their term is dropped.
* Bounds shared by every DNF term form the common box; each term's own input bounds intersect it.
  Terms with identical boxes share one `Region` (one disjunct per term), so a classification
  property with one box and `(or (and (>= Y_0 Y_4)) ...)` gives 1 region with 9 disjuncts.
* A term with no output atom means "every output is unsafe": a disjunct with zero rows.

Speed matters (CIFAR properties have 6144 asserts, and VNN-COMP counts parse time), so the text
is tokenised by one regular expression, plain `(assert (<= X_i c))` / `(declare-const ...)`
forms are matched whole by that same expression, and the s-expression parser uses an explicit
stack. Nesting is capped at `MAX_DEPTH`, so the recursive formula walk cannot overflow.
"""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputSpecError, bounded_message, excerpt
from .spec_types import OutputDisjunct, Property, Region
from .vnnlib_simple import simple_comparison
from .vnnlib_tokens import T_CLOSE, T_COMMENT, T_DECLARE, T_FAST_ASSERT, T_OPEN, T_SIMPLE, TOKEN
from .vnnlib_formula import (_X, _Y, MAX_DNF_TERMS, FormulaMixin, _Atom, _Constraint, _Converted, _Dnf,
                             _List, _name, converts_eagerly, term_limit)

__all__ = ["VnnlibError", "OutputDisjunct", "Region", "Property", "read_vnnlib", "parse_vnnlib",
           "MAX_DNF_TERMS", "MAX_DEPTH"]

MAX_DEPTH = 200           # nesting limit: keeps the recursive formula walk far from the stack limit


class VnnlibError(InputSpecError, ValueError):
    """A malformed or unsupported VNN-LIB file; the message starts with `file:line:`.

    It is an `InputSpecError` (so the CLI reports it as an `error` verdict) and a `ValueError`.
    """


# ---------------------------------------------------------------------------------------------
# Tokeniser: vnnlib_tokens.py (one regular expression); names and ignored commands here
# ---------------------------------------------------------------------------------------------
_VAR_NAME = re.compile(r"([XY])_(0|[1-9]\d*)\Z")

_IGNORED_COMMANDS = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model",
                               "exit"})


class _Parser(FormulaMixin):
    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.vars: dict[str, tuple[int, int]] = {}          # name -> (kind, index)
        self.decl_pos: dict[tuple[int, int], int] = {}
        # Common box from fast-path asserts and from atoms shared by every DNF term.
        self.lo: dict[int, float] = {}
        self.hi: dict[int, float] = {}
        self.lo_pos: dict[int, int] = {}
        self.hi_pos: dict[int, int] = {}
        self.lo_strict: dict[int, bool] = {}      # only strict bounds are entered
        self.hi_strict: dict[int, bool] = {}
        self.dnfs: list[tuple[_Dnf, int]] = []              # (DNF, position) per non-fast assert
        self.n_commands = 0
        self.max_terms = term_limit(text)

    # -- errors ---------------------------------------------------------------------------------
    def error(self, pos: int, msg: str) -> VnnlibError:
        line = self.text.count("\n", 0, max(pos, 0)) + 1
        return VnnlibError(f"{self.path}:{line}: {bounded_message(msg)}")

    # -- tokenising and s-expressions -------------------------------------------------------------
    def run(self, n_inputs: int | None, n_outputs: int | None) -> Property:
        stack: list[_List] = []
        for m in TOKEN.finditer(self.text):
            kind = m.lastindex
            if kind == T_COMMENT:
                continue
            if kind == T_OPEN:
                if len(stack) >= MAX_DEPTH:
                    raise self.error(m.start(), f"expressions nested deeper than {MAX_DEPTH}")
                stack.append(_List(m.start()))
            elif kind == T_CLOSE:
                if not stack:
                    raise self.error(m.start(), "unbalanced ')'")
                self.closed(stack.pop(), stack)
            elif kind == T_SIMPLE:
                if len(stack) >= MAX_DEPTH:
                    raise self.error(m.start(), f"expressions nested deeper than {MAX_DEPTH}")
                simple_comparison(self, m, stack, (9, 10, 11), lambda node: self.closed(node, stack))
            elif kind == T_FAST_ASSERT:
                if stack:
                    raise self.error(m.start(), "'assert' inside another expression "
                                                "(a ')' is missing before it?)")
                self.n_commands += 1
                self.fast_bound(m.group(2), m.group(3), m.group(4), m.start())
            elif kind == T_DECLARE:
                if stack:
                    raise self.error(m.start(), "'declare-const' inside another expression "
                                                "(a ')' is missing before it?)")
                self.n_commands += 1
                self.declare(m.group(6), m.group(7), m.start(6), m.start(7))
            else:
                if not stack:
                    raise self.error(m.start(), f"unexpected '{excerpt(m.group())}' outside parentheses")
                stack[-1].items.append(_Atom(m.group(), m.start()))
        if stack:
            raise self.error(stack[0].pos, "unbalanced '(': missing ')' before the end of file")
        if self.n_commands == 0:
            raise self.error(0, "empty file: no declarations or assertions")
        return self.build(n_inputs, n_outputs)

    def closed(self, node: _List, stack: list) -> None:
        """A list just closed: a disjunct of an `or` converted now, else kept for its parent, or
        at the top a command."""
        if stack and converts_eagerly(stack[-1]):
            stack[-1].items.append(_Converted(self.formula(node), node.pos))
        elif stack:
            stack[-1].items.append(node)
        else:
            self.command(node)

    def command(self, node: _List) -> None:
        items = node.items
        if not items or not isinstance(items[0], _Atom):
            raise self.error(node.pos, "expected a command such as 'declare-const' or 'assert'")
        head = items[0].text
        self.n_commands += 1
        if head == "assert":
            if len(items) != 2:
                raise self.error(node.pos, f"'assert' takes one formula, got {len(items) - 1}")
            self.dnfs.append((self.formula(items[1]), node.pos))
        elif head == "declare-const":
            if len(items) != 3 or not all(isinstance(a, _Atom) for a in items[1:]):
                raise self.error(node.pos, "expected (declare-const NAME Real)")
            self.declare(items[1].text, items[2].text, items[1].pos, items[2].pos)
        elif head in _IGNORED_COMMANDS:
            pass
        else:
            raise self.error(items[0].pos, f"unknown command '{head}'")

    # -- declarations and fast path ---------------------------------------------------------------
    def declare(self, name: str, sort: str, pos: int, sort_pos: int) -> None:
        if sort != "Real":
            raise self.error(sort_pos, f"unsupported sort '{sort}' for {name} (expected Real)")
        m = _VAR_NAME.match(name)
        if m is None:
            raise self.error(pos, f"unsupported variable name '{name}' (expected X_<i> or Y_<j>)")
        if name in self.vars:
            raise self.error(pos, f"variable {name} declared twice")
        key = (_X if m.group(1) == "X" else _Y, int(m.group(2)))
        self.vars[name] = key
        self.decl_pos[key] = pos

    def fast_bound(self, op: str, var: str, num: str, pos: int) -> None:
        key = self.vars.get(var)
        if key is None:
            raise self.error(pos, f"unknown variable {var}")
        self.add_bound(key[1], op[0] == "<", float(num), pos, len(op) == 1)

    def add_bound(self, idx: int, is_upper: bool, value: float, pos: int, strict: bool = False) -> None:
        # Repeated bounds intersect: keep the tightest (at equal values, the strict one) and
        # remember where it came from.
        bound, where, strict_of = (self.hi, self.hi_pos, self.hi_strict) if is_upper else \
            (self.lo, self.lo_pos, self.lo_strict)
        old = bound.get(idx)
        tighter = old is None or (value < old if is_upper else value > old)
        if tighter or (value == old and strict and not strict_of.get(idx, False)):
            bound[idx], where[idx] = value, pos
            if strict:
                strict_of[idx] = True
            else:
                strict_of.pop(idx, None)

    # -- building the Property ------------------------------------------------------------------
    def build(self, n_inputs: int | None, n_outputs: int | None) -> Property:
        n_in = self.count(_X, "input", n_inputs)
        n_out = self.count(_Y, "output", n_outputs)
        terms = self.conjoin(self.dnfs)
        n_terms = len(terms)
        terms, empty_at = self.drop_empty_terms(terms)
        if n_terms and not terms:
            return Property(n_in, n_out, [], self.path, n_terms,
                            f"every term of the property has an empty input box (e.g. {empty_at}): no "
                            f"input satisfies it, so it cannot be violated (unsat by definition)")
        if terms:
            # Input bounds present in every term belong to the common box.
            shared = {c for c in terms[0] if c[0] == "x"}
            for t in terms[1:]:
                shared.intersection_update(c for c in t if c[0] == "x")
            for c in shared:
                self.add_bound(c[1], c[2], c[3], c[5], c[4])
            if shared:
                terms = [tuple(c for c in t if c[0] == "y" or c not in shared) for t in terms]
        box = self.common_box(n_in)
        groups, edits = self.group_terms(terms, box)
        lo, hi, lo_pos, hi_pos, lo_strict, hi_strict = box
        regions = []
        for key, disjunct_rows in groups.items():
            lower, upper, lpos, upos = lo.copy(), hi.copy(), lo_pos.copy(), hi_pos.copy()
            lstrict, ustrict = lo_strict.copy(), hi_strict.copy()
            for i, e in edits[key].items():
                lower[i], upper[i], lpos[i], upos[i], lstrict[i], ustrict[i] = e
            self.check_box(lower, upper, lpos, upos, lstrict | ustrict)
            regions.append(Region(lower, upper, [self.disjunct(r, n_out) for r in disjunct_rows],
                                  lstrict, ustrict))
        return Property(n_in, n_out, regions, self.path, n_terms - len(terms))

    def common_box(self, n_in: int) -> tuple:
        """The common box as arrays: (lower, upper, lower_pos, upper_pos, lower_strict, upper_strict)."""
        lo = np.full(n_in, -np.inf)
        hi = np.full(n_in, np.inf)
        lo_pos = np.full(n_in, -1, dtype=np.int64)
        hi_pos = np.full(n_in, -1, dtype=np.int64)
        if self.lo:
            idx = np.fromiter(self.lo.keys(), np.int64, len(self.lo))
            lo[idx] = np.fromiter(self.lo.values(), np.float64, len(self.lo))
            lo_pos[idx] = np.fromiter(self.lo_pos.values(), np.int64, len(self.lo))
        if self.hi:
            idx = np.fromiter(self.hi.keys(), np.int64, len(self.hi))
            hi[idx] = np.fromiter(self.hi.values(), np.float64, len(self.hi))
            hi_pos[idx] = np.fromiter(self.hi_pos.values(), np.int64, len(self.hi))
        lo_strict = np.zeros(n_in, bool)
        hi_strict = np.zeros(n_in, bool)
        lo_strict[list(self.lo_strict)] = True
        hi_strict[list(self.hi_strict)] = True
        return lo, hi, lo_pos, hi_pos, lo_strict, hi_strict

    @staticmethod
    def group_terms(terms: list, box: tuple) -> tuple[dict, dict]:
        """Terms grouped by their effective box: {key: [rows per term]}, {key: per-input edits}."""
        lo, hi, lo_pos, hi_pos, lo_strict, hi_strict = box
        # Group terms by their effective box. A box is keyed by the inputs where it differs from
        # the common one, so terms never copy a full 3072-wide box just to be compared.
        groups: dict[tuple, list[list[_Constraint]]] = {}
        edits: dict[tuple, dict[int, list]] = {}
        for term in terms:
            own: dict[int, list] = {}
            rows = []
            for c in term:
                if c[0] == "y":
                    rows.append(c)
                    continue
                _, i, is_upper, v, strict, pos = c
                e = own.get(i)
                if e is None:
                    e = own[i] = [lo[i], hi[i], int(lo_pos[i]), int(hi_pos[i]),
                                  bool(lo_strict[i]), bool(hi_strict[i])]
                if is_upper and (v < e[1] or (v == e[1] and strict)):
                    e[1], e[3], e[5] = v, pos, strict
                elif not is_upper and (v > e[0] or (v == e[0] and strict)):
                    e[0], e[2], e[4] = v, pos, strict
            key = tuple(sorted((i, e[0], e[1], e[4], e[5]) for i, e in own.items()
                               if e[0] != lo[i] or e[1] != hi[i] or e[4] != lo_strict[i]
                               or e[5] != hi_strict[i]))
            if key not in groups:
                groups[key] = []
                edits[key] = own
            groups[key].append(rows)
        return groups, edits

    def drop_empty_terms(self, terms: list) -> tuple[list, str | None]:
        """Terms whose own input bounds leave an empty box (with the top-level box) are false:
        dropped. An empty top-level box itself stays an error (check_box: no term could hold)."""
        kept, first = [], None
        for term in terms:
            box: dict[int, list] = {}
            for c in term:
                if c[0] == "x":
                    _, i, is_upper, v, strict, pos = c
                    e = box.get(i)
                    if e is None:
                        e = box[i] = [self.lo.get(i, -np.inf), i in self.lo_strict, self.lo_pos.get(i, 0),
                                      self.hi.get(i, np.inf), i in self.hi_strict, self.hi_pos.get(i, 0)]
                        if _empty(e[0], e[1], e[3], e[4]):
                            box[i] = None            # the top-level box is empty: check_box says so
                            continue
                    if e is None:
                        continue
                    k = 3 if is_upper else 0
                    if (v < e[k] if is_upper else v > e[k]) or (v == e[k] and strict):
                        e[k:k + 3] = [v, strict, pos]
            why = next((f"X_{i} in [{e[0]!r}, {e[3]!r}]{' (open)' if e[1] or e[4] else ''} at line "
                        f"{self.text.count(chr(10), 0, max(e[2], e[5])) + 1}"
                        for i, e in box.items() if e is not None and _empty(e[0], e[1], e[3], e[4])), None)
            if why is None:
                kept.append(term)
            elif first is None:
                first = why
        return kept, first

    def count(self, kind: int, what: str, expected: int | None) -> int:
        indices = sorted(k[1] for k in self.decl_pos if k[0] == kind)
        n = len(indices)
        if n == 0:
            raise self.error(0, f"no {what} variables declared")
        if indices[-1] != n - 1:
            present = set(indices)
            missing = next(i for i in range(n) if i not in present)
            raise self.error(self.decl_pos[(kind, indices[-1])],
                             f"{what} variables are not numbered 0..{n - 1}: "
                             f"{_name(kind, missing)} is not declared")
        if expected is not None and expected != n:
            raise self.error(self.decl_pos[(kind, n - 1)],
                             f"file declares {n} {what}s but the network has {expected}")
        return n

    def check_box(self, lower, upper, lpos, upos, strict) -> None:
        finite = np.isfinite(lower) & np.isfinite(upper)
        if not finite.all():
            i = int(np.argmin(finite))
            side = "lower" if not np.isfinite(lower[i]) else "upper"
            raise self.error(self.decl_pos[(_X, i)], f"input X_{i} has no finite {side} bound")
        bad = lower > upper
        if bad.any():
            i = int(np.argmax(bad))
            raise self.error(int(max(lpos[i], upos[i])),
                             f"input X_{i} has lower bound {float(lower[i])!r} > upper bound "
                             f"{float(upper[i])!r}")
        empty = (lower == upper) & strict
        if empty.any():
            i = int(np.argmax(empty))
            raise self.error(int(max(lpos[i], upos[i])),
                             f"input X_{i} has an empty range: a strict bound at {float(lower[i])!r} "
                             f"with lower = upper")

    @staticmethod
    def disjunct(rows: list[_Constraint], n_out: int) -> OutputDisjunct:
        C = np.zeros((len(rows), n_out))
        d = np.empty(len(rows))
        strict = np.zeros(len(rows), bool)
        for r, (_, coeffs, rhs, is_strict, _pos) in enumerate(rows):
            for j, v in coeffs.items():
                C[r, j] = v
            d[r] = rhs
            strict[r] = is_strict
        return OutputDisjunct(C, d, strict)


def _empty(lo: float, lo_strict: bool, hi: float, hi_strict: bool) -> bool:
    return lo > hi or (lo == hi and (lo_strict or hi_strict))


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def parse_vnnlib(text: str, path: str = "<string>", n_inputs: int | None = None,
                 n_outputs: int | None = None) -> Property:
    """Parse VNN-LIB 1.0 text. `n_inputs` / `n_outputs`, when given, must match the declarations."""
    return _Parser(text, str(path)).run(n_inputs, n_outputs)


def read_vnnlib(path: str | os.PathLike, n_inputs: int | None = None,
                n_outputs: int | None = None) -> Property:
    """Read a VNN-LIB file, plain or gzipped (detected by magic bytes).

    If `path` does not exist but `path + ".gz"` does, that is read: VNN-COMP `instances.csv`
    files name the `.vnnlib` while the benchmarks ship `.vnnlib.gz`.
    """
    p = Path(path)
    if not p.exists() and Path(str(p) + ".gz").exists():
        p = Path(str(p) + ".gz")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise VnnlibError(f"{p}: cannot read file: {e.strerror or e}") from e
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise VnnlibError(f"{p}:1: corrupt gzip data: {e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise VnnlibError(f"{p}:{line}: not UTF-8 text") from e
    return _Parser(text, str(p)).run(n_inputs, n_outputs)
