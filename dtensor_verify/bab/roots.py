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
                                        # other alpha ops -> [2, K_i, *S] (their lower bound's two
                                        # parameters), or None (then CROWN's choice)


def root_alphas(output_alphas: dict, b: int, pos: int, k: int) -> dict | None:
    """`RootState.alphas` of one pair from alpha-CROWN's output slopes (`AlphaResult.output_alphas`):
    box b, rows pos:pos+k. ReLU: [2 (lA, uA), B, K, *S] -> its lA side; other alpha ops: [4, ...] ->
    their two lA-side ones. None without slopes."""
    return {r: a[0, b, pos:pos + k] if a.shape[0] == 2 else a[:2, b, pos:pos + k]
            for r, a in output_alphas.items()} or None


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
    pre_nodes = sorted({problem.pre_of[r] for r in problem.relus} | set(problem.general))
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
    slopes.update(_general_slopes(problem, roots, root_bounds, pair, K))
    for node, op in problem.beta_of.items():        # general splits' constraints, none yet
        if op in slopes:
            signs[op] = torch.zeros_like(root_bounds[node][0])
            multipliers[op] = torch.zeros_like(slopes[op])
    return Domains(pair=pair, lower=lower, bounds=root_bounds, signs=signs, alphas=slopes, betas=multipliers,
                   depth=torch.zeros(n, dtype=torch.long, device=device),
                   decision=torch.full((n, 2), NO_DECISION, dtype=torch.long, device=device))


def _general_slopes(problem: BabProblem, roots: list[RootState], root_bounds: dict, pair, K: int) -> dict:
    """Relaxation parameters of the other alpha ops (sigmoid, products, ...): [n, 2, K, *P], the two
    that the lower bound's backward sweep reads (`ops.activation`: lower / upper line of the lA
    side), from the pair's alpha-CROWN state where it has them, else CROWN's choice."""
    graph, out = problem.graph, {}
    for name in problem.general_ops:
        node = graph[name]
        if not getattr(node.op, "has_alpha", False):
            continue
        box = (problem.box_lower[pair], problem.box_upper[pair])
        ins = [box if i == graph.input_name else root_bounds[i] for i in node.inputs]
        n = len(pair)
        if hasattr(node.op, "init_alpha_inputs"):
            init = node.op.init_alpha_inputs(ins)
        else:
            init = node.op.init_alpha(*ins[0])                  # [P, n, *S]
        init = init[:2].transpose(0, 1).unsqueeze(2)            # [n, 2, 1, *S]
        a = init.expand(n, 2, K, *init.shape[3:]).clone()
        for i, s in enumerate(roots):
            given = None if s.alphas is None else s.alphas.get(name)
            if given is not None and given.dim() == a.dim() - 1 and given.shape[0] == 2:
                a[i, :, :given.shape[1]] = given
        out[name] = problem.layout.alpha_param(a, node, graph.output_name).contiguous()
    return out
