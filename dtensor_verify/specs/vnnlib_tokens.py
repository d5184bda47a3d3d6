"""VNN-LIB 1.0's tokeniser: one regular expression, one pass over the text (`vnnlib._Parser.run`).

Alternatives, tried in this order at each position (`m.lastindex` is the token's kind):
  1 a whole `(assert (<=|>=|<|> X_i number))` (groups 2-4: op, var, number), the fast path;
  5 a whole `(declare-const NAME SORT)` (groups 6-7);
  8 a whole `(<=|>=|<|> NAME number)` (groups 9-11: `vnnlib_simple.py`);
  12 a comment, 13 '(', 14 ')', 15 any other atom (symbol or number).
Whitespace between tokens is skipped by `finditer`; every other character belongs to a token.
"""
from __future__ import annotations

import re

from .vnnlib_formula import _NUM_RE

TOKEN = re.compile(
    r"(\(\s*assert\s*\(\s*([<>]=?)\s+(X_\d+)\s+(" + _NUM_RE + r")\s*\)\s*\))"
    r"|(\(\s*declare-const\s+([^\s();]+)\s+([^\s();]+)\s*\))"
    r"|(\(\s*([<>]=?)\s+([^\s();]+)\s+(" + _NUM_RE + r")\s*\))"
    r"|(;[^\n]*)|(\()|(\))|([^\s();]+)")
T_FAST_ASSERT, T_DECLARE, T_SIMPLE, T_COMMENT, T_OPEN, T_CLOSE = 1, 5, 8, 12, 13, 14
