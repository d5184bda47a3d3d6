"""Filtered smart branching (FSB): the top BaBSR candidates of each domain, each tried.

For each domain the `ctx.candidates` best-scored neurons are split for real and both children
bounded once, without optimisation (parent's slopes and multipliers, a single backward sweep,
all candidates of all domains in one batch). The candidate whose worse child is best wins:
that is the split most likely to prove both halves. An empty batch still bounds (nothing):
ranks that share bounding steps must all take them.

`fsb_ranked` orders the candidates by the same test (best first) and, past them, the next
BaBSR neurons: wide rounds (`bab/wide.py`) split a domain on its first few at once.
"""
from __future__ import annotations

import torch

from ...margin import margin as spec_margin
from ..domains import NO_DECISION, split
from .babsr import flat_choice, intercept_scores, ranked_decisions


def fsb(domains, lA, ctx) -> torch.Tensor:
    return fsb_ranked(domains, lA, ctx, 1)[:, 0]


def fsb_ranked(domains, lA, ctx, width: int) -> torch.Tensor:
    """[n, width, 2]: the tried candidates, best worse child first, then the next BaBSR neurons
    (distinct neurons; NO_DECISION where fewer are unstable)."""
    n = len(domains)
    values, layer, neuron = flat_choice(intercept_scores(domains, lA, ctx), max(ctx.candidates, width))
    k = min(ctx.candidates, values.shape[1])
    if k == 0:          # no ReLU neuron at all (the same on every rank)
        return torch.full((n, width, 2), NO_DECISION, dtype=torch.long, device=domains.pair.device)
    decisions = torch.stack([layer[:, :k], neuron[:, :k]], -1)               # [n, k, 2]
    # All candidates of all domains as one batch: candidate j of domain i at j * n + i.
    parents = domains.index(torch.arange(n, device=domains.pair.device).repeat(k))
    kids = split(parents, decisions.transpose(0, 1).reshape(k * n, 2).clamp(min=0), ctx.relus, ctx.pre_of)
    lower = ctx.bound_once(kids)                                             # [2kn, K]
    margin = spec_margin(lower, ctx.d[kids.pair], ctx.row_mask[kids.pair])  # [2kn]
    worse = torch.minimum(margin[:k * n], margin[k * n:]).reshape(k, n)      # [k, n]
    worse = worse.masked_fill(torch.isinf(values[:, :k]).t(), -torch.inf)
    # Stable: ties keep BaBSR's order (the first best is argmax's choice).
    order = torch.sort(worse.t(), dim=1, descending=True, stable=True).indices   # [n, k]
    tail = torch.arange(k, values.shape[1], device=order.device).expand(n, -1)
    order = torch.cat([order, tail], 1)
    return ranked_decisions(values.gather(1, order), layer.gather(1, order), neuron.gather(1, order), width)
