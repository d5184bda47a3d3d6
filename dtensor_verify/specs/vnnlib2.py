"""VNN-LIB 2.0 queries, read by the standard's own parser (the `vnnlib` package).

    query = read_query("q.vnnlib")        # Query2: declarations, DNF of polynomial atoms, the AST
    holds(query, values)                  # the query's own AST, evaluated exactly (tolerance 0)

A 2.0 file starts (after comments) with `(vnnlib-version <2.0>)`; `is_vnnlib2` looks for that
header, so 1.0 files keep the 1.0 reader (`specs/vnnlib.py`).

Every declared variable (inputs, hidden nodes, outputs of every network, in declaration order)
gets a slot range in one value vector `V` (row-major within a variable). The asserted formula
becomes a disjunction of conjunctions of `Atom`s `p(V) <= 0`, `p(V) < 0` or `p(V) == 0`, with
`p` an exact polynomial (rational coefficients, monomials as tuples of V indices). `!=` becomes
two terms (`<` or `>`). The official parser's DNF does the and/or work; this module expands the
arithmetic itself so that polynomial atoms stay exact (the relaxation is `vnnlib2_property`'s).

Errors (syntax, typing, an unknown element type, too many DNF terms) are `Vnnlib2Error`s: one
line `FILE:LINE: message`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InputSpecError

__all__ = ["Vnnlib2Error", "VarDecl", "NetDecl", "Atom", "Query2", "is_vnnlib2", "read_query",
           "parse_query_text", "holds", "MAX_TERMS"]

MAX_TERMS = 100_000        # DNF terms (conjoined asserts multiply)
MAX_MONOMIALS = 10_000     # monomials of one expanded polynomial
_HEADER = re.compile(r"\(\s*vnnlib-version\b")

# The parser's DType names -> the standard's element type names.
_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16",
           "F8E4M3FN": "float8e4m3fn", "F8E5M2": "float8e5m2", "F8E4M3FNUZ": "float8e4m3fnuz",
           "F8E5M2FNUZ": "float8e5m2fnuz", "F4E2M1": "float4e2m1", "I8": "int8", "I16": "int16",
           "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32",
           "U64": "uint64", "C64": "complex64", "C128": "complex128", "Bool": "bool",
           "String": "string", "Real": "real"}


class Vnnlib2Error(InputSpecError, ValueError):
    """A malformed, ill-typed or unsupported 2.0 query; the message starts with the file name."""


@dataclass(eq=False)
class VarDecl:
    name: str
    kind: str                  # 'input' | 'hidden' | 'output'
    dtype: str                 # 'float32', 'real', ...
    type_text: str             # the type as written ('float32', 'Real', ...), for the assignment
    shape: tuple[int, ...]
    onnx_name: str | None
    network: str
    offset: int                # first slot in V
    size: int


@dataclass(eq=False)
class NetDecl:
    name: str
    equal_to: str | None
    isomorphic_to: str | None
    inputs: list[VarDecl]
    hidden: list[VarDecl]
    outputs: list[VarDecl]


@dataclass(eq=False)
class Atom:
    """`p(V) op 0` with op '<=', '<' or '=='; p maps monomials (sorted tuples of V slots; () is
    the constant) to exact coefficients."""
    poly: dict
    op: str
    text: str

    @property
    def degree(self) -> int:
        return max((len(m) for m in self.poly), default=0)

    def slots(self) -> set[int]:
        return {s for m in self.poly for s in m}


@dataclass(eq=False)
class Query2:
    path: str
    ast: object                          # vnnlib.Query
    networks: list[NetDecl]
    variables: list[VarDecl]             # declaration order
    n_values: int
    terms: list[list[Atom]]              # unsafe iff some term's atoms all hold
    by_name: dict = field(default_factory=dict)

    def slot_names(self) -> list[str]:
        out = []
        for v in self.variables:
            for idx in np.ndindex(*v.shape) if v.shape else [()]:
                out.append(f"{v.name}[{','.join(map(str, idx))}]")
        return out


def is_vnnlib2(path) -> bool:
    """Does the file (plain text) start, after comments, with `(vnnlib-version ...)`?"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    text = head.decode("utf-8", "replace")
    lines = [ln.split(";", 1)[0] for ln in text.splitlines()]
    body = " ".join(ln for ln in lines if ln.strip())
    return bool(_HEADER.match(body.lstrip()))


