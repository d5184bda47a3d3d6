"""Root domains: where branch and bound starts, from what the incomplete methods left open."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.relu import relaxation
from .domains import NO_DECISION, Domains
from .problem import BabProblem


@dataclass
class RootState:
    """What a bound stage hands to branch and bound for one (region, disjunct) pair."""
    bounds: dict                        # pre-activation node -> (lower, upper) [*S] (unbatched)
    alphas: dict | None = None          # relu node -> [K_i, *S] lower slopes of the pair's rows,
                                        # or None (then CROWN's adaptive slopes)


def make_roots(problem: BabProblem, pairs: list[int], roots: list[RootState], lowers: list[torch.Tensor]
               ) -> Domains:
    """One root domain per pair.

    roots[i]: pair i's intermediate bounds and slopes (see `RootState`); lowers[i]: [K_i] lower
    bounds of its rows of C y - d. Rows beyond K_i (padding up to K) are ignored by the solver.
    """
    layout, graph = problem.layout, problem.graph
    K = problem.C.shape[1]
    device = problem.d.device
    n = len(pairs)
    pair = torch.tensor(pairs, dtype=torch.long, device=device)
    pre_nodes = sorted({problem.pre_of[r] for r in problem.relus})
    root_bounds = {name: (torch.stack([s.bounds[name][0] for s in roots]),
                          torch.stack([s.bounds[name][1] for s in roots])) for name in pre_nodes}
    lower = torch.full((n, K), -torch.inf, device=device)
    for i, lo in enumerate(lowers):
        lower[i, :lo.shape[0]] = lo + problem.d[pairs[i], :lo.shape[0]]      # stored as bounds of C y
    slopes, multipliers, signs = {}, {}, {}
    for relu in problem.relus:
        lo, up = root_bounds[problem.pre_of[relu]]
        adaptive = relaxation(lo, up)[2].unsqueeze(1).expand(n, K, *lo.shape[1:]).clone()
        for i, s in enumerate(roots):
            if s.alphas is not None and relu in s.alphas:
                adaptive[i, :s.alphas[relu].shape[0]] = s.alphas[relu]
        slopes[relu] = layout.alpha_param(adaptive, graph[relu], graph.output_name).contiguous()
        multipliers[relu] = torch.zeros_like(slopes[relu])
        signs[relu] = torch.zeros_like(lo)
    return Domains(pair=pair, lower=lower, bounds=root_bounds, signs=signs, alphas=slopes, betas=multipliers,
                   depth=torch.zeros(n, dtype=torch.long, device=device),
                   decision=torch.full((n, 2), NO_DECISION, dtype=torch.long, device=device))
