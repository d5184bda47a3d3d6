"""Incomplete verification of the open pairs by one method (IBP, CROWN, alpha-CROWN).

Batching: one batch element per *region* (its box), its rows the stacked rows of all its open
disjuncts (padded with ignored zero rows to the widest region). Rows are independent in CROWN,
so this gives each disjunct the bounds a per-pair batch would give, while the intermediate
bounds (the expensive part) are computed once per box instead of once per pair.
`batching="pair"` gives one element per (region, disjunct) instead (alpha-CROWN then optimises
intermediate slopes per disjunct: sometimes tighter, always costlier).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import deadline
from ..bab.roots import RootState, root_alphas
from ..methods.dispatch import MethodBounds, run_method
from .instance import Instance, Pairs


@dataclass
class BoundOutcome:
    """What one method found for the pairs it bounded."""
    lowers: dict = field(default_factory=dict)      # pair -> [rows] lower bounds of C y - d
    vertices: dict = field(default_factory=dict)    # pair -> [n, *S] bound-guided vertices
    roots: dict = field(default_factory=dict)       # pair -> RootState (where BaB starts)
    iterations: list = field(default_factory=list)  # alpha-CROWN steps per batch
    side: list = field(default_factory=list)        # results of the `side` job of the ranks that waited


@dataclass
class _Batch:
    """One call's stacked rows: C [B, K, n_out], d [B, K] and (b, first row, pair) per pair."""
    C: torch.Tensor
    d: torch.Tensor
    slots: list
    regions: list


def bound_groups(pairs: Pairs, open_idx, batching: str):
    """Batch elements: lists of pair indices sharing one box (a region, or a single pair)."""
    if batching == "pair":
        return [[p] for p in open_idx]
    by_region: dict[int, list[int]] = {}
    for p in open_idx:
        by_region.setdefault(pairs.index[p][0], []).append(p)
    return list(by_region.values())


def _chunks(pairs: Pairs, groups, max_batch: int, max_rows: int):
    """Groups per call: at most max_batch boxes and about max_rows spec rows."""
    chunks, cur, cur_rows = [], [], 0
    for g in groups:
        k = sum(pairs.rows_of[p] for p in g)
        if cur and (len(cur) >= max_batch or cur_rows + k > max_rows):
            chunks.append(cur)
            cur, cur_rows = [], 0
        cur.append(g)
        cur_rows += k
    return chunks + ([cur] if cur else [])


def _stack(pairs: Pairs, chunk) -> _Batch:
    K = max(sum(pairs.rows_of[p] for p in g) for g in chunk)
    C = torch.zeros(len(chunk), K, pairs.C.shape[-1], dtype=pairs.C.dtype, device=pairs.C.device)
    d = torch.zeros(len(chunk), K, dtype=pairs.C.dtype, device=pairs.C.device)
    slots, dst_b, dst_k, src_p, src_k = [], [], [], [], []
    for b, g in enumerate(chunk):
        pos = 0
        for p in g:
            k = pairs.rows_of[p]
            slots.append((b, pos, p))
            dst_b += [b] * k
            dst_k += range(pos, pos + k)
            src_p += [p] * k
            src_k += range(k)
            pos += k
    # One gather / scatter for all rows (a slice write per pair: 5 s for lindex_60000's 120 000).
    dev = pairs.C.device
    dst = (torch.tensor(dst_b, device=dev), torch.tensor(dst_k, device=dev))
    src = (torch.tensor(src_p, device=dev), torch.tensor(src_k, device=dev))
    C[dst], d[dst] = pairs.C[src], pairs.d[src]
    return _Batch(C, d, slots, [pairs.index[g[0]][0] for g in chunk])


