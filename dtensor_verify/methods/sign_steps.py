"""Sign steps with per-entry step sizes (Rprop's rule), for parameters whose objective is
piecewise linear: the softmax / LayerNorm shift's gates (ops/softmax_sum.py, docs/SOFTMAX.md).

For fixed slopes a row's bound is concave and piecewise linear in a group's shift, its kinks where
a coefficient of the shifted row (or of a row downstream) changes sign; its maximum is a kink.
Adam's steps, of a fixed size once its moments settle, oscillate around such a maximum (measured:
the gates optimised by Adam made the ViT's alpha-CROWN bound looser). Here each entry moves by its
own step in the direction of its gradient's sign; a sign change (the kink was crossed) halves the
step, so the entry bisects towards the kink; an unchanged sign grows it (x 1.2, at most `lr`);
a zero gradient (a flat piece) leaves the entry where it is. The same interface as `adam.Adam`.
"""
from __future__ import annotations

import torch

from .adam import GroupOptimiser


class SignSteps(GroupOptimiser):
    """`SignSteps([(params, lr), ...])`: `zero_grad()`, then after `backward()`, `step()` (descent)."""

    grow, shrink = 1.2, 0.5
    delay = 0                             # steps before the entries start to move

    def __init__(self, groups, first: float = 0.25):
        self.groups = [(list(params), float(lr)) for params, lr in groups]
        self.first = first
        self.state: dict[int, list] = {}      # id(param): [step sizes, previous gradient sign]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        if self.steps <= self.delay:
            return
        for params, lr in self.groups:
            for p in params:
                if p.grad is not None:
                    self._update(p, p.grad.sign(), lr)

    def _update(self, p, sign, lr: float) -> None:
        if id(p) not in self.state:
            self.state[id(p)] = [torch.full_like(p, self.first * lr / self.grow), torch.zeros_like(p)]
        size, previous = self.state[id(p)]
        turned = sign * previous < 0
        size.copy_(torch.where(turned, size * self.shrink, (size * self.grow).clamp(max=lr)))
        p.sub_(sign * size)
        previous.copy_(sign)
