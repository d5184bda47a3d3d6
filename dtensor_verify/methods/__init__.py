"""Bound algorithms. They walk the bound graph and call each op's rules; they know nothing of
op internals nor of how tensors are placed (they ask the graph's `Layout`). `dispatch.run_method`
is the one way to run them by name."""
from .alpha_crown import AlphaOptions, AlphaResult, alpha_crown
from .crown import CrownOptions, backward_bound, crown, intermediate_bounds
from .dispatch import METHODS, MethodBounds, normalize_method, run_method
from .ibp import ibp

__all__ = ["ibp", "crown", "backward_bound", "intermediate_bounds", "alpha_crown", "CrownOptions", "AlphaOptions",
           "AlphaResult", "METHODS", "MethodBounds", "normalize_method", "run_method"]
