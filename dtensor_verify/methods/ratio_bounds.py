"""Bounds of a linear function of a normalisation `w = p / sum(p)` by Dinkelbach's sign test.

Networks that turn scores into weights (`w_i = p_i / sum_j p_j`, e.g. pensieve's `x^3 / sum x^3`
in nn4sys) and then average constants with them (`f = V w + b`) are bounded badly by CROWN: the
product `p_i * (1 / S)` is relaxed by McCormick planes with `p_i` and `S` treated as independent,
although `S` is their sum. The ratio itself has an exact linear test: where `S > 0`,

    V_k w >= t   <=>   V_k p - t S >= 0   <=>   (V_k - t 1) . p >= 0

so one CROWN sweep from `p` with the rows `V_k - t 1` for a grid of values `t` tells, for each `t`
whose row's lower bound is >= 0, that `f_k >= t + b_k` on the whole box (and `f_k <= t + b_k`
where a row's upper bound is <= 0). Any such `t` is sound on its own (no monotonicity is assumed):
the box of `f` only ever shrinks to values a sweep proved. Two passes of `GRID` values (the second
between the first's best and its next point) cost two sweeps of `2 m GRID` rows from `p`.

On nn4sys pensieve_big_parallel (two such branches, output their difference) plain CROWN's margin
at the root of _35 was -9.1 (alpha-CROWN -3.4, branch and bound timed out on an H100); with the two
averages' boxes tightened this way the output's box gives +3.45: proved at the root (all 77).

`ratio_sites(graph)` finds the pattern (`Mul(p, Reciprocal(S))` with `S` an affine map of `p` equal
to the sum of all its entries, checked on points; the affine consumers `f` of that product);
`tighten(...)` narrows one site's box. The CROWN sweep is handed in (`sweep`), so this module
needs nothing of crown.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .ibp import ibp_step

GRID = 16               # values of t tried per pass, per side
PASSES = 2              # the second pass refines between the first's best t and the next point
MAX_ENTRIES = 1024      # normalisations over more entries are left to the ops' own rules
MAX_TARGETS = 64        # ... and affine maps of them with more outputs
CHUNK_ELEMS = 1 << 22   # A-matrix entries per sweep from p (domains in chunks)


@dataclass(frozen=True)
class RatioSite:
    """`target = weight . (p / sum(p)) + bias` per sample; `weight` [m, n] over p's flat entries."""
    target: str         # the node whose box is tightened (an affine map of the normalisation)
    numerator: str      # p
    denominator: str    # S = sum(p) (its lower bound must be > 0 for the test to apply)
    weight: torch.Tensor
    bias: torch.Tensor  # [m]


def _affine_map(graph, node, in_shape, layout, like):
    """(matrix [m, n], bias [m]) of an affine node with one input of shape `in_shape` (per
    sample), read from its IBP on point boxes (exact for an affine op: no radius); `like`: a
    tensor of the dtype and device to use."""
    n = 1
    for s in in_shape:
        n *= s
    if n > MAX_ENTRIES:
        return None
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    pts = torch.cat([torch.zeros_like(eye[:1]), eye]).reshape(n + 1, *in_shape)
    lo, hi = ibp_step(node, {node.inputs[0]: (pts, pts)}, layout)
    if not torch.equal(lo, hi):
        return None
    out = lo.reshape(n + 1, -1)
    bias = out[0]
    return (out[1:] - bias).t().contiguous(), bias


def _is_reciprocal(node) -> bool:
    return node.op is not None and getattr(node.op, "kind", None) == "reciprocal" and len(node.inputs) == 1


def _sum_of(graph, s_name: str, p_name: str, layout, like) -> bool:
    """True when node `s_name` is a scalar affine map of `p_name` equal to the sum of its entries."""
    s = graph[s_name]
    if s.op is None or not s.op.is_affine or s.inputs != [p_name] or s.numel != 1:
        return False
    mapped = _affine_map(graph, s, graph[p_name].shape, layout, like)
    if mapped is None:
        return False
    matrix, bias = mapped
    return bool((matrix == 1).all()) and bool((bias == 0).all())


def _normalisation(graph, node, layout, like):
    """(p, S) when `node` is `p * reciprocal(S)` with S = sum(p); else None."""
    if node.op is None or getattr(node.op, "kind", None) != "mul" or len(node.inputs) != 2:
        return None
    for p_name, r_name in (node.inputs, node.inputs[::-1]):
        r = graph[r_name]
        if _is_reciprocal(r) and r.numel == 1 and tuple(node.shape) == tuple(graph[p_name].shape) \
                and _sum_of(graph, r.inputs[0], p_name, layout, like):
            return p_name, r.inputs[0]
    return None


def find_sites(graph, layout, like) -> dict[str, RatioSite]:
    """Target node -> its site, for every affine single-input consumer of a normalisation
    (`like`: a tensor of the dtype and device of the bounds)."""
    sites = {}
    for node in graph.nodes:
        found = _normalisation(graph, node, layout, like)
        if found is None:
            continue
        p_name, s_name = found
        for t_name in graph.consumers[node.name]:
            t = graph[t_name]
            if t.op is None or not t.op.is_affine or t.inputs != [node.name]:
                continue
            mapped = _affine_map(graph, t, node.shape, layout, like)
            if mapped is not None and mapped[0].shape[0] <= MAX_TARGETS:
                sites[t_name] = RatioSite(t_name, p_name, s_name, *mapped)
    return sites


