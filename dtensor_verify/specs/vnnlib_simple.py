"""The reader's shortcut for a simple comparison `(<= NAME NUMBER)` (also `>=`, `<`, `>`) inside an
`and` / `or`: the constraint is classified as the token is read, instead of an s-expression list
of three atoms walked later by `formula` / `comparison` / `linear`. nn4sys mscn's properties are
thousands of `(and ...)` boxes of 309 such comparisons each (cardinality_0_2120: 1.3 million;
reading it took 77 s under the profiler on this CPU, most of it in that walk).

The result is the one the general path gives, constraint for constraint (the same `classify`,
the same arithmetic, so even the sign of a zero bound agrees; tests/test_vnnlib_simple.py
compares both paths); anything else (an undeclared name, a comparison outside `and` / `or`)
takes the general path, errors included.
"""
from __future__ import annotations

from .vnnlib_formula import _Atom, _Converted, _List

FORMULA_HEADS = frozenset({"and", "or"})
ENABLED = True            # tests switch it off to compare with the general path


def simple_comparison(parser, m, stack: list, groups: tuple, close) -> None:
    """Handle the regex match `m` of a simple comparison (`groups`: the indices of its op, name
    and number groups). `close(node)` is the reader's handling of a list just closed."""
    g_op, g_name, g_num = groups
    op, name, num = m.group(g_op), m.group(g_name), m.group(g_num)
    key = parser.vars.get(name)
    parent = stack[-1] if stack else None
    if not ENABLED or key is None or not _in_formula(parent):
        node = _List(m.start())
        node.items = [_Atom(op, m.start(g_op)), _Atom(name, m.start(g_name)), _Atom(num, m.start(g_num))]
        close(node)
        return
    value = float(num)
    if op[0] == "<":                       # a - b <= 0 with a = NAME, b = NUMBER (as `_combine`)
        coeffs, const = {key: 1.0}, 0.0 + -1.0 * value
    else:                                  # b - a <= 0
        coeffs, const = {key: -1.0}, value + -1.0 * 0.0
    c = parser.classify(coeffs, const, m.start(), op in ("<", ">"))
    dnf = [] if c is False else [()] if c is True else [(c,)]
    parent.items.append(_Converted(dnf, m.start()))


def _in_formula(parent) -> bool:
    return (parent is not None and bool(parent.items) and isinstance(parent.items[0], _Atom)
            and parent.items[0].text in FORMULA_HEADS)