def guided_vertices(model, bounds, C, lower, alphas, max_rows: int = 64):
    """Input-box vertices that minimise the *linear* lower bound of each unproved spec row.

    With the intermediate bounds fixed, the lower bound of row k is `A_k . x + c_k` minimised over
    the box; its gradient with respect to the box centre is A_k, and the minimising vertex is
    `lo` where A_k > 0 and `hi` elsewhere. Such vertices often violate the property where PGD
    from random starts stalls on flat regions. Returns {(b, k): x [*S]} for rows with lower <= 0.
    """
    from ..methods.crown import output_bound

    graph, layout = model.graph, model.layout
    lo, hi = bounds[graph.input_name]
    todo = [(b, k) for b in range(C.shape[0]) for k in range(C.shape[1]) if lower[b, k] <= 0]
    todo = todo[:max_rows * C.shape[0]]
    if not todo:
        return {}
    center = ((lo + hi) / 2).detach().requires_grad_(True)
    rad = ((hi - lo) / 2).detach()
    shifted = dict(bounds)
    shifted[graph.input_name] = (center - rad, center + rad)
    with torch.enable_grad():
        lb, _ = output_bound(graph, shifted, C, layout, alphas, want_lower=True, want_upper=False)
    out = {}
    ks = sorted({k for _, k in todo})
    for n, k in enumerate(ks):
        A, = torch.autograd.grad(lb[:, k].sum(), center, retain_graph=n + 1 < len(ks))
        vert = torch.where(A > 0, lo, hi).detach()
        out.update({(b, k): vert[b] for b, kk in todo if kk == k})
    return out


def _proved_here(batch: _Batch, margin_lower, pairs: Pairs) -> set:
    """The pairs of the batch whose bounds prove them (some real row's lower bound > 0, as
    `Instance.bounded` decides): one transfer per batch, no per-pair tensor op."""
    rows = margin_lower.detach().cpu().tolist()
    return {p for b, pos, p in batch.slots
            if pairs.n_real_rows[p] > 0 and max(rows[b][pos:pos + pairs.n_real_rows[p]]) > 0}


def _roots(model, batch: _Batch, res: MethodBounds, pairs: Pairs, skip=frozenset()) -> dict:
    """Where branch and bound starts from: each pair's intermediate bounds and (one process:
    the rows are not split over ranks) its rows' optimised lower slopes. Pairs in `skip` (proved
    here) get none: branch and bound only starts from open pairs."""
    pre = model.graph.preactivation_nodes()
    bounds, one_process = res.intermediate, model.layout.world_size == 1
    roots = {}
    for b, pos, p in batch.slots:
        if p in skip:
            continue
        k = pairs.rows_of[p]
        alphas = root_alphas(res.output_alphas, b, pos, k) if one_process else None
        roots[p] = RootState({n: (bounds[n][0][b].detach(), bounds[n][1][b].detach()) for n in pre}, alphas)
    return roots


def _real_rows(batch: _Batch, pairs: Pairs) -> torch.Tensor:
    """[B, K] True on the rows of a pair, False on the zero rows padded in."""
    real = torch.zeros(batch.C.shape[:2], dtype=torch.bool, device=batch.C.device)
    for b, pos, p in batch.slots:
        real[b, pos:pos + pairs.rows_of[p]] = True
    return real


def _vertices(model, batch: _Batch, res: MethodBounds, margin_lower, pairs: Pairs, box) -> dict:
    """Bound-guided vertices of each pair's unproved rows (rows padded in have C = 0: skipped)."""
    real = _real_rows(batch, pairs)
    bounds = {**res.intermediate, model.graph.input_name: box}
    verts = guided_vertices(model, bounds, batch.C, margin_lower.masked_fill(~real, math.inf),
                            res.output_alphas or None)
    out = {}
    for b, pos, p in batch.slots:
        vs = [verts[(b, k)] for k in range(pos, pos + pairs.rows_of[p]) if (b, k) in verts]
        if vs:
            out[p] = torch.stack(vs)
    return out


