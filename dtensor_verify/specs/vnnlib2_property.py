"""A 2.0 query as the verifier's property form (regions of input boxes, output polytopes).

The product graph (`dtensor_verify/multinet.py`) takes a vector `z` and outputs the whole value
vector `V` of the query (every declared input, hidden node and output, in declaration order).
Its inputs are `x = M z` with `M` a signed selection: each input element is `+z_r` or `-z_r`.
So the property built here is over `z` (the regions' boxes) and `V` (the disjuncts' rows):

* Equalities between two input elements `x_a == x_b` or `x_a == -x_b` asserted in every DNF term
  (e.g. the copies of an `equal-to` / `isomorphic-to` network share an input) are a change of
  variables: both become one `z`, exactly (the networks then see the same float).
* A bound `x_i <= c` (one input element against a constant) is a bound on its `z`.
* Any other linear atom (input relations such as `X_f[0] <= X_g[0]`, output constraints across
  networks, mixed input/output rows) is a row `c . V <= d` of the term's disjunct: checked by the
  bounds like any output row, never dropped.
* A polynomial atom is relaxed soundly: each nonlinear monomial is replaced by its interval over
  the term's input box and, for hidden / output slots, the bounds given in `slot_bounds` (from a
  first bound pass over the product graph); an atom whose interval is unbounded is relaxed to
  `true` and named in `relaxed` (then `unsat` can only come from the other atoms).
* Bounds missing after that are taken from an LP over the term's input-only linear rows (HiGHS),
  widened outward; an input still unbounded is an error.

Numbers: every bound and row is rounded outward (the unsafe set only grows), `<` is bounded as
`<=`; a counterexample is checked on the query's own AST, exactly (`vnnlib2.holds`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .vnnlib import OutputDisjunct, Property, Region
from .vnnlib2 import Atom, Query2, Vnnlib2Error

__all__ = ["Property2", "build_property"]


@dataclass(eq=False)
class Property2(Property):
    query: Query2 | None = None
    M: np.ndarray | None = None              # [n_values, n_z]: V's input slots = M z
    relaxed: list = field(default_factory=list)   # atoms relaxed to `true` (text, why)
    # inputs with no finite bound (build_property(allow_unbounded=True)): their z keep +-inf in the
    # boxes; only `vnnlib2_refute` proves over such boxes, the search runs on a pinned restriction
    unbounded: list = field(default_factory=list)
    # z pinned to a constant in every term whose inputs are all declared `real`: z -> exact value.
    # The networks get its nearest float32; the assignment reports the exact value (real semantics).
    pinned: dict = field(default_factory=dict)
    checker: object = None                    # callable(z, v) -> dict | None (the confirmed assignment)
    last_assignment: dict | None = None

    def violated_by(self, z, v, tol: float = 0.0) -> bool:
        """The hook `specs.violates` calls: the candidate is confirmed by `checker` (onnxruntime
        on the original files + the query's AST); the confirmed assignment is kept."""
        if self.checker is None or tol != 0.0:
            return False
        got = self.checker(np.asarray(z, np.float64).ravel())
        if got is None:
            return False
        self.last_assignment = got
        return True


def _down(q: Fraction) -> float:
    f = float(q)
    return f if Fraction(f) <= q else math.nextafter(f, -math.inf)


def _up(q: Fraction) -> float:
    f = float(q)
    return f if Fraction(f) >= q else math.nextafter(f, math.inf)


def _input_slots(q: Query2) -> list[int]:
    return [s for v in q.variables if v.kind == "input" for s in range(v.offset, v.offset + v.size)]


def _shared_equalities(q: Query2, inputs: set[int]):
    """Union of input slots by `x_a == +-x_b` atoms present in every term: slot -> (rep, sign)."""
    common = set(id(a) for a in q.terms[0]) if q.terms else set()
    for t in q.terms[1:]:
        common &= {id(a) for a in t}
    parent = {s: (s, 1) for s in inputs}

    def find(s):
        r, sign = parent[s]
        if r == s:
            return s, 1
        rr, s2 = find(r)
        parent[s] = (rr, sign * s2)
        return rr, sign * s2

    used = set()
    for a in (q.terms[0] if q.terms else []):
        if id(a) not in common or a.op != "==" or () in a.poly or len(a.poly) != 2 or a.degree != 1:
            continue
        (ma, ca), (mb, cb) = a.poly.items()
        sa, sb = ma[0], mb[0]
        if sa not in inputs or sb not in inputs or abs(ca) != abs(cb):
            continue
        sign = -1 if ca == cb else 1           # ca x_a + cb x_b = 0  ->  x_a = sign * x_b
        ra, pa = find(sa)
        rb, pb = find(sb)
        if ra == rb:
            if pa != sign * pb:
                continue                        # x = -x: not a plain renaming; keep it as rows
        else:
            parent[ra] = (rb, pa * sign * pb)
        used.add(id(a))
    return {s: find(s) for s in inputs}, used


def build_property(q: Query2, slot_bounds=None, allow_unbounded: bool = False) -> Property2:
    """See the module docstring. `slot_bounds`: (lo, hi) arrays over V, or None. An input left
    unbounded is an error, or with `allow_unbounded` named in `Property2.unbounded`."""
    inputs = _input_slots(q)
    rep, used = _shared_equalities(q, set(inputs))
    first: dict = {}
    for s in inputs:                           # z in declaration order of each class's first element
        first.setdefault(rep[s][0], s)
    reps = sorted(first, key=first.get)
    z_of = {r: k for k, r in enumerate(reps)}
    n_z = len(reps)
    M = np.zeros((q.n_values, n_z))
    sign_of, zi_of = {}, {}
    for s in inputs:
        r, sign = rep[s]
        M[s, z_of[r]] = sign
        sign_of[s], zi_of[s] = sign, z_of[r]
    relaxed: list = []
    regions: dict = {}
    pins = None
    built_terms = []
    for term in q.terms:
        built = _term(q, term, used, n_z, sign_of, zi_of, M, slot_bounds, relaxed, allow_unbounded)
        if built is not None:
            built_terms.append(built)
            pins = built[3] if pins is None else {k: v for k, v in pins.items() if built[3].get(k) == v}
    pinned = {k: v for k, v in (pins or {}).items() if _all_real(q, M, k)}
    for lo, hi, dj, _ in built_terms:
        for k, v in pinned.items():          # the box holds the float32 the networks get
            f = float(np.float32(float(v)))
            lo[k], hi[k] = min(lo[k], f), max(hi[k], f)
        key = (lo.tobytes(), hi.tobytes())
        if key not in regions:
            regions[key] = Region(lo, hi, [])
        regions[key].disjuncts.append(dj)
    prop = Property2(n_z, q.n_values, list(regions.values()), q.path, query=q, M=M, pinned=pinned)
    names = q.slot_names()
    prop.unbounded = sorted({names[int(np.flatnonzero(M[:, k])[0])] for r in prop.regions
                             for k in np.flatnonzero(~(np.isfinite(r.lower) & np.isfinite(r.upper)))})
    seen = set()
    prop.relaxed = [r for r in relaxed if not (r in seen or seen.add(r))]
    return prop


def _term(q, term, used, n_z, sign_of, zi_of, M, slot_bounds, relaxed, allow_unbounded=False):
    lo = np.full(n_z, -np.inf)
    hi = np.full(n_z, np.inf)
    exact: dict = {}                                 # (z, is_upper) -> tightest exact bound
    rows: list[tuple[dict, Fraction, bool]] = []    # sum coef*V[slot] <= d (< d when strict), exact
    nonlinear: list[Atom] = []
    for a in term:
        if id(a) in used:
            continue
        if a.degree == 0:
            c = a.poly.get((), Fraction(0))
            if not {"<=": c <= 0, "<": c < 0, "==": c == 0}[a.op]:
                return None                     # a false constant: the term is empty
            continue
        if a.degree > 1:
            nonlinear.append(a)
            continue
        lin = {m[0]: c for m, c in a.poly.items() if m}
        c0 = a.poly.get((), Fraction(0))
        if len(lin) == 1 and next(iter(lin)) in sign_of:
            (s, coef), = lin.items()
            for is_up, v in _bound(lo, hi, zi_of[s], sign_of[s], coef, c0, a.op):
                key = (zi_of[s], is_up)
                if key not in exact or (v < exact[key] if is_up else v > exact[key]):
                    exact[key] = v
            continue
        rows.append((lin, -c0, a.op == "<"))
        if a.op == "==":
            rows.append(({k: -v for k, v in lin.items()}, c0, False))
    _fill_bounds(q, lo, hi, rows, M, allow_unbounded)
    if np.any(lo > hi):
        return None                             # empty box: nothing to find here
    for a in nonlinear:
        for poly in ([a.poly] if a.op != "==" else [a.poly, {m: -c for m, c in a.poly.items()}]):
            got = _relax(poly, lo, hi, M, slot_bounds)
            if got is None:
                relaxed.append((a.text, "a product of unbounded values"))
            else:                               # row <= p < 0: a relaxed row of a strict atom is strict
                rows += [(lin, rhs, a.op == "<") for lin, rhs in got]
    C = np.zeros((len(rows), q.n_values))
    d = np.zeros(len(rows))
    strict = np.zeros(len(rows), bool)
    for i, (lin, rhs, st) in enumerate(rows):
        for s, c in lin.items():
            C[i, s] = float(c)
        d[i], strict[i] = _up(rhs), st
    pins = {k: exact[(k, False)] for k in range(n_z)
            if (k, False) in exact and exact.get((k, True)) == exact[(k, False)]}
    return lo, hi, OutputDisjunct(C, d, strict), pins


def _all_real(q, M, k) -> bool:
    slots = set(np.flatnonzero(M[:, k]).tolist())
    return all(v.dtype == "real" for v in q.variables if v.kind == "input"
               and slots & set(range(v.offset, v.offset + v.size)))


def _bound(lo, hi, zi, sign, coef, c0, op):
    """coef * x + c0 (op) 0 with x = sign * z."""
    value = -c0 / coef                          # x (op') value
    upper_on_x = coef > 0
    out = []
    for is_upper in ((True, False) if op == "==" else (upper_on_x,)):
        up_z = is_upper if sign > 0 else not is_upper
        v = value if sign > 0 else -value
        if up_z:
            hi[zi] = min(hi[zi], _up(v))
        else:
            lo[zi] = max(lo[zi], _down(v))
        out.append((up_z, v))
    return out


def _fill_bounds(q, lo, hi, rows, M, allow_unbounded=False):
    """Finite bounds for the z left unbounded, from an LP over the input-only rows."""
    missing = [k for k in range(len(lo)) if not (np.isfinite(lo[k]) and np.isfinite(hi[k]))]
    if not missing:
        return
    in_rows = [(lin, d) for lin, d, _ in rows if all(np.any(M[s] != 0) for s in lin)]
    if in_rows:
        from scipy.optimize import linprog

        A = np.array([sum(float(c) * M[s] for s, c in lin.items()) for lin, _ in in_rows])
        b = np.array([_up(d) for _, d in in_rows])
        bounds = [(None if not np.isfinite(l) else l, None if not np.isfinite(h) else h) for l, h in zip(lo, hi)]
        for k in missing:
            for sense, arr in ((1.0, lo), (-1.0, hi)):
                if np.isfinite(arr[k]):
                    continue
                cost = np.zeros(len(lo))
                cost[k] = sense
                res = linprog(cost, A_ub=A, b_ub=b, bounds=bounds, method="highs")
                if res.status == 0:
                    v = float(res.fun) * sense
                    slack = 1e-6 * (1.0 + abs(v))
                    arr[k] = v - slack if sense > 0 else v + slack
                elif res.status == 2:           # infeasible: the term is empty
                    lo[k], hi[k] = 1.0, 0.0
                    return
    names = q.slot_names()
    for k in range(len(lo) if not allow_unbounded else 0):
        if not (np.isfinite(lo[k]) and np.isfinite(hi[k])):
            s = int(np.flatnonzero(M[:, k])[0])
            raise Vnnlib2Error(f"{q.path}: input {names[s]} is unbounded (every input needs finite bounds)")


def _slot_interval(s, lo, hi, M, slot_bounds):
    col = np.flatnonzero(M[s])
    if col.size:
        k = int(col[0])
        a, b = (lo[k], hi[k]) if M[s, k] > 0 else (-hi[k], -lo[k])
        return a, b
    if slot_bounds is None:
        return -np.inf, np.inf
    return float(slot_bounds[0][s]), float(slot_bounds[1][s])


MAX_PLANE_ROWS = 4      # McCormick rows one polynomial atom may become (2 per product of two values)


def _relax(poly, lo, hi, M, slot_bounds):
    """p <= 0 relaxed to linear rows (their conjunction): a product of two bounded values becomes
    each of its two McCormick planes on the side that bounds `c * m` from below (`m >= plane` for
    c > 0, `m <= plane` for c < 0; a square's lower planes are its tangents at the ends); any
    other nonlinear monomial becomes its interval's end. Every row is implied by p <= 0."""
    base, const = {}, poly.get((), Fraction(0))
    options = []            # per product: the alternative (lin, const) replacements of c * m
    for m, c in poly.items():
        if len(m) == 1:
            base[m[0]] = base.get(m[0], 0) + c
        elif len(m) > 1:
            iv = _monomial_interval(m, lo, hi, M, slot_bounds)
            if iv is None:
                return None
            planes = _planes(m, c, lo, hi, M, slot_bounds) if len(m) == 2 else None
            if planes and len(options) < 2 and 2 ** (len(options) + 1) <= MAX_PLANE_ROWS:
                options.append(planes)
            else:
                const += c * (iv[0] if c > 0 else iv[1])
    rows = [(dict(base), const)]
    for alts in options:
        rows = [(_plus(lin, pl), k + pk) for lin, k in rows for pl, pk in alts]
    return [(lin, -k) for lin, k in rows]


def _plus(a: dict, b: dict) -> dict:
    out = dict(a)
    for s, c in b.items():
        out[s] = out.get(s, 0) + c
    return out


def _planes(m, c, lo, hi, M, slot_bounds):
    """The two McCormick planes of c * y_a * y_b that bound it from below: [(lin, const), ...]."""
    a, b = m
    la, ua = (Fraction(v) for v in _slot_interval(a, lo, hi, M, slot_bounds))
    lb, ub = (Fraction(v) for v in _slot_interval(b, lo, hi, M, slot_bounds))
    if c > 0:      # m >= lb*ya + la*yb - la*lb,  m >= ub*ya + ua*yb - ua*ub
        planes = [(lb, la, -la * lb), (ub, ua, -ua * ub)]
    else:          # m <= ub*ya + la*yb - la*ub,  m <= lb*ya + ua*yb - ua*lb
        planes = [(ub, la, -la * ub), (lb, ua, -ua * lb)]
    out = []
    for ca, cb, k in planes:
        lin = {a: c * ca}
        lin[b] = lin.get(b, 0) + c * cb
        out.append((lin, c * k))
    return out


def _monomial_interval(m, lo, hi, M, slot_bounds):
    """Exact interval of a product of slots (powers of one slot handled as powers)."""
    out = (Fraction(1), Fraction(1))
    for s in sorted(set(m)):
        a, b = _slot_interval(s, lo, hi, M, slot_bounds)
        if not (np.isfinite(a) and np.isfinite(b)):
            return None
        a, b, k = Fraction(a), Fraction(b), m.count(s)
        ends = [a ** k, b ** k]
        if k % 2 == 0 and a < 0 < b:
            ends.append(Fraction(0))
        iv = (min(ends), max(ends))
        prods = [x * y for x in out for y in iv]
        out = (min(prods), max(prods))
    return out
