"""Exact minimum of one output of a small Linear/ReLU MLP over a box, by MILP (scipy's HiGHS).

Big-M encoding of each unstable ReLU `a = max(z, 0)` with interval bounds l < 0 < u (from
interval arithmetic, valid on the whole box): a >= z, a >= 0, a <= z - l (1 - s), a <= u s,
s binary. Stable neurons are exact (a = z or a = 0). For ground truth in tests only.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import LinearConstraint, Bounds, milp
from torch import nn


def layers_of(net: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
            for m in net if isinstance(m, nn.Linear)]


def exact_min(net: nn.Sequential, lo, hi, row: np.ndarray) -> tuple[float, np.ndarray]:
    """(min over x in [lo, hi] of row . net(x), a minimiser x)."""
    layers = layers_of(net)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    n0 = lo.size
    # Variables: x, then per hidden layer (z, a, s).
    nvar, lb, ub, integrality = n0, list(lo), list(hi), [0] * n0
    A_rows, b_lo, b_hi = [], [], []
    prev, prev_lo, prev_hi = list(range(n0)), lo, hi

    def new(k, l, u, integer=0):
        nonlocal nvar
        idx = list(range(nvar, nvar + k))
        nvar += k
        lb.extend(l)
        ub.extend(u)
        integrality.extend([integer] * k)
        return idx

    def con(coefs: dict, low, high):
        A_rows.append(coefs)
        b_lo.append(low)
        b_hi.append(high)

    for W, b in layers[:-1]:
        Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
        zl = Wp @ prev_lo + Wn @ prev_hi + b
        zu = Wp @ prev_hi + Wn @ prev_lo + b
        z = new(len(b), zl, zu)
        a = new(len(b), np.maximum(zl, 0), np.maximum(zu, 0))
        s = new(len(b), [0] * len(b), [1] * len(b), 1)
        for j in range(len(b)):
            coefs = {z[j]: 1.0}
            for i, p in enumerate(prev):
                coefs[p] = coefs.get(p, 0.0) - W[j, i]
            con(coefs, b[j], b[j])                                  # z = W prev + b
            if zl[j] >= 0:
                con({a[j]: 1.0, z[j]: -1.0}, 0.0, 0.0)
            elif zu[j] <= 0:
                con({a[j]: 1.0}, 0.0, 0.0)
            else:
                con({a[j]: 1.0, z[j]: -1.0}, 0.0, np.inf)            # a >= z
                con({a[j]: 1.0, z[j]: -1.0, s[j]: -zl[j]}, -np.inf, -zl[j])   # a <= z - l (1 - s)
                con({a[j]: 1.0, s[j]: -zu[j]}, -np.inf, 0.0)          # a <= u s
        prev, prev_lo, prev_hi = a, np.maximum(zl, 0), np.maximum(zu, 0)
    W, b = layers[-1]
    c = np.zeros(nvar)
    w = row @ W
    for i, p in enumerate(prev):
        c[p] += w[i]
    A = np.zeros((len(A_rows), nvar))
    for r, coefs in enumerate(A_rows):
        for k, v in coefs.items():
            A[r, k] += v
    res = milp(c, constraints=LinearConstraint(A, b_lo, b_hi), integrality=np.array(integrality),
               bounds=Bounds(lb, ub), options={"mip_rel_gap": 1e-9})
    assert res.success, res.message
    return float(res.fun + row @ b), res.x[:n0]
