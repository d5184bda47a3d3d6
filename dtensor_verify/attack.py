"""PGD on a batch of boxes: the one attack of the verifier.

Used by the verdict pipeline (before bounding, after it, from bound-guided vertices), by branch
and bound (short rounds from its most promising domains) and by the soundness tests (the
attack's best outputs must lie inside every computed bound).
"""
from __future__ import annotations

import math

import torch

__all__ = ["pgd"]


def _starting_points(lo, hi, restarts: int, starts, gen):
    """[R, B, *S]: the given `starts` first, then random points, the first of them the centre."""
    n0 = 0 if starts is None else starts.shape[0]
    R = restarts + n0
    LO = lo.unsqueeze(0).expand(R, *lo.shape)
    HI = hi.unsqueeze(0).expand(R, *hi.shape)
    x = LO + (HI - LO) * torch.rand(LO.shape, generator=gen, device=lo.device, dtype=lo.dtype)
    if restarts > 0:
        x[n0] = (lo + hi) / 2
    if n0:
        x[:n0] = torch.max(torch.min(starts.to(x.dtype), HI[:n0]), LO[:n0])
    return x, LO, HI


def pgd(fn, lo: torch.Tensor, hi: torch.Tensor, objective, steps: int = 50, restarts: int = 5, seed: int = 0,
        starts: torch.Tensor | None = None):
    """Minimise `objective(fn(x))` per box with sign-gradient steps and a cosine step size.

    `fn` maps [N, *S] -> [N, n_out]; `objective` maps outputs [R, B, n_out] -> [R, B] (one value
    per restart and box, e.g. `margin.output_margin`). lo, hi: [B, *S]. `starts` ([S0, B, *S])
    are extra starting points (e.g. bound-guided vertices); the first random restart is the box
    centre. Returns (x_best [B, *S], value_best [B]): the best value is the objective at x_best.
    """
    gen = torch.Generator(device=lo.device).manual_seed(seed)
    B = lo.shape[0]
    x, LO, HI = _starting_points(lo, hi, restarts, starts, gen)
    R, W = x.shape[0], HI - LO
    best_val = torch.full((B,), math.inf, dtype=lo.dtype, device=lo.device)
    best_x = ((lo + hi) / 2).clone()
    boxes = torch.arange(B, device=lo.device)
    for t in range(steps + 1):
        x = x.detach().requires_grad_(t < steps)
        with torch.set_grad_enabled(t < steps):
            y = fn(x.reshape(R * B, *lo.shape[1:]))
            val = objective(y.reshape(R, B, y.shape[-1]))      # (an empty batch too: lockstep ranks)
        with torch.no_grad():
            v, i = val.detach().min(0)
            better = v < best_val
            best_val = torch.where(better, v, best_val)
            best_x[better] = x.detach()[i[better], boxes[better]]
        if t == steps:
            break
        grad, = torch.autograd.grad(val.sum(), x)
        eta = 0.25 * (1 + math.cos(math.pi * t / steps)) + 0.01      # 0.51 -> 0.01 of the box width
        with torch.no_grad():
            x = torch.max(torch.min(x - eta * W * grad.sign(), HI), LO)
    return best_x, best_val