def _error_text(exc: Exception, where: str) -> str:
    """The parser's message (plain or JSON) as one line naming the file."""
    raw = str(exc).strip()
    try:
        data = json.loads(raw)
    except ValueError:
        return f"{where}: {' '.join(raw.split())}"
    parts = []
    for e in data.get("errors", [])[:3]:
        line = e.get("line")
        sym = e.get("offendingSymbol")
        msg = e.get("message") or e.get("errorCode") or "error"
        hint = e.get("hint")
        parts.append(f"{where}:{line}: {msg}" + (f" '{sym}'" if sym else "") + (f" ({hint})" if hint else ""))
    return "; ".join(parts) or f"{where}: {' '.join(raw.split())}"


def read_query(path) -> Query2:
    p = Path(path)
    if not p.is_file():
        raise Vnnlib2Error(f"{path}: no such file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise Vnnlib2Error(f"{path}: cannot read ({exc})") from None
    return parse_query_text(text, str(path))


def parse_query_text(text: str, path: str = "<string>") -> Query2:
    import vnnlib

    try:
        ast = vnnlib.parse_query_string(text)
    except vnnlib.VNNLibException as exc:
        raise Vnnlib2Error(_error_text(exc, path)) from None
    networks, variables, n = _declarations(ast, path)
    q = Query2(path, ast, networks, variables, n, [])
    q.by_name = {v.name: v for v in variables}
    q.terms = _dnf(ast, q)
    return q


def _type_text(decl) -> str:
    m = re.match(r"\(\s*declare-\w+\s+\S+\s+(\S+)", str(decl))
    return m.group(1) if m else _DTYPES.get(decl.dtype.name, decl.dtype.name)


def _declarations(ast, path: str):
    networks, variables, offset = [], [], 0
    for net in ast.networks:
        groups = {}
        for kind, decls in (("input", net.inputs), ("hidden", net.hidden), ("output", net.outputs)):
            out = []
            for d in decls:
                dtype = _DTYPES.get(d.dtype.name)
                if dtype is None:
                    raise Vnnlib2Error(f"{path}: variable '{d.name}' has element type {d.dtype.name}, "
                                       f"which is not a tensor element type")
                shape = tuple(int(s) for s in d.shape)
                size = int(np.prod(shape)) if shape else 1
                onnx = d.onnx_name.strip('"') if d.onnx_name else None
                out.append(VarDecl(d.name, kind, dtype, _type_text(d), shape, onnx, net.name, offset, size))
                offset += size
            groups[kind] = out
        # Declaration order of the file: inputs, hidden, outputs are listed in that order by the
        # grammar within one network.
        variables += groups["input"] + groups["hidden"] + groups["output"]
        networks.append(NetDecl(net.name, net.equal_to or None, net.isometric_to or None,
                                groups["input"], groups["hidden"], groups["output"]))
    return networks, variables, offset


# ------------------------------------------------------------------------------- polynomials

def _literal(node) -> Fraction:
    text = getattr(node, "lexeme", None) or str(node)
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return Fraction(float(node.value))


def _slot(q: Query2, var) -> int:
    decl = q.by_name[var.name]
    idx = list(var.indices)
    if not decl.shape:
        return decl.offset
    flat = int(np.ravel_multi_index(tuple(idx), decl.shape)) if idx else 0
    return decl.offset + flat


def _mul(a: dict, b: dict) -> dict:
    out: dict = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, 0) + ca * cb
            if len(out) > MAX_MONOMIALS:
                raise OverflowError
    return {m: c for m, c in out.items() if c != 0}


def _add(a: dict, b: dict, sign: int = 1) -> dict:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + sign * c
    return {m: c for m, c in out.items() if c != 0}


def poly_of(node, q: Query2) -> dict:
    """The arithmetic expression as an exact polynomial over V slots."""
    import vnnlib

    if isinstance(node, vnnlib.Var):
        return {(_slot(q, node),): Fraction(1)}
    if isinstance(node, vnnlib.Literal):
        v = _literal(node)
        return {(): v} if v != 0 else {}
    if isinstance(node, vnnlib.Negate):
        return {m: -c for m, c in poly_of(node.expr, q).items()}
    if isinstance(node, vnnlib.Plus):
        out: dict = {}
        for a in node.args:
            out = _add(out, poly_of(a, q))
        return out
    if isinstance(node, vnnlib.Minus):
        out = poly_of(node.head, q)
        for a in node.rest:
            out = _add(out, poly_of(a, q), -1)
        return out
    if isinstance(node, vnnlib.Multiply):
        out = {(): Fraction(1)}
        for a in node.args:
            out = _mul(out, poly_of(a, q))
        return out
    raise Vnnlib2Error(f"{q.path}: unsupported arithmetic expression {type(node).__name__}: {str(node)[:80]}")


