"""PGD attack on a batch of boxes: look for inputs that make a spec row negative.

Used by the verdict pipeline (attack before bounding) and by the soundness tests (the attack's
best outputs must lie inside every computed bound).
"""
from __future__ import annotations

import torch


def pgd(fn, x_lower, x_upper, objective, steps: int = 50, restarts: int = 5, step_size: float | None = None,
        seed: int = 0):
    """Minimise `objective(fn(x))` (shape [B] or [B, K], minimised per entry) over the box.

    `fn` maps [N, *S] -> [N, n_out]. Returns (x_best [B, *S], value_best [B] or [B, K] matching the
    objective). Restarts run as one batch; the first restart starts at the box centre.
    """
    gen = torch.Generator(device=x_lower.device).manual_seed(seed)
    B = x_lower.shape[0]
    lo = x_lower.unsqueeze(0).expand(restarts, *x_lower.shape)
    hi = x_upper.unsqueeze(0).expand(restarts, *x_upper.shape)
    width = hi - lo
    x = lo + width * torch.rand(lo.shape, generator=gen, device=lo.device, dtype=lo.dtype)
    x[0] = (lo[0] + hi[0]) / 2
    alpha = step_size if step_size is not None else 2.5 / max(steps, 1)
    best_x, best_val = None, None

    def evaluate(xs):
        out = fn(xs.reshape(restarts * B, *xs.shape[2:]))
        val = objective(out.reshape(restarts, B, *out.shape[1:]))
        return val

    for it in range(steps + 1):
        x = x.detach().requires_grad_(True)
        val = evaluate(x)                                  # [R, B] or [R, B, K]
        with torch.no_grad():
            flat = val.reshape(restarts, B, -1).min(-1).values     # worst row per (restart, box)
            idx = flat.argmin(0)                                   # best restart per box
            boxes = torch.arange(B, device=x.device)
            cand_val = val[idx, boxes]
            cand_x = x[idx, boxes].detach()
            if best_val is None:
                best_val, best_x = cand_val.clone(), cand_x.clone()
            else:
                better = cand_val.reshape(B, -1).min(-1).values < best_val.reshape(B, -1).min(-1).values
                best_val[better], best_x[better] = cand_val[better], cand_x[better]
        if it == steps:
            break
        grad, = torch.autograd.grad(val.reshape(restarts, B, -1).min(-1).values.sum(), x)
        with torch.no_grad():
            x = x - alpha * width * grad.sign()
            x = torch.max(torch.min(x, hi), lo)
    return best_x, best_val
