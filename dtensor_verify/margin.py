"""The margin of a property's disjunct: one formula for the pipeline, branch and bound and the
branching heuristics.

A (region, disjunct) pair holds rows `C y <= d` (padded to a common K with ignored rows). The
disjunct is *violated* at y when every real row holds, i.e. when `max_rows(C y - d) <= 0`, and
*proved infeasible* on a domain when some real row has `lower(C y) - d > 0`. Both read the same
number: the best real row of `values - d`, where `values` is `C y` (an attack) or a lower
bound of `C y` (a bound). Padded rows count as -inf, so they never prove and never block.
"""
from __future__ import annotations

import torch

__all__ = ["spec_rows", "row_margins", "margin", "best_row", "output_margin"]


def spec_rows(C: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`C y` per pair: C [P, K, n_out], y [..., P, n_out] -> [..., P, K]."""
    return torch.einsum("pkn,...pn->...pk", C, y)


def row_margins(values: torch.Tensor, d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`values - d` with padded rows at -inf; values [..., K], d and mask broadcast to it."""
    return (values - d).masked_fill(~mask, -torch.inf)


def margin(values: torch.Tensor, d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The best real row of `values - d` ([..., K] -> [...]): <= 0 violated (values = C y),
    > 0 proved (values = a lower bound of C y)."""
    return row_margins(values, d, mask).max(-1).values


def best_row(values: torch.Tensor, d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The row that gives `margin` ([..., K] -> [...] long)."""
    return row_margins(values, d, mask).argmax(-1)


def output_margin(y: torch.Tensor, C: torch.Tensor, d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`margin` of the network outputs y [..., P, n_out] for the pairs' rows C [P, K, n_out]."""
    return margin(spec_rows(C, y), d, mask)
