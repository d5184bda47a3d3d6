"""Input split on the widest dimension, relative to the property's own box (a baseline for `input_sb`).

Each sub-box halves the dimension with the largest `width / width of the pair's box` (so a
dimension the property leaves 10x narrower is not split first just for its units); ties go to
the lowest index. No bound information is used: compare `input_sb` in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import torch

from ..split_kinds import splittable_dims
from .input_sb import decisions_of


def input_widest(domains, lA, ctx) -> torch.Tensor:
    lo, hi = (t.flatten(1) for t in domains.box)
    if lo.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=domains.pair.device)
    width = hi - lo
    if ctx.pair_box is not None:
        plo, phi = (t.flatten(1)[domains.pair] for t in ctx.pair_box)
        width = width / (phi - plo).clamp(min=1e-12)
    score = width.masked_fill(~splittable_dims(domains.box), -torch.inf)
    best, dim = score.max(1)
    return decisions_of(dim, torch.isfinite(best))
