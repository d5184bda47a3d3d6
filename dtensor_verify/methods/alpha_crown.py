"""alpha-CROWN: CROWN with the ReLU lower slopes optimised by projected gradient ascent.

Every backward sweep (each intermediate layer's and the output's) gets its own slopes, one per
(bound row, ReLU neuron) and per side (lA / uA), as in alpha,beta-CROWN. All sweeps are redone
each iteration, so intermediate bounds tighten too and gradients reach their slopes. Adam,
projection to [0, 1], best bound kept per row and per intermediate neuron, early stop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..layout import DEFAULT_LAYOUT, Layout
from ..memory import tag
from ..ops.softmax_sum import best_of_shifts
from .optimize import ParamGroup, maximise
from .crown import (CrownOptions, default_spec, intermediate_bounds, node_bound_rows, output_bound, scatter_rows,
                    tighter_than_ibp)


@dataclass
class AlphaOptions:
    iterations: int = 20
    lr: float = 0.1
    # Stop when the summed bound improved by less than `tol` (relative) over `patience` iterations.
    patience: int = 5
    tol: float = 1e-4
    optimize_intermediate: bool = True
    crown: CrownOptions = field(default_factory=CrownOptions)


@dataclass
class AlphaResult:
    """What alpha-CROWN hands on: the bounds, CROWN's (its starting point), and the state that
    branch and bound starts from (intermediate bounds, slopes)."""
    lower: torch.Tensor | None                   # [B, K] best lower bounds of C f(x) (gathered rows)
    upper: torch.Tensor | None                   # [B, K]
    crown_lower: torch.Tensor | None             # CROWN's bounds before any step
    crown_upper: torch.Tensor | None
    iterations: int                              # optimisation steps run
    intermediate: dict                           # pre-activation node -> (lower, upper) [B, *S], best seen
    alphas: dict                                 # start node -> relu node -> slopes [2, B, K_local, *S]
    output_name: str                             # the start node of the output's sweep

    @property
    def output_alphas(self) -> dict:
        """relu node -> [2, B, K_local, *S] slopes (lower, upper side) of the output's sweep,
        detached (K_local: this rank's rows); {} without a ReLU."""
        return {r: a.detach() for r, a in self.alphas.get(self.output_name, {}).items()}


def _relu_nodes(graph):
    """Nodes whose op has relaxation parameters (ReLU slopes, tangent points of other activations)."""
    return [n for n in graph.nodes if n.op is not None and getattr(n.op, "has_alpha", False)]


def init_alphas(graph, bounds, starts: dict[str, int], layout: Layout):
    """Slopes initialised to CROWN's adaptive choice, for each start node and upstream ReLU."""
    alphas = {}
    relus = _relu_nodes(graph)
    for start, n_rows in starts.items():
        k = len(range(n_rows)[layout.rows(start, n_rows).mine])
        ancestors = graph.ancestors(start)
        per_start = {}
        for relu in relus:
            if relu.name not in ancestors or relu.inputs[0] == start:
                continue
            if any(i == start for i in relu.inputs):
                continue
            if hasattr(relu.op, "init_alpha_inputs"):                  # ops of several inputs
                init = relu.op.init_alpha_inputs([bounds[i] for i in relu.inputs])
            else:
                init = relu.op.init_alpha(*bounds[relu.inputs[0]])    # [P, B, *S]
            a = init.unsqueeze(2).expand(-1, -1, k, *([-1] * (init.dim() - 2)))
            per_start[relu.name] = layout.alpha_param(a, relu, start).clone().requires_grad_(True)
        alphas[start] = per_start
    return alphas


def alpha_crown(graph, box, C=None, layout: Layout = DEFAULT_LAYOUT, opts: AlphaOptions | None = None,
                want_lower=True, want_upper=True, on_step=None) -> AlphaResult:
    """Optimised bounds of C f(x) over the box (see `AlphaResult`)."""
    opts = opts or AlphaOptions()
    batch = box[0].shape[0]
    if C is None:
        C = default_spec(graph, batch, box[0].dtype, box[0].device)
    with torch.no_grad():
        bounds, rows = intermediate_bounds(graph, box, layout, opts.crown)
        best_lo, best_up = best_of_shifts(graph, graph.output_name, lambda: output_bound(
            graph, bounds, C, layout, want_lower=want_lower, want_upper=want_upper, gather=False))
        if opts.crown.intersect_ibp:
            # CROWN's start (and so alpha's result) is never looser than IBP's, like `crown`.
            mine = C[:, layout.rows(graph.output_name, C.shape[1]).mine]
            best_lo, best_up = tighter_than_ibp(graph, bounds, mine, best_lo, best_up)
    crown_lo, crown_up = best_lo, best_up
    starts = {graph.output_name: C.shape[1]}
    if opts.optimize_intermediate:
        starts.update({name: len(r) for name, r in rows.items()})
    with tag("alphas"):
        alphas = init_alphas(graph, bounds, starts, layout)
    params = [a for per_start in alphas.values() for a in per_start.values()]
    best = {"lo": best_lo, "up": best_up, "bounds": {k: (v[0].detach(), v[1].detach()) for k, v in bounds.items()}}

    def evaluate(it):
        cur = {graph.input_name: box}
        for name in graph.preactivation_nodes():
            if name not in alphas or name not in rows:
                cur[name] = best["bounds"][name]
                continue
            start_alphas = alphas[name]

            def slice_alphas(s, e, start_alphas=start_alphas):
                return {r: a[:, :, s:e] for r, a in start_alphas.items()}

            lo, up = node_bound_rows(graph, name, rows[name], cur, layout, opts.crown, batch, slice_alphas)
            ref_lo, ref_up = best["bounds"][name]
            cur[name] = scatter_rows(ref_lo, ref_up, rows[name], lo, up, intersect=True)
        lo, up = output_bound(graph, cur, C, layout, alphas[graph.output_name], want_lower, want_upper,
                              gather=False)
        loss = 0.0
        if lo is not None:
            loss = loss - lo.sum()
        if up is not None:
            loss = loss + up.sum()
        return loss, (cur, lo, up)

    def keep_best(state):
        cur, lo, up = state
        if lo is not None:
            best["lo"] = torch.maximum(best["lo"], lo.detach())
        if up is not None:
            best["up"] = torch.minimum(best["up"], up.detach())
        for name in rows:
            if name in cur:
                l_new, u_new = cur[name]
                l_old, u_old = best["bounds"][name]
                best["bounds"][name] = (torch.maximum(l_old, l_new.detach()), torch.minimum(u_old, u_new.detach()))
        score = 0.0
        if best["lo"] is not None:
            score += float(best["lo"].sum())
        if best["up"] is not None:
            score -= float(best["up"].sum())
        return score, False

    iterations = maximise([ParamGroup(params, opts.lr, 0.0, 1.0)], evaluate, keep_best, opts.iterations, layout,
                          opts.patience, opts.tol, on_step)
    best_lo, best_up, best_bounds = best["lo"], best["up"], best["bounds"]
    n_rows = C.shape[1]
    split = layout.rows(graph.output_name, n_rows)
    gather = (lambda t: None if t is None else split.gather(t))
    return AlphaResult(gather(best_lo), gather(best_up), gather(crown_lo), gather(crown_up), iterations,
                       best_bounds, alphas, graph.output_name)
