"""Domains of the one-hidden-layer search (bab/mip_planes.py) with no concave neuron left free.

There F is convex on the domain's region (box and split halfspaces), and its minimum is the LP

    min  a . x + sum_{active concave} v_j z_j(x) + sum_{convex} v_j t_j + k
    s.t. t_j >= z_j(x), t_j >= 0 (convex), +-z_j(x) >= 0 (split), lo <= x <= hi

(HiGHS through scipy.optimize.linprog). Its minimiser is a candidate counterexample (the
Lagrangian's vertex x* cannot be one when the minimum is inside the box). Its multipliers give
the Lagrangian's parameters (alpha_j = pi_j / v_j for `t_j >= z_j`, mu for the splits), whose
bound is then recomputed by `mip_planes.bound`: a proof never rests on the LP solver's tolerances.
"""
from __future__ import annotations

import numpy as np
import torch


def leaf_lp(s, phase: torch.Tensor):
    """(x* [n] float64 or None, alpha [nP], mu [nN]) for one domain's phases [nN]."""
    from scipy.optimize import linprog

    WP, bP, vP = (t.cpu().numpy() for t in (s.WP, s.bP, s.vP))
    WN, bN, vN = (t.cpu().numpy() for t in (s.WN, s.bN, s.vN))
    lo, hi = (s.mid - s.rad).cpu().numpy(), (s.mid + s.rad).cpu().numpy()
    ph = phase.cpu().numpy()
    n, nP, nN = lo.size, WP.shape[0], WN.shape[0]
    act = ph > 0
    c = np.concatenate([s.a.cpu().numpy() + vN[act] @ WN[act], vP])
    sign = np.where(act, -1.0, 1.0)                                  # active: -z <= 0, inactive: z <= 0
    A = np.block([[WP, -np.eye(nP)], [sign[:, None] * WN, np.zeros((nN, nP))]])
    b = np.concatenate([-bP, -sign * bN])
    bounds = [(float(l), float(h)) for l, h in zip(lo, hi)] + [(0.0, None)] * nP
    res = linprog(c, A_ub=A if len(A) else None, b_ub=b if len(A) else None, bounds=bounds, method="highs")
    alpha = torch.zeros(nP, dtype=torch.float64)
    mu = torch.zeros(nN, dtype=torch.float64)
    if res.status != 0 or res.x is None:
        return None, alpha, mu
    dual = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
    if nP:
        alpha = torch.from_numpy(np.clip(dual[:nP] / np.where(vP > 0, vP, 1.0), 0.0, 1.0))
    mu = torch.from_numpy(dual[nP:].copy())
    return torch.from_numpy(res.x[:n].copy()), alpha, mu
