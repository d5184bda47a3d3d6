"""VNN-LIB 1.0 formulas: from an s-expression to disjunctive normal form (the reader's formula part).

`FormulaMixin` is the part of the reader (`specs/vnnlib.py`'s `_Parser`) that turns an asserted
boolean formula into DNF (`formula`, `conjoin`: terms are tuples of classified constraints) and
linear terms into `({(kind, index): coefficient}, constant)` (`linear`, `comparison`,
`classify`). It uses the parser's `vars` (declared names) and `error` (a `VnnlibError` that
names the file and line).
"""
from __future__ import annotations

import re

# Guard against exponential DNF blow-up: a product of disjunctions (an `and` of `or`s) may give at
# most this many terms. A *sum* (an `or`, or a product with one single-term side) gives at most as
# many terms as the file has comparisons, so it may give up to `term_limit(text)` (nn4sys
# lindex_60000: one `or` of 120 000 boxes); its memory grows with the file, not exponentially.
MAX_DNF_TERMS = 100_000

_NUM_RE = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"   # linear-time on a failed match
_NUM = re.compile(_NUM_RE + r"\Z")
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})
_X, _Y = 0, 1


class _Atom:
    __slots__ = ("text", "pos")

    def __init__(self, text: str, pos: int):
        self.text, self.pos = text, pos


class _List:
    __slots__ = ("items", "pos")

    def __init__(self, pos: int):
        self.items: list[_Atom | _List | _Converted] = []
        self.pos = pos


class _Converted:
    """A disjunct of an `or` already in DNF: the reader converts each one as it closes (streaming:
    the s-expression of a 120 000-box disjunction is never held whole)."""
    __slots__ = ("dnf", "pos")

    def __init__(self, dnf: list, pos: int):
        self.dnf, self.pos = dnf, pos


def term_limit(text: str) -> int:
    """DNF terms a sum may reach in `text`: each term needs a comparison, each comparison a '('."""
    return max(MAX_DNF_TERMS, text.count("("))


def converts_eagerly(parent) -> bool:
    """Whether the children of the open list `parent` are disjuncts of an `or` (a formula in every
    context: an `or` is never a term), so each may be converted to DNF as soon as it closes."""
    return bool(parent.items) and isinstance(parent.items[0], _Atom) and parent.items[0].text == "or"


# A classified atom of a DNF term:
#   ("x", index, is_upper, value, strict, pos)      an input bound
#   ("y", {index: coef}, d, strict, pos)             an output row  sum(coef * Y_index) <= d (< if strict)
_Constraint = tuple
_Term = tuple          # conjunction of _Constraint
_Dnf = list            # disjunction of _Term


def _name(kind: int, idx: int) -> str:
    return f"{'XY'[kind]}_{idx}"


def _combine(ca: dict, ka: float, cb: dict, kb: float, sign: float) -> tuple[dict, float]:
    """(ca, ka) + sign * (cb, kb) for linear terms."""
    out = dict(ca)
    for k, v in cb.items():
        out[k] = out.get(k, 0.0) + sign * v
    return out, ka + sign * kb


