"""Kinds of split in the one branch and bound: what a split does to a domain, and which kind a run uses.

A domain's `decision` row names its next split; `decision[:, 0]` tells the kind:

    >= 0          ReLU split: relu index, flat neuron. Children clamp the neuron's pre-activation
                  bounds (`l = 0` / `u = 0`) and carry the sign (beta-CROWN's constraint).
    INPUT_SPLIT   input split: flat input dimension. Children halve the domain's own sub-box
                  there; their intermediate bounds are recomputed on the smaller box
                  (`input_bab.refreshed`: CROWN on the child box, intersected with the
                  parent's, which stay valid since the child box lies inside the parent's).

    <= GENERAL_SPLIT  general split (`general_split.py`): the interval of a neuron of a node
                  feeding a sigmoid / tanh / sin / GELU / ... or a product is cut at a point;
                  children narrow that node's `bounds` and every op re-derives its relaxation
                  from the narrower interval. Split by 'relu' runs (neuron splits) of networks
                  with such ops, ranked with the ReLU neurons (`branching/general.py`).

The solver only asks `needs_refresh` (children whose intermediate bounds must be recomputed)
and calls `domains.split`, which dispatches on the code.

Which kind a run uses (`BabOptions.split`): 'relu', 'input', or 'auto': input splitting when
the property perturbs few input dimensions (`max_input_dims`) and the network has more than
`FEW_RELUS` ReLU neurons, or when it has no ReLU to split. A network with few ReLU neurons is split
on them: with exact leaves (`bab/exact.py`) that search is finite and complete, while halving boxes
never ends on an instance whose exact margin is near 0 (seen on 3-input, 20-ReLU networks with
margins of 1e-6..1e-4: input splitting timed out where ReLU splitting decides in a second).
A network with other nonlinear ops (no exact leaves) splits inputs whenever few are perturbed,
else neurons ('relu': ReLU and general splits). (nn4sys pensieve_big_parallel, 32 perturbed inputs:
neither kind decided its hard instances on a CPU, docs/BENCHMARKS.md; the ratio boxes of
`methods/ratio_bounds.py` decide all 77 before branch and bound, so the rule stays.)
"""
from __future__ import annotations

import torch

from .domains import INPUT_SPLIT

SPLIT_MODES = ("auto", "relu", "input")
FEW_RELUS = 48            # auto: networks with at most this many ReLU neurons split ReLUs
MIN_WIDTH = 1e-7          # a dimension narrower than this (relative to its magnitude) is not split


def splittable_dims(box: tuple) -> torch.Tensor:
    """[n, N] bool: input dimensions of each box wide enough to halve."""
    lo, hi = (t.flatten(1) for t in box)
    scale = torch.maximum(lo.abs(), hi.abs()).clamp(min=1.0)
    return (hi - lo) > MIN_WIDTH * scale


def perturbed_dims(lower: torch.Tensor, upper: torch.Tensor) -> int:
    """The largest number of input dimensions with nonzero width in any of the boxes [P, *S]."""
    return int(((upper - lower).flatten(1) > 0).sum(1).max()) if lower.numel() else 0


def has_general(graph) -> bool:
    """True when the graph has nonlinear ops other than ReLU (general splits apply)."""
    return any(n.op is not None and n.op.needs_input_bounds and not getattr(n.op, "splittable", False)
               for n in graph.nodes)


def relu_neurons(graph) -> int:
    """The number of ReLU neurons (per sample) of a bound graph."""
    import math

    return sum(math.prod(n.op.out_shape) for n in graph.nodes if n.op is not None and n.op.needs_input_bounds)


def resolve_mode(mode: str, n_relus: int, n_perturbed: int, max_input_dims: int, general: bool = False) -> str:
    """'relu' or 'input' for this run (see the module docstring); `n_relus` counts neurons;
    `general`: the network has nonlinear ops other than ReLU (no exact leaves: few inputs split)."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {', '.join(SPLIT_MODES)}, not '{mode}'")
    if mode != "auto":
        return mode
    if general:
        return "input" if n_perturbed <= max_input_dims else "relu"
    return "input" if n_relus == 0 or (n_perturbed <= max_input_dims and n_relus > FEW_RELUS) else "relu"


def needs_refresh(decision: torch.Tensor) -> torch.Tensor:
    """[2n] bool over the children `split` makes from parents with these decisions [n, 2]:
    those whose region changed in a way their intermediate bounds do not reflect yet."""
    flag = decision[:, 0] == INPUT_SPLIT
    return torch.cat([flag, flag])

