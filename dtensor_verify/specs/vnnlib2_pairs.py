"""Candidates next to an input relation: the search for queries that relate two inputs.

A relational query (e.g. `monotonic_acasxu_2026`: two copies of one network, `X_f[0] <= X_g[0]`,
the other inputs shared, `Y_f[1] < Y_g[1]`) is violated where the network *increases* along
the relation's free direction. Such places are small pockets of the box; a point drawn from the
box puts the two related inputs far apart, where the increase over the pocket is lost in the
decrease around it, and PGD over the relaxed rows pushes them to opposite ends of the box.

So, before the pipeline, each disjunct with input-only rows (`a . z <= b` once the input slots of
`V` are written through `M`) is sampled *next to* those rows: points drawn from the region's box
are moved along each row's normal onto the side where the row holds, at a random slack of a few
scales (a tenth down to 1e-4 of the row's width over the box), and clipped back into the box;
the product graph runs them as one batch, and the few with the smallest margin of the disjunct's
rows are checked exactly (`Property2.violated_by`: onnxruntime on the original files and the
query's AST, tolerance 0). Nothing here proves anything; a `sat` is only what the checker
confirms. The draws are seeded and their count is fixed (no clock), so every rank under
torchrun evaluates the same batches in step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RelationRows", "relation_rows", "try_relations"]

SCALES = (1e-1, 1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class RelationRows:
    """The input-only rows of one disjunct, over z: `A z <= b`."""
    A: np.ndarray          # [k, n_z]
    b: np.ndarray          # [k]


def relation_rows(prop, disjunct) -> RelationRows | None:
    """The disjunct's rows that involve inputs only (written over z); None when there are none,
    or when every row is input-only (then no network value is involved: the LP and the
    pipeline's attack see the whole disjunct)."""
    inputs = np.any(prop.M != 0, axis=1)
    C = np.asarray(disjunct.C, np.float64)
    only = ~np.any(C[:, ~inputs] != 0, axis=1) & np.any(C[:, inputs] != 0, axis=1)
    if not only.any() or only.all():
        return None
    return RelationRows(C[only] @ prop.M, np.asarray(disjunct.d, np.float64)[only])


def _near(rows: RelationRows, lo, hi, n: int, scale: float, rng) -> np.ndarray:
    """n points of the box moved onto the feasible side of each row, `scale` of its width away."""
    z = lo + (hi - lo) * rng.random((n, lo.size))
    for _ in range(2):                              # a second pass repairs what clipping undid
        for a, b in zip(rows.A, rows.b):
            norm2 = float(a @ a)
            width = float(np.abs(a) @ (hi - lo))
            if norm2 == 0.0 or width == 0.0:
                continue
            slack = scale * width * rng.random(n)
            t = (z @ a - (b - slack)) / norm2
            z = np.clip(z - t[:, None] * a, lo, hi)
    return z


def _margins(model, disjunct, z: np.ndarray) -> np.ndarray:
    """max over the disjunct's rows of `C V - d` at each point (the product graph, float32)."""
    import torch

    with torch.no_grad():
        v = model(torch.as_tensor(z, dtype=torch.float32, device=model.device))
    v = v.detach().double().cpu().numpy()
    return (v @ np.asarray(disjunct.C, np.float64).T - np.asarray(disjunct.d, np.float64)).max(axis=1)


def try_relations(model, prop, n: int = 1024, checks: int = 4, max_regions: int = 4, max_disjuncts: int = 8,
                  seed: int = 0) -> bool:
    """Sample next to the input relations of each disjunct (the first `max_disjuncts` with such
    rows, in the first `max_regions` regions; see the module docstring); True when a candidate is
    confirmed (the assignment is then `prop.last_assignment`)."""
    rng = np.random.default_rng(seed)
    left = max_disjuncts
    for r in prop.regions[:max_regions]:
        lo, hi = np.asarray(r.lower, np.float64), np.asarray(r.upper, np.float64)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo > hi):
            continue
        for dj in r.disjuncts:
            rows = relation_rows(prop, dj)
            if rows is None or left == 0:
                continue
            left -= 1
            for scale in SCALES:
                z = _near(rows, lo, hi, n, scale, rng)
                m = _margins(model, dj, z)
                for i in np.argsort(m, kind="stable")[:checks]:
                    if m[i] <= 0 and prop.violated_by(z[i], None):
                        return True
    return False