def _atoms_of(cmp, q: Query2) -> list[list[Atom]]:
    """A comparison as a disjunction (list) of conjunctions of atoms (`!=` gives two)."""
    import vnnlib

    p = _add(poly_of(cmp.lhs, q), poly_of(cmp.rhs, q), -1)      # lhs - rhs
    neg = {m: -c for m, c in p.items()}
    text = " ".join(str(cmp).split())
    if isinstance(cmp, vnnlib.LessEqual):
        return [[Atom(p, "<=", text)]]
    if isinstance(cmp, vnnlib.LessThan):
        return [[Atom(p, "<", text)]]
    if isinstance(cmp, vnnlib.GreaterEqual):
        return [[Atom(neg, "<=", text)]]
    if isinstance(cmp, vnnlib.GreaterThan):
        return [[Atom(neg, "<", text)]]
    if isinstance(cmp, vnnlib.Equal):
        return [[Atom(p, "==", text)]]
    if isinstance(cmp, vnnlib.NotEqual):
        return [[Atom(p, "<", text)], [Atom(neg, "<", text)]]
    raise Vnnlib2Error(f"{q.path}: unsupported comparison {type(cmp).__name__}: {text[:80]}")


def _dnf(ast, q: Query2) -> list[list[Atom]]:
    terms: list[list[Atom]] = [[]]
    try:
        for a in ast.assertions:
            local: list[list[Atom]] = []
            for conj in a.expr.to_dnf():
                alts: list[list[Atom]] = [[]]
                for cmp in conj:
                    alts = [x + y for x in alts for y in _atoms_of(cmp, q)]
                local += alts
            terms = [t + u for t in terms for u in local]
            if len(terms) > MAX_TERMS:
                raise Vnnlib2Error(f"{q.path}: the formula has more than {MAX_TERMS} terms in disjunctive "
                                   f"normal form")
    except OverflowError:
        raise Vnnlib2Error(f"{q.path}: a polynomial has more than {MAX_MONOMIALS} monomials") from None
    return terms


# --------------------------------------------------------------------------- exact evaluation

def _value(node, values: dict):
    import vnnlib

    if isinstance(node, vnnlib.Var):
        arr = np.asarray(values[node.name])
        idx = tuple(node.indices)
        v = arr[idx] if idx else arr.reshape(-1)[0]
        if isinstance(v, Fraction):                     # an exact value (a pinned `real` input)
            return v
        if isinstance(v, (int, np.integer)):            # an integer type's value, exactly
            return Fraction(int(v))
        v = float(v)
        if not np.isfinite(v):
            raise ArithmeticError("NaN or infinity")
        return Fraction(v)
    if isinstance(node, vnnlib.Literal):
        return _literal(node)
    if isinstance(node, vnnlib.Negate):
        return -_value(node.expr, values)
    if isinstance(node, vnnlib.Plus):
        return sum((_value(a, values) for a in node.args), Fraction(0))
    if isinstance(node, vnnlib.Minus):
        return _value(node.head, values) - sum((_value(a, values) for a in node.rest), Fraction(0))
    if isinstance(node, vnnlib.Multiply):
        out = Fraction(1)
        for a in node.args:
            out *= _value(a, values)
        return out
    raise ArithmeticError(f"cannot evaluate {type(node).__name__}")


def _truth(node, values: dict) -> bool:
    import vnnlib

    if isinstance(node, vnnlib.And):
        return all(_truth(a, values) for a in node.args)
    if isinstance(node, vnnlib.Or):
        return any(_truth(a, values) for a in node.args)
    a, b = _value(node.lhs, values), _value(node.rhs, values)
    ops = {vnnlib.LessEqual: a <= b, vnnlib.LessThan: a < b, vnnlib.GreaterEqual: a >= b,
           vnnlib.GreaterThan: a > b, vnnlib.Equal: a == b, vnnlib.NotEqual: a != b}
    for cls, val in ops.items():
        if isinstance(node, cls):
            return val
    raise ArithmeticError(f"cannot evaluate {type(node).__name__}")


def holds(q: Query2, values: dict) -> bool:
    """Do the given values (name -> array of the declared shape) satisfy every assertion, as
    written? Numbers are exact rationals (the literals' decimal text, the values' floats); no
    tolerance; a NaN or infinite value satisfies nothing."""
    try:
        return all(_truth(a.expr, values) for a in q.ast.assertions)
    except ArithmeticError:
        return False
