"""Shared checks for the operator tests: one call bounds a small network with IBP, CROWN and
alpha-CROWN and checks soundness and the order of the methods.

* no sampled output (uniform samples + box corners of small inputs) and no PGD-attained output
  (min and max of each output) leaves [lower, upper] of any method (TOL: float32 rounding only);
* CROWN is never looser than IBP, alpha-CROWN never looser than CROWN (each side, per output);
* optionally our CROWN is at least as tight as auto_LiRPA 0.3's on the same network (1e-5).
"""
from __future__ import annotations

import torch

import dtensor_verify as dv
from dtensor_verify.attack import pgd

TOL = 1e-5


def random_box(shape, seed, width=0.5, center=0.0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    mid = center + torch.randn(batch, *shape, generator=gen)
    rad = width * torch.rand(batch, *shape, generator=gen)
    return mid - rad, mid + rad


def attained(fn, lo, hi, n=3000, seed=0, pgd_steps=20):
    """(min, max) per output of sampled and attacked points, [B, n_out] each."""
    gen = torch.Generator().manual_seed(seed)
    B = lo.shape[0]
    xs = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(B, n, *lo.shape[1:], generator=gen)
    with torch.no_grad():
        ys = torch.stack([fn(xs[b]) for b in range(B)])          # [B, n, n_out]
    ymin, ymax = ys.min(1).values, ys.max(1).values
    n_out = ymin.shape[1]
    for j in range(min(n_out, 8)):          # PGD per output (and sign) on the first outputs
        for sign in (1.0, -1.0):
            _, val = pgd(fn, lo, hi, lambda out, s=sign, j=j: s * out[..., j], steps=pgd_steps, restarts=3)
            val = val * sign
            ymin[:, j], ymax[:, j] = torch.minimum(ymin[:, j], val), torch.maximum(ymax[:, j], val)
    return ymin, ymax


def check_network(net, in_shape, seeds=(0, 1), width=0.5, center=0.0, lirpa=False, alpha_iters=10,
                  reference=None, tol=TOL):
    """Every check above on boxes drawn from `seeds`; returns the bound model."""
    if isinstance(net, str):
        model = dv.load(net)
        in_shape = model.input_shape
        fn = reference or model.forward
    else:
        model = dv.load(net, in_shape)
        fn = reference or (lambda x: net(x).flatten(1))
    for seed in seeds:
        lo, hi = random_box(in_shape, seed, width, center)
        ymin, ymax = attained(fn, lo, hi, seed=seed)
        res = {}
        for method in ("ibp", "crown", "alpha-crown"):
            opts = dv.AlphaOptions(iterations=alpha_iters) if method == "alpha-crown" else None
            r = model.compute_bounds(lo, hi, method, alpha_options=opts)
            assert torch.isfinite(r.lower).all() or method == "ibp", (method, r.lower)
            assert (r.lower <= ymin + tol).all(), (method, seed, (r.lower - ymin).max().item())
            assert (r.upper >= ymax - tol).all(), (method, seed, (ymax - r.upper).max().item())
            res[method] = r
        ibp, crown, alpha = res["ibp"], res["crown"], res["alpha-crown"]
        assert (crown.lower >= ibp.lower - tol).all() and (crown.upper <= ibp.upper + tol).all(), "CROWN looser than IBP"
        assert (alpha.lower >= crown.lower - tol).all() and (alpha.upper <= crown.upper + tol).all(), \
            "alpha looser than CROWN"
        if lirpa:
            from lirpa_reference import lirpa_bounds

            ll, lu = lirpa_bounds(net, lo, hi, "CROWN")
            assert (crown.lower >= ll - tol).all(), ("looser than auto_LiRPA", (ll - crown.lower).max().item())
            assert (crown.upper <= lu + tol).all(), ("looser than auto_LiRPA", (crown.upper - lu).max().item())
    return model
