"""Branch and bound's cheap attack: each open domain's input vertex that minimises its linear bound.

After a round's children are bounded, the vertex of each open child's box that minimises its best
row's linear lower bound (the sign of the bound's A-matrix w.r.t. the input picks the corner) is
run through the network: one forward pass for the batch, and it finds the counterexamples branch
and bound runs into. The most promising vertices become the seeds of the solver's periodic PGD.
Sound either way: a hit is only a candidate until `confirm` (onnxruntime) accepts it.
"""
from __future__ import annotations

import torch

from ..margin import best_row, margin, spec_rows
from .domains import Domains


def attack_vertices(solver, domains: Domains, lA_input: torch.Tensor | None):
    """Try the input vertex minimising each open domain's linear bound (on its best row); set
    `solver.seeds` to the most promising ones. Returns what `solver.confirm` confirmed, or None."""
    p = solver.problem
    if lA_input is None or (len(domains) == 0 and not solver.lockstep):
        return None
    n = lA_input.shape[0]
    d, mask = p.d[domains.pair], p.row_mask[domains.pair]
    lo, hi = p.box_of(domains)
    row = best_row(domains.lower, d, mask)
    A = lA_input[torch.arange(n, device=row.device), row]                 # [n, *S]
    x = torch.where(A > 0, lo, hi)
    with torch.no_grad():
        y = p.forward(x)
    worst = margin(spec_rows(p.C[domains.pair], y), d, mask)
    best = torch.topk(worst, min(solver.pgd_points, n), largest=False).indices
    solver.seeds = (x[best].detach(), domains.pair[best])
    hits = (worst <= 0).nonzero().flatten()
    if hits.numel() == 0:
        return None
    return solver.confirm(x[hits], domains.pair[hits], y[hits])
