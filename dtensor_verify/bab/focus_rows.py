"""The rows of each open disjunct that branch and bound keeps bounding.

A disjunct of several rows (a conjunction of output constraints: TinyYOLO's 5, acasxu's "Y_0 is
minimal" 4) is proved on a domain once *one* row's lower bound is positive (`margin.margin`: the
best row). Every row costs the same in each round (a beta-CROWN sweep carries the domain's rows;
`budget.bytes_per_domain` grows with them), but rows far below the best hardly ever become the row
that proves: TinyYOLO prop_000426's roots are at -0.33 and -0.48 on two rows and -5.3 to -6.5 on
the other three. ReLU and general splitting therefore keep the rows whose root bound is at least
`factor` x the best row's (the best is negative, or the pair would be proved), and bound only
those; input splitting keeps every row (a far row can prove a small sub-box).

Soundness: a domain is proved when a kept row's bound is positive, which is a row of the disjunct;
dropping rows can only leave more domains open. Counterexamples are checked against the whole
property (the stage's `_ConfirmPoints` reads the instance's rows, not these).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .roots import RootState


@dataclass(frozen=True)
class FocusedRows:
    """The rows the solver bounds: C, d, mask of every pair ([P, K'] with K' <= K), the open pairs'
    root lower bounds and root states on those rows, and what was kept of how many."""
    C: torch.Tensor
    d: torch.Tensor
    mask: torch.Tensor
    lowers: list
    roots: list
    kept: int          # rows kept over the open pairs
    rows: int          # of this many


def keep_of(lower: torch.Tensor, factor: float) -> torch.Tensor:
    """Indices of the rows to keep: lower bound >= factor x the best (when the best is negative)."""
    best = float(lower.max())
    if best >= 0:
        return torch.arange(lower.shape[0], device=lower.device)
    return (lower >= factor * best).nonzero().flatten()


def focus(C: torch.Tensor, d: torch.Tensor, mask: torch.Tensor, open_idx: list[int], lowers: list,
          roots: list, factor: float | None, relus, general_ops) -> FocusedRows | None:
    """The rows to bound (see the module docstring), or None when every row stays. `lowers[i]`:
    the open pair `open_idx[i]`'s root lower bounds of its real rows (C y - d); `relus`: the ReLU
    nodes (root slopes [K_i, *S]), `general_ops` the other alpha ops ([2, K_i, *S]); slopes of any
    other node are left out (`make_roots` then starts it from CROWN's choice)."""
    if factor is None:
        return None
    keeps = [keep_of(lo, factor) for lo in lowers]
    total = sum(int(lo.shape[0]) for lo in lowers)
    kept = sum(int(k.numel()) for k in keeps)
    if kept == total:
        return None
    width = max(int(k.numel()) for k in keeps)
    C2 = C[:, :width].clone()
    d2 = d[:, :width].clone()
    m2 = mask[:, :width].clone()
    new_roots, new_lowers = [], []
    for p, keep, lo, root in zip(open_idx, keeps, lowers, roots):      # (all on the problem's device)
        k = keep.numel()
        C2[p], d2[p], m2[p] = 0, 0, False
        C2[p, :k], d2[p, :k], m2[p, :k] = C[p, keep], d[p, keep], mask[p, keep]
        new_lowers.append(lo[keep])
        if root.alphas is None:
            new_roots.append(root)
            continue
        alphas = {}
        for name, a in root.alphas.items():
            if name in relus:
                alphas[name] = a[keep]
            elif name in general_ops and a.dim() >= 2 and a.shape[0] == 2 and a.shape[1] == lo.shape[0]:
                alphas[name] = a[:, keep]
        new_roots.append(replace(root, alphas=alphas))
    return FocusedRows(C2, d2, m2, new_lowers, new_roots, kept, total)
