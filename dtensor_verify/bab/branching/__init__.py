"""Branching heuristics: which ReLU neuron (or input dimension) each domain splits next. One
small module each; the input ones (`input_sb`, `input_fsb`) return INPUT_SPLIT decisions.

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
from .input_fsb import input_fsb
from .input_sb import input_sb
from .input_widest import input_widest

HEURISTICS = {"babsr": babsr, "fsb": fsb, "input_sb": input_sb, "input_fsb": input_fsb,
              "input_widest": input_widest}
INPUT_HEURISTICS = ("input_fsb", "input_sb", "input_widest")


@dataclass
class BranchingContext:
    relus: list                      # relu node names, in graph order
    pre_of: dict                     # relu node -> its pre-activation node
    d: object                        # [P, K] spec offsets of every pair
    row_mask: object                 # [P, K] real rows of every pair
    bound_once: Callable             # (Domains, refresh=False) -> [n, K] lower bounds of C y (no
                                     # optimisation; refresh: recompute intermediate bounds on each box)
    candidates: int = 3              # fsb / input_fsb: candidates tried per domain
    input_name: str = ""             # the input node (lA[input_name]: A w.r.t. the input)
    pair_box: tuple | None = None    # (lower, upper) [P, *S]: each pair's whole input box


def choose(name: str, domains, lA, ctx: BranchingContext):
    return HEURISTICS[name](domains, lA, ctx)


__all__ = ["HEURISTICS", "INPUT_HEURISTICS", "BranchingContext", "choose", "babsr", "fsb", "input_fsb",
           "input_sb", "intercept_scores"]
