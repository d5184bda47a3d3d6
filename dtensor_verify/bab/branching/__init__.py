"""Branching heuristics: which ReLU neuron each domain splits next. One small module each.

A heuristic is a function `(domains, lA, ctx) -> decision [n, 2]` (relu index, flat neuron; -1
where no unstable neuron is left). `lA` holds the lower A-matrix that reached each ReLU's output
in the domain's last bound (`BetaResult.lA`); `ctx` (a `BranchingContext`) gives the relus, their
pre-activations and, for heuristics that try candidate splits, a function that bounds domains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .babsr import babsr, intercept_scores
from .fsb import fsb

HEURISTICS = {"babsr": babsr, "fsb": fsb}


@dataclass
class BranchingContext:
    relus: list                      # relu node names, in graph order
    pre_of: dict                     # relu node -> its pre-activation node
    d: object                        # [P, K] spec offsets of every pair
    row_mask: object                 # [P, K] real rows of every pair
    bound_once: Callable             # Domains -> [n, K] lower bounds of C y (no optimisation)
    candidates: int = 3              # fsb: candidates tried per domain


def choose(name: str, domains, lA, ctx: BranchingContext):
    return HEURISTICS[name](domains, lA, ctx)


__all__ = ["HEURISTICS", "BranchingContext", "choose", "babsr", "fsb", "intercept_scores"]
