"""General splits: cut the pre-activation interval of one neuron of a non-ReLU nonlinearity.

A general split of a domain names a node whose bounds the domain carries and that feeds a
nonlinear op other than ReLU (sigmoid, tanh, sin, GELU, exp, ... or an operand of a product
Mul / MatMul), a flat neuron of it, and splits that neuron's interval [l, u] at a point p:
the first child keeps [p, u], the second [l, p]. Each child's domain is the set of inputs of
its parent's domain where the neuron lies in its half, so the two children cover the parent
(p belongs to both). Every op re-derives its relaxation from the narrower interval (tighter on
the smaller interval), which is sound without more; in addition, where the node feeds an
elementwise op (`BabProblem.beta_of`), the cut neuron is marked in that op's mask
(`Domains.signs[op]`) and beta-CROWN adds `b_lo (l - z) + b_up (z - u)` (b >= 0, both terms <= 0 on
the domain) to the bound, as it does for ReLU splits: the constraint then tightens the other
neurons too (`ops.activation._split_terms`).

Codes: `decision[:, 0] = GENERAL_SPLIT - j` for node j of `BabProblem.general` (so -3, -4, ...;
`decision[:, 1]` the flat neuron). The point is chosen from the domain's bounds when it is split
(`split_point`), so a decision needs nothing more.
"""
from __future__ import annotations

import torch

GENERAL_SPLIT = -3        # decision[:, 0] <= GENERAL_SPLIT: a general split of node GENERAL_SPLIT - code
MIN_WIDTH = 1e-5          # an interval narrower than this (relative to its magnitude) is not split
ZERO_SHARE = 0.1          # split at 0 when 0 cuts at least this share of the interval off each side


def code_of(j):
    """decision[:, 0] of a general split of node j (an int or a tensor)."""
    return GENERAL_SPLIT - j


def node_of(code):
    """The node index of a general-split code (inverse of `code_of`)."""
    return GENERAL_SPLIT - code


def is_general(code: torch.Tensor) -> torch.Tensor:
    return code <= GENERAL_SPLIT


def split_point(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Where to cut each interval: 0 when it crosses 0 well inside (S-shaped functions change
    curvature there, products change sign), else the midpoint."""
    width = upper - lower
    inside = (lower < -ZERO_SHARE * width) & (upper > ZERO_SHARE * width)
    return torch.where(inside, torch.zeros_like(lower), lower + width / 2)


def splittable(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Neurons wide enough to split (finite bounds, width above MIN_WIDTH relative to scale)."""
    scale = torch.maximum(lower.abs(), upper.abs()).clamp(min=1.0)
    finite = torch.isfinite(lower) & torch.isfinite(upper)
    return finite & ((upper - lower) > MIN_WIDTH * scale)


def split_general(kids, dec: torch.Tensor, side: torch.Tensor, general: list, beta_of: dict | None = None):
    """Narrow each child's split neuron (rows whose decision is a general split), in place: the
    rows with side < 0 (the first children) keep [p, u], the others [l, p]. Where the node has an
    op that carries split constraints (`beta_of`), the neuron is marked in that op's mask."""
    for j, name in enumerate(general):
        rows = (dec[:, 0] == code_of(j)).nonzero().flatten()
        if rows.numel() == 0:
            continue
        neuron = dec[rows, 1]
        lower, upper = kids.bounds[name]
        lo, up = lower.flatten(1).clone(), upper.flatten(1).clone()
        a, b = lo[rows, neuron], up[rows, neuron]
        p = split_point(a, b).clamp(min=a, max=b)
        upper_half = side[rows] < 0
        lo[rows, neuron] = torch.where(upper_half, p, a)
        up[rows, neuron] = torch.where(upper_half, b, p)
        kids.bounds[name] = (lo.reshape(lower.shape), up.reshape(upper.shape))
        op = (beta_of or {}).get(name)
        if op is not None and op in kids.signs:
            mask = kids.signs[op].flatten(1).clone()
            mask[rows, neuron] = 1.0
            kids.signs[op] = mask.reshape(kids.signs[op].shape)
