"""Disjuncts of a 2.0 query refuted by one bound pass before the search.

The pipeline proves a row `C V <= d` infeasible when a lower bound of `C V` exceeds `d`. Two
kinds of proof it cannot make are made here, one bound pass per region:

* A strict row `C V < d` (from `<`, `>`, `!=`; the standard's semantics, tolerance 0) is
  infeasible already when the lower bound *equals* `d`: e.g. `Y[0] < 0` for a softmax output
  whose lower bound is 0. (The search bounds `<` by its closure `<=`, which needs `> d`.)
* A box with an unbounded input (a `z` with an infinite end): interval propagation runs on it
  (`methods.ibp`: an infinite bound through a map with mixed signs reads as unbounded, never as a
  number), so a row over values that do not depend on that input keeps its finite bounds and can
  still be refuted. A `float32` input's values are the finite float32 numbers: its infinite end
  is the largest float32, and an input unbounded on both sides is split at 0 (so that no width
  overflows: a zero weight then gives 0, not 0 * inf = NaN); a `real` input's stays infinite. The search itself needs finite boxes: it runs on a restriction of such a
  region (`restrict_unbounded`), which can only give a `sat` (confirmed as always), never `unsat`.

Row bounds: exact (Fraction) interval arithmetic over IBP's per-value boxes, and for a finite box
with a strict row also CROWN's bound of the rows themselves; a row is refuted by the larger lower
bound. (The bound passes are float32, as in the pipeline.)
"""
from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np

__all__ = ["refute", "restrict_unbounded"]


def _row_lower(c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Exact lower bound of c . V over the box [lo, hi] (-inf if an end it needs is infinite)."""
    total = Fraction(0)
    for s in np.flatnonzero(c):
        end = lo[s] if c[s] > 0 else hi[s]
        if not np.isfinite(end):
            return -np.inf
        total += Fraction(float(c[s])) * Fraction(float(end))
    return total


def _refuted(lower, d: float, strict: bool) -> bool:
    if lower == -np.inf:
        return False
    d = Fraction(float(d))
    return lower >= d if strict else lower > d


MAX_SPLIT = 10          # at most 2^10 pieces for the unbounded float32 inputs of one box


def _finite_floats(lower, upper, float32: np.ndarray):
    """The box as a batch of float32 boxes [B, n]. A `float32` input takes finite float32 values
    only: an end at -inf / +inf is the largest float32, and an input unbounded on both sides is
    split at 0 (so that no width overflows to inf in the propagation, where a zero weight would
    give 0 * inf); a `real` input's infinite end stays infinite (read as unbounded)."""
    big = np.finfo(np.float32).max
    lo = np.where(float32 & np.isneginf(lower), -big, lower).astype(np.float32)
    hi = np.where(float32 & np.isposinf(upper), big, upper).astype(np.float32)
    both = np.flatnonzero(float32 & np.isneginf(lower) & np.isposinf(upper))[:MAX_SPLIT]
    los, his = [lo], [hi]
    for k in both:
        los = [a.copy() for a in los for _ in (0, 1)]
        his = [a.copy() for a in his for _ in (0, 1)]
        for j in range(0, len(los), 2):
            his[j][k], los[j + 1][k] = 0.0, 0.0
    return np.stack(los), np.stack(his)


def _float32_z(prop) -> np.ndarray:
    """Per z: every input element it feeds is declared float32."""
    q, M = prop.query, prop.M
    out = np.ones(M.shape[1], bool)
    for v in q.variables:
        if v.kind == "input" and v.dtype != "float32":
            out &= ~np.any(M[v.offset:v.offset + v.size] != 0, axis=0)
    return out


def _bounds(model, region, C, want_crown: bool, float32):
    """(IBP box of V, CROWN lower bounds of C V or None) over the region's box."""
    import torch

    from ..methods.ibp import ibp

    dev = getattr(model, "device", "cpu")
    lo, hi = _finite_floats(region.lower, region.upper, float32)
    with torch.no_grad():
        vlo, vhi = ibp(model.graph, (torch.tensor(lo, device=dev), torch.tensor(hi, device=dev)),
                       model.layout)[model.graph.output_name]
    vlo = vlo.detach().double().cpu().numpy().reshape(len(lo), -1).min(0)     # the pieces' union
    vhi = vhi.detach().double().cpu().numpy().reshape(len(lo), -1).max(0)
    lo, hi = torch.tensor(lo[:1], device=dev), torch.tensor(hi[:1], device=dev)
    crown = None
    if want_crown and np.all(np.isfinite(region.lower)) and np.all(np.isfinite(region.upper)) and len(C):
        try:
            b = model.compute_bounds(lo, hi, method="crown", C=torch.tensor(C[None], dtype=torch.float32, device=dev),
                                     want_upper=False)
            crown = b.lower.detach().double().cpu().numpy().reshape(-1)
        except Exception:   # noqa: BLE001 - IBP alone still decides; a failed pass proves nothing
            crown = None
    return vlo, vhi, crown


def _disjunct_refuted(dj, vlo, vhi, crown_rows) -> bool:
    strict = dj.strict_rows()
    for i in range(len(dj.d)):
        lower = _row_lower(dj.C[i], vlo, vhi)
        if crown_rows is not None and np.isfinite(crown_rows[i]):
            c = Fraction(float(crown_rows[i]))
            lower = c if lower == -np.inf else max(lower, c)
        if _refuted(lower, dj.d[i], bool(strict[i])):
            return True
    return False


def refute(model, prop):
    """A copy of `prop` without the disjuncts the bounds refute (regions left with none are
    dropped: no region left means `unsat`), and the number refuted."""
    out = copy.copy(prop)
    out.regions, n = [], 0
    float32 = _float32_z(prop)
    for region in prop.regions:
        C = np.concatenate([dj.C for dj in region.disjuncts]) if region.disjuncts else np.zeros((0, prop.n_outputs))
        strict = any(dj.strict_rows().any() for dj in region.disjuncts)
        vlo, vhi, crown = _bounds(model, region, C, strict, float32)
        keep, at = [], 0
        for dj in region.disjuncts:
            rows = None if crown is None else crown[at:at + len(dj.d)]
            at += len(dj.d)
            if _disjunct_refuted(dj, vlo, vhi, rows):
                n += 1
            else:
                keep.append(dj)
        if keep:
            r = copy.copy(region)
            r.disjuncts = keep
            out.regions.append(r)
    return out, n


def restrict_unbounded(prop, width: float = 1.0):
    """A copy of `prop` whose infinite box ends are pinned near the finite end (or 0): a subset of
    the query's inputs, so a `sat` found there is a `sat` of the query; its `unsat` is not."""
    out = copy.copy(prop)
    out.regions = []
    for region in prop.regions:
        lo, hi = np.array(region.lower, np.float64), np.array(region.upper, np.float64)
        both = ~np.isfinite(lo) & ~np.isfinite(hi)
        lo_only = np.isfinite(lo) & ~np.isfinite(hi)
        hi_only = ~np.isfinite(lo) & np.isfinite(hi)
        lo[both], hi[both] = -width, width
        hi[lo_only] = lo[lo_only] + width
        lo[hi_only] = hi[hi_only] - width
        r = copy.copy(region)
        r.lower, r.upper = lo, hi
        out.regions.append(r)
    return out
