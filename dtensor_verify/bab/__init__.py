"""Branch and bound (beta-CROWN): the complete stage of the verifier, after alpha-CROWN.

    problem.py     what stays fixed (BabProblem), what comes out (BabResult, BabStats)
    roots.py       root domains from the pipeline's open pairs and their RootState
    domains.py     a batch of domains; the store that hands out the worst first; splitting
    branching/     which neuron to split (one module per heuristic: babsr, fsb, input_sb / input_fsb,
                   general: ReLU and general-activation neurons in one ranking)
    split_kinds.py the kinds of split (ReLU, input, general) and which one a run uses
    general_split.py   cutting a sigmoid / sin / product-operand neuron's interval in two
    general_refresh.py the layers behind a cut bounded again
    budget.py      batch size and queue length from the free memory
    solver.py      pick -> split -> bound -> prune -> add, on a clock (options.py: BabOptions)
    wide.py        wide rounds: several ReLU splits per parent while the frontier leaves room
    comm.py        how workers (one per process, or spread over the `dp` mesh dim) agree

`make_roots` turns the pipeline's open (region, disjunct) pairs and their alpha-CROWN state
into root domains; `BabSolver.solve` decides them.
"""
from __future__ import annotations

from .domains import NO_DECISION, Domains, DomainStore, split
from .problem import BabProblem, BabResult, BabStats
from .roots import RootState, make_roots
from .solver import BabOptions, BabSolver

__all__ = ["BabOptions", "BabProblem", "BabResult", "BabStats", "BabSolver", "Domains", "DomainStore", "split",
           "make_roots", "RootState", "NO_DECISION"]
