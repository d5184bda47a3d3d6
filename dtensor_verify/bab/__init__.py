"""Branch and bound (beta-CROWN): the complete stage of the verifier, after alpha-CROWN.

    domains.py     a batch of domains; the store that hands out the worst first; splitting
    branching/     which neuron to split (one module per heuristic: babsr, fsb)
    solver.py      pick -> split -> bound -> prune -> add, on a clock
    comm.py        how workers (one per process, or spread over the `dp` mesh dim) agree

`make_roots` turns the pipeline's open (region, disjunct) pairs and their alpha-CROWN state
into root domains; `BabSolver.solve` decides them.
"""
from __future__ import annotations

import torch

from ..ops.relu import relaxation
from .domains import NO_DECISION, Domains, DomainStore, split
from .solver import BabOptions, BabProblem, BabResult, BabSolver

__all__ = ["BabOptions", "BabProblem", "BabResult", "BabSolver", "Domains", "DomainStore", "split",
           "make_roots", "NO_DECISION"]


def make_roots(problem: BabProblem, pairs: list[int], bounds: list[dict], lowers: list[torch.Tensor],
               alphas: list[dict | None]) -> Domains:
    """One root domain per pair.

    bounds[i]: pre-activation -> (lower, upper) [*S] for pair i (alpha-CROWN's, unbatched);
    lowers[i]: [K_i] lower bounds of its rows of C y - d; alphas[i]: relu -> [K_i, *S] lower
    slopes of its rows from alpha-CROWN, or None (then CROWN's adaptive slopes). Rows beyond K_i
    (padding up to K) are ignored by the solver.
    """
    layout, graph = problem.layout, problem.graph
    K = problem.C.shape[1]
    device = problem.d.device
    n = len(pairs)
    pair = torch.tensor(pairs, dtype=torch.long, device=device)
    pre_nodes = sorted({problem.pre_of[r] for r in problem.relus})
    root_bounds = {name: (torch.stack([b[name][0] for b in bounds]), torch.stack([b[name][1] for b in bounds]))
                   for name in pre_nodes}
    lower = torch.full((n, K), -torch.inf, device=device)
    for i, lo in enumerate(lowers):
        lower[i, :lo.shape[0]] = lo + problem.d[pairs[i], :lo.shape[0]]      # stored as bounds of C y
    slopes, multipliers, signs = {}, {}, {}
    for relu in problem.relus:
        node = graph[relu]
        lo, up = root_bounds[problem.pre_of[relu]]
        adaptive = relaxation(lo, up)[2].unsqueeze(1).expand(n, K, *lo.shape[1:]).clone()
        for i, a in enumerate(alphas):
            if a is not None and relu in a:
                adaptive[i, :a[relu].shape[0]] = a[relu]
        slopes[relu] = layout.alpha_param(adaptive, node, graph.output_name).contiguous()
        multipliers[relu] = torch.zeros_like(slopes[relu])
        signs[relu] = torch.zeros_like(lo)
    return Domains(pair=pair, lower=lower, bounds=root_bounds, signs=signs, alphas=slopes, betas=multipliers,
                   depth=torch.zeros(n, dtype=torch.long, device=device),
                   decision=torch.full((n, 2), NO_DECISION, dtype=torch.long, device=device))
