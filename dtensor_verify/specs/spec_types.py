"""What a property reader produces: input boxes (`Region`) with their unsafe output polytopes
(`OutputDisjunct`), gathered in a `Property` (the VNN-LIB 1.0 reader, `specs/vnnlib.py`, builds
them; `specs/__init__` exports them)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class OutputDisjunct:
    """One conjunction of linear output constraints: unsafe iff every row of `C @ y <= d` holds
    (`C @ y < d` for the rows marked strict)."""
    C: np.ndarray          # [k, n_outputs]
    d: np.ndarray          # [k]
    strict: np.ndarray | None = None    # [k] bool: the row came from `<` / `>`; None: none strict

    def strict_rows(self) -> np.ndarray:
        return np.zeros(len(self.d), bool) if self.strict is None else np.asarray(self.strict, bool)


@dataclass(eq=False)
class Region:
    """One input box together with the output disjunction that is unsafe for it."""
    lower: np.ndarray      # [n_inputs]
    upper: np.ndarray      # [n_inputs]
    disjuncts: list[OutputDisjunct]   # unsafe iff ANY disjunct holds
    lower_strict: np.ndarray | None = None   # [n_inputs] bool: `(> X_i lower)`; None: none strict
    upper_strict: np.ndarray | None = None   # [n_inputs] bool: `(< X_i upper)`


@dataclass(eq=False)
class Property:
    """A whole property: violated iff some region has an input reaching one of its disjuncts.

    `regions` is empty only when every term of the formula is trivially false (a constant
    constraint such as `(<= 1 0)`, or an input box that is empty, e.g. `X_0` in `[1, -1]`):
    then the property cannot be violated (`note` says which).
    """
    n_inputs: int
    n_outputs: int
    regions: list[Region]
    path: str | None
    empty_terms: int = 0            # terms dropped because their input box is empty (false terms)
    note: str | None = None         # why `regions` is empty, when it is (said with the verdict)
