"""Branching heuristics: which ReLU neuron (or input dimension) each domain splits next. One
small module each; the input ones (`input_sb`, `input_fsb`) return INPUT_SPLIT decisions, the
mixed ones (`mixed_sr`, `mixed_fsb`, general.py) ReLU or general splits (general_split.py).

A heuristic is a function `(domains, lA, ctx) -> decision [n, 2]` (relu index, flat neuron; -1
where no unstable neuron is left). `lA` holds the lower A-matrix that reached each ReLU's output
in the domain's last bound (`BetaResult.lA`); `ctx` (a `BranchingContext`) gives the relus, their
pre-activations and, for heuristics that try candidate splits, a function that bounds domains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .babsr import babsr, babsr_ranked, intercept_scores
from .fsb import fsb, fsb_ranked
from .general import mixed_fsb, mixed_sr
from .input_fsb import input_fsb
from .input_sb import input_sb
from .input_widest import input_widest

HEURISTICS = {"babsr": babsr, "fsb": fsb, "input_sb": input_sb, "input_fsb": input_fsb,
              "input_widest": input_widest, "mixed_sr": mixed_sr, "mixed_fsb": mixed_fsb}
# Networks with general nonlinearities (sigmoid, products, ...) split neurons by these instead.
MIXED = {"babsr": "mixed_sr", "fsb": "mixed_fsb"}
INPUT_HEURISTICS = ("input_fsb", "input_sb", "input_widest")
# Heuristics that rank several ReLU neurons per domain (wide rounds, bab/wide.py):
# (domains, lA, ctx, width) -> [n, width, 2], best first.
RANKED = {"babsr": babsr_ranked, "fsb": fsb_ranked}


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
    graph: object = None             # the bound graph (general splits: which op a node feeds)
    general: tuple = ()              # nodes whose neurons general splits cut (BabProblem.general)
    general_ops: tuple = ()          # the non-ReLU nonlinear nodes (their lA is scored)
    beta_of: dict | None = None      # general node -> the op carrying its split constraints
    affordable: tuple | None = None  # per general node: may branching cut it (refresh_cost; None: all)


def context_for(problem, bound_once, candidates: int) -> BranchingContext:
    """The context of a branch-and-bound problem (`bab.problem.BabProblem`)."""
    from ..refresh_cost import affordable_general

    return BranchingContext(problem.relus, problem.pre_of, problem.d, problem.row_mask, bound_once, candidates,
                            problem.graph.input_name, (problem.box_lower, problem.box_upper), problem.graph,
                            tuple(problem.general), tuple(problem.general_ops), problem.beta_of,
                            tuple(affordable_general(problem)))


def mixed(name: str, problem) -> str:
    """The neuron heuristic of a run: `name`, or its mixed form on networks with general splits."""
    return MIXED.get(name, name) if problem.general else name


def choose(name: str, domains, lA, ctx: BranchingContext):
    return HEURISTICS[name](domains, lA, ctx)


def choose_ranked(name: str, domains, lA, ctx: BranchingContext, width: int):
    """[n, width, 2]: each domain's `width` best splits by heuristic `name` (one of RANKED)."""
    return RANKED[name](domains, lA, ctx, width)


__all__ = ["HEURISTICS", "INPUT_HEURISTICS", "MIXED", "RANKED", "choose_ranked", "context_for", "mixed", "mixed_fsb", "mixed_sr", "BranchingContext", "choose", "babsr", "fsb", "input_fsb",
           "input_sb", "intercept_scores"]