def ratio_sites(graph, layout, like) -> dict[str, RatioSite]:
    """`find_sites`, once per graph (kept on it)."""
    sites = getattr(graph, "_ratio_sites", None)
    if sites is None:
        sites = find_sites(graph, layout, like)
        graph._ratio_sites = sites
    return sites


def _rows(site: RatioSite, ts: torch.Tensor, p_shape) -> torch.Tensor:
    """A-matrices [B, m * G, *p] of the rows `V_k - t 1` for ts [B, m, G] (t without the bias)."""
    B, m, G = ts.shape
    V = site.weight.to(ts).unsqueeze(0).unsqueeze(2)                     # [1, m, 1, n]
    A = V - ts.unsqueeze(-1)                                             # [B, m, G, n]
    return A.reshape(B, m * G, *p_shape)


def _sweep_rows(graph, site, lA, uA, bounds, layout, sweep):
    """Sweeps from p over the rows (each rank its share where the layout splits rows, as the
    output bound does), gathered: (lower, upper) [B, K]; at most `CHUNK_ELEMS` A-matrix entries
    per sweep (domains in chunks)."""
    split = layout.rows(site.numerator, lA.shape[1])
    lA, uA = lA[:, split.mine], uA[:, split.mine]
    B = lA.shape[0]
    per = max(1, CHUNK_ELEMS // max(1, lA[0].numel() if B else 1))
    lows, highs = [], []
    for s in range(0, max(B, 1), per):
        part = bounds if B <= per else {k: tuple(t[s:s + per] if t.shape[0] == B else t for t in v)
                                        for k, v in bounds.items()}
        low, high = sweep(graph, site.numerator, lA[s:s + per], uA[s:s + per], part, layout)
        lows.append(low)
        highs.append(high)
    return split.gather(torch.cat(lows)), split.gather(torch.cat(highs))


def _best(ts: torch.Tensor, proved: torch.Tensor, fallback: torch.Tensor, largest: bool) -> torch.Tensor:
    """Per [B, m]: the largest (or smallest) t of ts [B, m, G] that a sweep proved, else fallback."""
    fill = -torch.inf if largest else torch.inf
    cand = torch.where(proved, ts, torch.full_like(ts, fill))
    best = cand.max(-1).values if largest else cand.min(-1).values
    return torch.maximum(best, fallback) if largest else torch.minimum(best, fallback)


def _natural(bounds, site, lo, up, positive):
    """Where p >= 0 on the box and the sum is `positive` ([B, 1]), f_k is a weighted average of V_k:
    within [min V_k, max V_k] + b_k."""
    p_lo = bounds[site.numerator][0].flatten(1)
    nonneg = (p_lo >= 0).all(1, keepdim=True) & positive                 # [B, 1]
    w = site.weight.to(lo)
    vmin, vmax = w.min(1).values + site.bias.to(lo), w.max(1).values + site.bias.to(lo)
    lo = torch.where(nonneg, torch.maximum(lo, vmin), lo)
    up = torch.where(nonneg, torch.minimum(up, vmax), up)
    return lo, up


def tighten(graph, site: RatioSite, bounds: dict, layout, sweep) -> tuple:
    """The target's box [B, *T] narrowed by the sign test (see the module docstring), intersected
    with the box in `bounds`. `sweep(graph, start, lA, uA, bounds, layout)` is CROWN's backward
    bound (lower of lA . v_start, upper of uA . v_start, each [B, K])."""
    lo0, up0 = bounds[site.target]
    B, shape = lo0.shape[0], lo0.shape
    positive = (bounds[site.denominator][0].reshape(B, -1) > 0).all(1, keepdim=True)    # S > 0
    lo, up = _natural(bounds, site, lo0.reshape(B, -1), up0.reshape(B, -1), positive)
    usable = positive & torch.isfinite(lo) & torch.isfinite(up) & (lo < up)
    if B == 0 or not bool(usable.any()):
        return lo.reshape(shape), up.reshape(shape)
    bias, p_shape = site.bias.to(lo), tuple(graph[site.numerator].shape)
    step = (up - lo) / GRID
    frac = torch.arange(1, GRID + 1, dtype=lo.dtype, device=lo.device)  # [G]
    for _ in range(PASSES):
        t_lo = lo.unsqueeze(-1) + step.unsqueeze(-1) * frac              # above the lower bound
        t_up = up.unsqueeze(-1) - step.unsqueeze(-1) * frac              # below the upper bound
        with torch.no_grad():
            low, high = _sweep_rows(graph, site, _rows(site, t_lo - bias.unsqueeze(-1), p_shape),
                                    _rows(site, t_up - bias.unsqueeze(-1), p_shape), bounds, layout, sweep)
        m = lo.shape[1]
        new_lo = _best(t_lo, low.reshape(B, m, GRID) >= 0, lo, largest=True)
        new_up = _best(t_up, high.reshape(B, m, GRID) <= 0, up, largest=False)
        lo, up = torch.where(usable, new_lo, lo), torch.where(usable, new_up, up)
        step = step / GRID
    lo, up = torch.minimum(lo, up), torch.maximum(lo, up)   # (both proved: f lies in between)
    return lo.reshape(shape), up.reshape(shape)