class FormulaMixin:
    """The formula half of the VNN-LIB 1.0 parser (needs `self.vars`, `self.error` and
    `self.max_terms`, the file's `term_limit`)."""
    max_terms = MAX_DNF_TERMS

    def formula(self, node: _Atom | _List) -> _Dnf:
        """DNF of a boolean formula: a list of terms, each a tuple of constraints."""
        if isinstance(node, _Converted):          # read as one token (vnnlib_simple.py)
            return node.dnf
        if isinstance(node, _Atom):
            if node.text == "true":
                return [()]
            if node.text == "false":
                return []
            raise self.error(node.pos, f"expected a constraint, got '{node.text}'")
        if not node.items:
            raise self.error(node.pos, "empty expression '()'")
        head = node.items[0]
        if not isinstance(head, _Atom):
            raise self.error(node.pos, "expected an operator after '('")
        op, args = head.text, node.items[1:]
        if op == "and":
            return self.conjoin([(self.formula(a), a.pos) for a in args])
        if op == "or":
            out: _Dnf = []
            for a in args:
                out.extend(a.dnf if isinstance(a, _Converted) else self.formula(a))
                if len(out) > self.max_terms:
                    raise self.error(node.pos, f"formula has more than {self.max_terms} "
                                               "disjunctive-normal-form terms")
            return out
        if op in _COMPARISONS:
            return self.comparison(op, args, node)
        raise self.error(head.pos, f"unknown operator '{op}'")

    def conjoin(self, dnfs: list[tuple[_Dnf, int]]) -> _Dnf:
        """DNF of the conjunction of (dnf, source position) pairs."""
        # Single-term conjuncts are concatenated once instead of multiplied (a CIFAR box inside
        # one `and` would otherwise cost quadratic tuple copies); only true disjunctions multiply.
        common: list[_Constraint] = []
        multi: list[tuple[_Dnf, int]] = []
        for dnf, pos in dnfs:
            if not dnf:
                return []
            if len(dnf) == 1:
                common.extend(dnf[0])
            else:
                multi.append((dnf, pos))
        terms: _Dnf = [tuple(common)]
        for dnf, pos in multi:
            # One term times a disjunction is a sum (linear in the file); a product of two
            # disjunctions is what may blow up.
            limit = self.max_terms if len(terms) == 1 else MAX_DNF_TERMS
            if len(terms) * len(dnf) > limit:
                raise self.error(pos, f"formula has more than {limit} disjunctive-normal-form terms")
            terms = dnf if terms == [()] else [t + s for t in terms for s in dnf]
        return terms

    def comparison(self, op: str, args: list, node: _List) -> _Dnf:
        if len(args) < 2:
            raise self.error(node.pos, f"'{op}' needs at least two arguments")
        lins = [self.linear(a) for a in args]
        term: list[_Constraint] = []
        strict = op in ("<", ">")
        for (ca, ka), (cb, kb) in zip(lins, lins[1:]):   # chained (<= a b c) = a<=b and b<=c
            diffs = []
            if op in ("<=", "<", "="):
                diffs.append(_combine(ca, ka, cb, kb, -1.0))   # a - b <= 0  (< 0 if strict)
            if op in (">=", ">", "="):
                diffs.append(_combine(cb, kb, ca, ka, -1.0))   # b - a <= 0  (< 0 if strict)
            for coeffs, const in diffs:
                c = self.classify(coeffs, const, node.pos, strict)
                if c is False:
                    return []
                if c is not True:
                    term.append(c)
        return [tuple(term)]

    def classify(self, coeffs: dict, const: float, pos: int, strict: bool = False) -> _Constraint | bool:
        """Turn `sum(coeffs * vars) + const <= 0` (`< 0` if strict) into an input bound or an
        output row; a constraint without variables is decided here, strictness included."""
        coeffs = {k: v for k, v in coeffs.items() if v != 0.0}
        if not coeffs:
            return const < 0.0 if strict else const <= 0.0
        kinds = {k[0] for k in coeffs}
        if len(kinds) == 2:
            raise self.error(pos, "constraint mixes input (X) and output (Y) variables")
        if _X in kinds:
            if len(coeffs) > 1:
                names = ", ".join(_name(*k) for k in sorted(coeffs))
                raise self.error(pos, f"constraint over several input variables ({names}) is not "
                                      "a box bound; not supported")
            (key, a), = coeffs.items()
            return ("x", key[1], a > 0.0, -const / a, strict, pos)
        return ("y", {k[1]: v for k, v in coeffs.items()}, -const + 0.0, strict, pos)  # +0.0: no -0.0

    def linear(self, node: _Atom | _List) -> tuple[dict, float]:
        """A linear term as ({(kind, index): coefficient}, constant)."""
        if isinstance(node, _Atom):
            t = node.text
            key = self.vars.get(t)
            if key is not None:
                return {key: 1.0}, 0.0
            if _NUM.match(t):
                return {}, float(t)
            if t[0] in "+-.0123456789":
                raise self.error(node.pos, f"bad number '{t}'")
            raise self.error(node.pos, f"unknown variable {t}")
        if not node.items or not isinstance(node.items[0], _Atom):
            raise self.error(node.pos, "expected a term")
        op, args = node.items[0].text, node.items[1:]
        if op in ("+", "-", "*", "/") and not args:
            raise self.error(node.pos, f"'{op}' needs arguments")
        if op == "+" or op == "-":
            coeffs, const = self.linear(args[0])
            if op == "-" and len(args) == 1:
                return {k: -v for k, v in coeffs.items()}, -const
            sign = 1.0 if op == "+" else -1.0
            for a in args[1:]:
                cb, kb = self.linear(a)
                coeffs, const = _combine(coeffs, const, cb, kb, sign)
            return coeffs, const
        if op == "*":
            coeffs, const = self.linear(args[0])
            for a in args[1:]:
                cb, kb = self.linear(a)
                if coeffs and cb:
                    raise self.error(node.pos, "product of variables is not linear")
                if cb:      # keep the variable part in `coeffs`, scale it by the constant
                    coeffs, const, cb, kb = cb, kb, coeffs, const
                coeffs = {k: v * kb for k, v in coeffs.items()}
                const *= kb
            return coeffs, const
        if op == "/":
            coeffs, const = self.linear(args[0])
            for a in args[1:]:
                cb, kb = self.linear(a)
                if cb:
                    raise self.error(node.pos, "division by a variable is not linear")
                if kb == 0.0:
                    raise self.error(node.pos, "division by zero")
                coeffs = {k: v / kb for k, v in coeffs.items()}
                const /= kb
            return coeffs, const
        if op in _COMPARISONS or op in ("and", "or"):
            raise self.error(node.pos, f"'{op}' cannot be used as a term")
        raise self.error(node.items[0].pos, f"unknown operator '{op}'")
