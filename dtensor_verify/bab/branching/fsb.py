"""Filtered smart branching (FSB): the top BaBSR candidates of each domain, each tried.

For each domain the `ctx.candidates` best-scored neurons are split for real and both children
bounded once, without optimisation (parent's slopes and multipliers, a single backward sweep,
all candidates of all domains in one batch). The candidate whose worse child is best wins:
that is the split most likely to prove both halves. An empty batch still bounds (nothing):
ranks that share bounding steps must all take them.
"""
from __future__ import annotations

import torch

from ...margin import margin as spec_margin
from ..domains import NO_DECISION, split
from .babsr import flat_choice, intercept_scores


def fsb(domains, lA, ctx) -> torch.Tensor:
    n = len(domains)
    values, layer, neuron = flat_choice(intercept_scores(domains, lA, ctx), ctx.candidates)
    k = values.shape[1]
    decisions = torch.stack([layer, neuron], -1)                             # [n, k, 2]
    if k == 0:          # no ReLU neuron at all (the same on every rank)
        return torch.full((n, 2), NO_DECISION, dtype=torch.long, device=domains.pair.device)
    # All candidates of all domains as one batch: candidate j of domain i at j * n + i.
    parents = domains.index(torch.arange(n, device=domains.pair.device).repeat(k))
    kids = split(parents, decisions.transpose(0, 1).reshape(k * n, 2).clamp(min=0), ctx.relus, ctx.pre_of)
    lower = ctx.bound_once(kids)                                             # [2kn, K]
    margin = spec_margin(lower, ctx.d[kids.pair], ctx.row_mask[kids.pair])  # [2kn]
    worse = torch.minimum(margin[:k * n], margin[k * n:]).reshape(k, n)      # [k, n]
    worse = worse.masked_fill(torch.isinf(values).t(), -torch.inf)
    best = worse.argmax(0)                                                   # [n]
    decision = decisions[torch.arange(n, device=best.device), best]
    decision[torch.isinf(values[:, 0])] = NO_DECISION
    return decision
