"""Branching on general nonlinearities (and ReLUs, in one ranking): `mixed_sr` and `mixed_fsb`.

Score of a neuron z_i of a node that feeds a general op g (sigmoid, sin, a product, ...): the
gap of g's relaxation on [l_i, u_i] times the weight the bound puts on g's output there,
`sum over real rows |lA_g|` (BaBSR's idea, as alpha,beta-CROWN's "nonlinear" branching: the
looseness that neuron costs in the bound, which a split shrinks on both halves):

    elementwise g   the vertical gap between CROWN's upper and lower lines, averaged over
                    [l, u] (the gap is linear in z, so its mean is its value at the midpoint)
    product x * y   McCormick's largest gap (u_x - l_x)(u_y - l_y) / 4 of each product, summed
                    over the products an operand neuron takes part in

ReLU neurons keep BaBSR's intercept score (`babsr.intercept_scores`), the same unit (bound
looseness), so both kinds compete in one top-k. `mixed_fsb` then bounds each domain's best
`ctx.candidates` splits once (as `fsb`), the layers behind a general cut bounded again first (as
the round's children are: `general_refresh`), and keeps the one whose worse child is best.
"""
from __future__ import annotations

import torch

from ...margin import margin as spec_margin
from ...ops.activation import ActivationOp
from ...ops.products import MatMulOp, MulOp, _lift, _sum_to
from ..domains import NO_DECISION, split
from ..general_split import code_of, splittable
from .babsr import flat_choice, intercept_scores


def _weight(lA_node, rows):
    """[n, *S]: sum over the real rows of |A| at a node's output."""
    a = lA_node.abs() * rows.to(lA_node.dtype).reshape(*rows.shape, *([1] * (lA_node.dim() - 2)))
    return a.sum(1)


def _activation_gap(op: ActivationOp, lower, upper):
    """[n, *S] the mean vertical gap between CROWN's lines on [l, u] (float64)."""
    l, u = lower.double(), upper.double()
    with torch.no_grad():
        k_lo, b_lo, k_up, b_up = op._lines(l, u, dtype=torch.float64)
    mid = (l + u) / 2
    gap = (k_up - k_lo) * mid + (b_up - b_lo)
    return torch.nan_to_num(gap, nan=0.0, posinf=1e30).clamp(min=0).to(lower.dtype)


def _product_scores(op, weight, bx, by):
    """(score of x's neurons, score of y's neurons) of a product, from the weight [n, *out]."""
    wx, wy = bx[1] - bx[0], by[1] - by[0]
    if isinstance(op, MulOp):
        s = op.out_shape
        gap = _lift(wx, s) * _lift(wy, s) / 4 * weight                    # [n, *out]
        g = gap.unsqueeze(1)
        return _sum_to(g, op.in_shapes[0], s)[:, 0], _sum_to(g, op.in_shapes[1], s)[:, 0]
    lx, ly, prod = op._expand(wx, wy)                                       # [n, .., n_, k, m]
    gap = lx * ly / 4 * weight.unsqueeze(-2)
    gx, gy = gap.sum(-1), gap.sum(-3)
    x_full, y_full = (*prod[:-1],), (*prod[:-3], prod[-2], prod[-1])
    return (_sum_to(gx.unsqueeze(1), op.in_shapes[0], x_full)[:, 0],
            _sum_to(gy.unsqueeze(1), op.in_shapes[1], y_full)[:, 0])


def general_scores(domains, lA, ctx) -> list[torch.Tensor]:
    """Per node of `ctx.general`: [n, N] scores over its flat neurons (-inf: not splittable)."""
    rows = ctx.row_mask[domains.pair]
    graph = ctx.graph
    index = {name: j for j, name in enumerate(ctx.general)}
    scores = [torch.zeros_like(domains.bounds[name][0]) for name in ctx.general]
    for name in ctx.general_ops:
        node = graph[name]
        if name not in lA:
            continue
        weight = _weight(lA[name], rows)
        if isinstance(node.op, ActivationOp) and node.inputs[0] in index:
            j = index[node.inputs[0]]
            scores[j] = scores[j] + weight * _activation_gap(node.op, *domains.bounds[node.inputs[0]])
        elif isinstance(node.op, (MulOp, MatMulOp)):
            bx, by = (domains.bounds[i] if i in index else None for i in node.inputs)
            if bx is None or by is None:
                continue
            sx, sy = _product_scores(node.op, weight, bx, by)
            scores[index[node.inputs[0]]] = scores[index[node.inputs[0]]] + sx
            scores[index[node.inputs[1]]] = scores[index[node.inputs[1]]] + sy
    out = []
    for j, (name, s) in enumerate(zip(ctx.general, scores)):
        s = s.flatten(1)
        ok = splittable(*(t.flatten(1) for t in domains.bounds[name])) & _affordable(ctx, j)
        # A tiny share of the width ranks neurons the bound does not weigh behind the others.
        width = (domains.bounds[name][1] - domains.bounds[name][0]).flatten(1)
        s = torch.nan_to_num(s, nan=0.0) + 1e-6 * width.clamp(max=1e6)
        out.append(s.masked_fill(~ok, -torch.inf))
    return out