def bound_pairs(inst: Instance, method: str, open_idx, batching: str, alpha_options, max_batch: int,
                guide: bool, max_rows_total: int = 4096, side=None) -> BoundOutcome:
    """Lower bounds of C y - d for the pairs `open_idx` by `method`, with BaB's roots and (if
    `guide`) the bound-guided vertices of the rows left unproved. Under a `Dx1` mesh each dp
    rank bounds its share of the batch elements and all ranks gather the outcomes
    (`bounds_dp`): every rank ends with every pair's bounds. Where one rank bounds for all (one
    box, a small network), the others run `side()` (if given) meanwhile: its results in `side`."""
    from . import bounds_dp

    groups = bound_groups(inst.pairs, open_idx, batching)
    topo = bounds_dp.dp_topology(inst.model)
    if topo is None:
        return _bound_share(inst, method, groups, alpha_options, max_batch, guide, max_rows_total)
    if method != "ibp" and bounds_dp.by_rows(groups, topo):
        # Fewer boxes than ranks: every rank takes every box, each its slice of every bound's rows;
        # a small network: every rank the whole bound alone, then rank 0's outcome on every rank.
        if bounds_dp.whole_on_one_rank(inst.model.graph):
            out, sides = bounds_dp.whole_then_agree(topo, lambda: _bound_share(
                inst, method, groups, alpha_options, max_batch, guide, max_rows_total,
                clock=bounds_dp.local_clock(inst.clock)), inst.pairs.C.device, side)
            out.side = sides if side is not None else []
            return out
        layout = bounds_dp.rows_layout(inst.model, topo)
        return _bound_share(inst, method, groups, alpha_options, max_batch, guide, max_rows_total,
                            layout=layout, clock=bounds_dp.rows_clock(inst.clock, layout))
    share = bounds_dp.run_share(lambda: _bound_share(inst, method, bounds_dp.my_share(groups, topo),
                                                     alpha_options, max_batch, guide, max_rows_total))
    return bounds_dp.gather_outcomes(topo, share, inst.pairs.C.device, _merge)


def _merge(outcomes: list) -> BoundOutcome:
    """One outcome from the ranks' outcomes (in rank order; their pairs are disjoint)."""
    out = BoundOutcome()
    for o in outcomes:
        out.lowers.update(o.lowers)
        out.vertices.update(o.vertices)
        out.roots.update(o.roots)
        out.iterations.extend(o.iterations)
    return out


def _bound_share(inst: Instance, method: str, groups, alpha_options, max_batch: int, guide: bool,
                 max_rows_total: int, layout=None, clock=None) -> BoundOutcome:
    """The outcome of bounding the batch elements `groups` on this rank (with `layout`, a
    `bounds_dp.DpRowsLayout`: their rows split over the dp group, the outcome whole on every rank)."""
    from ..methods.alpha_crown import verdict_options

    pairs, clock = inst.pairs, clock or inst.clock
    layout = layout or inst.model.layout
    out = BoundOutcome()
    guide = guide and method != "ibp" and inst.model.layout.world_size == 1
    opts = alpha_options or verdict_options()
    # The methods check the clock inside their long steps too (dtensor_verify/deadline.py).
    with deadline.checking(clock.check, clock.left, clock.layout):
        for chunk in _chunks(pairs, groups, max_batch, max_rows_total):
            _bound_chunk(inst, method, chunk, opts, guide, layout, clock, out)
    return out


def _bound_chunk(inst: Instance, method: str, chunk, opts, guide: bool, layout, clock, out: BoundOutcome):
    """One call's batch elements bounded by `method`; what it found goes to `out`."""
    from . import bounds_dp, crown_reuse

    model, pairs = inst.model, inst.pairs
    clock.check()
    batch = _stack(pairs, chunk)
    box = model.check_box(inst.region_lo[batch.regions], inst.region_hi[batch.regions])
    # alpha-CROWN stops once every real row is proved (lower bound of C y above d).
    stop_above = batch.d.masked_fill(~_real_rows(batch, pairs), -math.inf)
    # alpha-CROWN starts from the CROWN stage's intermediate bounds of these boxes where it kept them.
    given = crown_reuse.given(inst, batch.regions, opts.crown, layout) if method == "alpha-crown" else None
    res = run_method(method, model.graph, box, batch.C, layout, alpha_options=opts, want_upper=False,
                     on_step=lambda it, score: clock.check(), stop_above=stop_above, crown_bounds=given)
    if method == "crown":
        crown_reuse.keep(inst, batch.regions, res.intermediate, layout)
    if getattr(layout, "splits_rows", False) and res.output_alphas:
        res.output_alphas = bounds_dp.gather_rows_dim2(layout.topo, res.output_alphas)
    if res.iterations is not None:
        out.iterations.append(res.iterations)
    margin_lower = model.layout.local(res.lower).detach() - batch.d
    out.lowers.update({p: margin_lower[b, pos:pos + pairs.rows_of[p]] for b, pos, p in batch.slots})
    if method != "ibp":
        out.roots.update(_roots(model, batch, res, pairs, _proved_here(batch, margin_lower, pairs)))
    if guide:
        clock.check()
        out.vertices.update(_vertices(model, batch, res, margin_lower, pairs, box))
