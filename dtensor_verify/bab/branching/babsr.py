"""BaBSR-style scores: how much splitting each unstable neuron would raise the lower bound.

For an unstable neuron (l < 0 < u) whose output's lower A-matrix entry a is negative, the bound
uses the ReLU's upper line `u/(u-l) (z - l)`, whose intercept `-l u/(u-l)` costs `|a| * that` in
the bound. Both children of a split are exact there, so that is the gain to expect (the
"intercept" score of BaBSR / kFSB). A neuron with a > 0 sits on its lower line; a small term
`|a| min(-l, u)` ranks those behind, so every unstable neuron gets a finite score.
"""
from __future__ import annotations

import torch

from ..domains import NO_DECISION


def intercept_scores(domains, lA, ctx) -> list[torch.Tensor]:
    """Per relu: [n, N] scores over its flattened neurons, -inf where a split is impossible
    (stable or already split neurons)."""
    n = len(domains)
    rows = ctx.row_mask[domains.pair].to(torch.float32)                   # [n, K]
    out = []
    for relu in ctx.relus:
        lower, upper = domains.bounds[ctx.pre_of[relu]]
        lo, up = lower.flatten(1), upper.flatten(1)
        unstable = (lo < 0) & (up > 0)
        a = lA[relu].flatten(2) * rows.to(lA[relu].dtype).unsqueeze(-1)
        neg = (-a).clamp(min=0).sum(1)
        mag = a.abs().sum(1)
        intercept = (-lo).clamp(min=0) * up.clamp(min=0) / (up - lo).clamp(min=1e-12)
        score = neg * intercept + 1e-3 * mag * torch.minimum(-lo, up).clamp(min=0)
        out.append(torch.where(unstable, score, torch.full_like(score, -torch.inf)))
    return out


def flat_choice(scores: list[torch.Tensor], k: int = 1):
    """Top-k over all layers: (values [n, k], relu index [n, k], neuron [n, k])."""
    sizes = [s.shape[1] for s in scores]
    allscores = torch.cat(scores, 1)
    k = min(k, allscores.shape[1])
    values, flat = torch.topk(allscores, k, dim=1)
    offsets = torch.tensor([0] + sizes, device=flat.device).cumsum(0)
    layer = torch.bucketize(flat, offsets[1:], right=True)
    neuron = flat - offsets[layer]
    return values, layer, neuron


def babsr(domains, lA, ctx) -> torch.Tensor:
    """The neuron with the highest score, per domain."""
    return babsr_ranked(domains, lA, ctx, 1)[:, 0]


def babsr_ranked(domains, lA, ctx, width: int) -> torch.Tensor:
    """[n, width, 2]: the `width` highest-scored neurons of each domain, best first (distinct;
    NO_DECISION where fewer are unstable). Wide rounds split on several of them at once."""
    values, layer, neuron = flat_choice(intercept_scores(domains, lA, ctx), width)
    return ranked_decisions(values, layer, neuron, width)


def ranked_decisions(values, layer, neuron, width: int) -> torch.Tensor:
    """[n, width, 2] decisions from top-k choices (values, layer, neuron [n, k]): NO_DECISION
    where the score is -inf (nothing to split) and in the columns past k."""
    n = values.shape[0]
    out = torch.full((n, width, 2), NO_DECISION, dtype=torch.long, device=values.device)
    k = min(width, values.shape[1])
    dec = torch.stack([layer[:, :k], neuron[:, :k]], -1)
    out[:, :k] = torch.where(torch.isinf(values[:, :k]).unsqueeze(-1), NO_DECISION, dec)
    return out
