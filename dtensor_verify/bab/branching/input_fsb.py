"""Input split by trial: the best-scored input dimensions of each sub-box, each tried.

For each domain the `ctx.candidates` best dimensions by the smart-split score (`input_sb`) are
halved for real and both halves bounded once (intermediate bounds recomputed on the half box,
parent's slopes, no optimisation; all candidates of all domains in one batch). The dimension
whose worse half is best wins; ties keep the smart-split order. An empty batch still bounds
(nothing): ranks that share bounding steps must all take them.
"""
from __future__ import annotations

import torch

from ..domains import INPUT_SPLIT, split
from .input_sb import decisions_of, input_scores


def input_fsb(domains, lA, ctx) -> torch.Tensor:
    n = len(domains)
    score = input_scores(domains, lA, ctx)
    k = min(ctx.candidates, score.shape[1])
    values, dims = torch.topk(score, k, dim=1)                                   # [n, k]
    decisions = torch.stack([torch.full_like(dims, INPUT_SPLIT), dims], -1)              # [n, k, 2]
    # All candidates of all domains as one batch: candidate j of domain i at j * n + i.
    parents = domains.index(torch.arange(n, device=domains.pair.device).repeat(k))
    kids = split(parents, decisions.transpose(0, 1).reshape(k * n, 2), ctx.relus, ctx.pre_of)
    lower = ctx.bound_once(kids, True)                                           # [2kn, K]
    d, mask = ctx.d[kids.pair], ctx.row_mask[kids.pair]
    margin = (lower - d).masked_fill(~mask, -torch.inf).max(1).values            # [2kn]
    worse = torch.minimum(margin[:k * n], margin[k * n:]).reshape(k, n)          # [k, n]
    worse = worse.masked_fill(~torch.isfinite(values).t(), -torch.inf)
    # The first (best-scored) candidate wins ties: argmax returns the first maximum.
    best = worse.argmax(0)
    ar = torch.arange(n, device=best.device)
    return decisions_of(dims[ar, best], torch.isfinite(values[ar, best]))
