"""Bound algorithms. They walk the bound graph and call each op's rules; they know nothing of
op internals nor of how tensors are placed (they ask the graph's `Layout`)."""
from .alpha_crown import AlphaOptions, alpha_crown
from .crown import CrownOptions, backward_bound, crown, intermediate_bounds
from .ibp import ibp

__all__ = ["ibp", "crown", "backward_bound", "intermediate_bounds", "alpha_crown", "CrownOptions", "AlphaOptions"]
