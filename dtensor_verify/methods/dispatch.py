"""One entry point for the bound methods: the API, the verdict pipeline and branch and bound's
roots ask here, by name, and get one typed result.

    res = run_method("alpha-crown", graph, box, C, layout)
    res.lower, res.upper, res.intermediate, res.output_alphas
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputSpecError
from ..layout import DEFAULT_LAYOUT, Layout
from .alpha_crown import AlphaOptions, alpha_crown
from .crown import CrownOptions, crown
from .ibp import ibp_output

METHODS = ("ibp", "crown", "alpha-crown")
_ALIASES = {"alpha": "alpha-crown", "alphacrown": "alpha-crown", "alpha-crown": "alpha-crown",
            "crown": "crown", "ibp": "ibp", "backward": "crown"}

__all__ = ["METHODS", "MethodBounds", "normalize_method", "run_method"]


def normalize_method(method: str) -> str:
    """The method's canonical name ('alpha_crown', 'Alpha', ... -> 'alpha-crown')."""
    m = str(method).lower().replace("_", "-")
    if m not in _ALIASES:
        raise InputSpecError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    return _ALIASES[m]


@dataclass
class MethodBounds:
    """Bounds of C f(x) from one method, and what a later stage can start from."""
    method: str
    lower: torch.Tensor | None                  # [B, K]
    upper: torch.Tensor | None                  # [B, K]
    intermediate: dict | None = None            # pre-activation -> (lower, upper) [B, *S] (not IBP)
    output_alphas: dict = field(default_factory=dict)   # relu -> [2, B, K_local, *S] (alpha-CROWN)
    iterations: int | None = None               # optimisation steps (alpha-CROWN)
    crown_lower: torch.Tensor | None = None     # alpha-CROWN's starting point
    crown_upper: torch.Tensor | None = None


def run_method(method: str, graph, box, C: torch.Tensor | None = None, layout: Layout = DEFAULT_LAYOUT, *,
               crown_options: CrownOptions | None = None, alpha_options: AlphaOptions | None = None,
               want_lower: bool = True, want_upper: bool = True, on_step=None, stop_above=None,
               crown_bounds=None) -> MethodBounds:
    """Bounds of `C f(x)` over `box` by `method` (see `METHODS`; aliases accepted). `stop_above`
    ([B, K]): alpha-CROWN stops once every row's lower bound exceeds it. `crown_bounds`: CROWN's
    intermediate bounds of the same boxes, alpha-CROWN's start (see `alpha_crown`)."""
    method = normalize_method(method)
    if method == "ibp":
        with torch.no_grad():
            lower, upper = ibp_output(graph, box, C, layout)
        return MethodBounds(method, lower, upper)
    if method == "crown":
        lower, upper, bounds = crown(graph, box, C, layout, crown_options, want_lower, want_upper)
        return MethodBounds(method, lower, upper, bounds)
    opts = alpha_options or AlphaOptions()
    if crown_options is not None:
        opts.crown = crown_options
    res = alpha_crown(graph, box, C, layout, opts, want_lower, want_upper, on_step=on_step, stop_above=stop_above,
                      crown_bounds=crown_bounds)
    return MethodBounds(method, res.lower, res.upper, res.intermediate, res.output_alphas, res.iterations,
                        res.crown_lower, res.crown_upper)