def _affordable(ctx, j: int) -> bool:
    """Whether branching may try cutting general node j: the layers behind its cut are bounded
    again in every trial child, which on a ViT costs a CROWN pass each (`bab/refresh_cost.py`)."""
    return ctx.affordable is None or bool(ctx.affordable[j])


def _candidates(domains, lA, ctx, k: int, per_node: bool = False):
    """(values [n, k'], decisions [n, k', 2]) of the top-k splits over ReLU and general neurons;
    `per_node`: and the best neuron of every general node besides (`_node_bests`)."""
    relu_scores, general = intercept_scores(domains, lA, ctx), general_scores(domains, lA, ctx)
    scores = relu_scores + general
    n = len(domains)
    if not scores:
        empty = torch.zeros(n, 0, device=domains.pair.device)
        return empty, torch.zeros(n, 0, 2, dtype=torch.long, device=domains.pair.device)
    values, layer, neuron = flat_choice(scores, k)
    n_relu = len(ctx.relus)
    code = torch.where(layer < n_relu, layer, code_of(layer - n_relu))
    decisions = torch.stack([code, neuron], -1)
    if per_node and general:
        extra_values, extra = _node_bests(general)
        values, decisions = torch.cat([values, extra_values], 1), torch.cat([decisions, extra], 1)
    return values, decisions


def _node_bests(general: list[torch.Tensor]):
    """(values [n, G], decisions [n, G, 2]): each general node's best-scored neuron. The top-k of
    one ranking can all fall on one node (pensieve_big_parallel: six neurons of one branch's output
    layer, whose cuts left the bound where the other branch kept it: the open domains doubled every
    round with the worst one unchanged); strong branching then also tries a cut of every node."""
    values, decisions = [], []
    for j, s in enumerate(general):
        if not bool(torch.isfinite(s).any()):       # nothing to cut there (or not affordable)
            continue
        v, neuron = s.max(1)
        values.append(v)
        decisions.append(torch.stack([torch.full_like(neuron, code_of(j)), neuron], -1))
    if not values:
        n = general[0].shape[0]
        return general[0].new_zeros(n, 0), torch.zeros(n, 0, 2, dtype=torch.long, device=general[0].device)
    return torch.stack(values, 1), torch.stack(decisions, 1)


def mixed_sr(domains, lA, ctx) -> torch.Tensor:
    """The best-scored split (ReLU or general) of each domain."""
    values, decisions = _candidates(domains, lA, ctx, 1)
    n = len(domains)
    if values.shape[1] == 0:
        return torch.full((n, 2), NO_DECISION, dtype=torch.long, device=domains.pair.device)
    decision = decisions[:, 0].clone()
    decision[torch.isinf(values[:, 0])] = NO_DECISION
    return decision


def mixed_fsb(domains, lA, ctx) -> torch.Tensor:
    """The best of each domain's top `ctx.candidates` splits, each bounded once (as `fsb`)."""
    n = len(domains)
    values, decisions = _candidates(domains, lA, ctx, ctx.candidates, per_node=True)
    k = values.shape[1]
    if k == 0:
        return torch.full((n, 2), NO_DECISION, dtype=torch.long, device=domains.pair.device)
    # Unusable candidates (-inf) are tried as the domain's first one (their result is ignored).
    usable = torch.isfinite(values)
    decisions = torch.where(usable.unsqueeze(-1), decisions, decisions[:, :1])
    parents = domains.index(torch.arange(n, device=domains.pair.device).repeat(k))
    flat = decisions.transpose(0, 1).reshape(k * n, 2)
    kids = split(parents, flat, ctx.relus, ctx.pre_of, ctx.general, ctx.beta_of)
    # General cuts: the layers behind them are bounded again, so the score is the children's real bound.
    # Scored without the parent's bound as a floor (`bound_once` keeps the larger): a one-sweep
    # bound is mostly below the parent's optimised one, and the floor made every candidate tie,
    # so the first-ranked one won whether or not it helped (pensieve_big_parallel: open domains
    # doubled every round, the worst margin unchanged). Empty children still come back +inf.
    kids.lower = torch.full_like(kids.lower, -torch.inf)
    lower = ctx.bound_once(kids, decision=flat.repeat(2, 1))                  # [2kn, K]
    margin = spec_margin(lower, ctx.d[kids.pair], ctx.row_mask[kids.pair])   # [2kn]
    worse = torch.minimum(margin[:k * n], margin[k * n:]).reshape(k, n)
    worse = worse.masked_fill(~usable.t(), -torch.inf)
    best = worse.argmax(0)
    decision = decisions[torch.arange(n, device=best.device), best].clone()
    decision[~usable[:, 0]] = NO_DECISION
    return decision
