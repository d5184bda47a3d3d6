"""Adam for the bound parameters, without `torch.optim`.

`torch.optim`'s optimizers import `torch._dynamo` (and with it sympy and the compiler stack) the
first time one is built or stepped (`torch._disable_dynamo` on `add_param_group` and `step`):
2-3 s of every rank's start-up on a loaded CPU (scripts/startup_phases.py, docs/TRUST.md), in a
run whose whole time limit may be a minute. This is the same update as `torch.optim.Adam`'s
default single-tensor path (betas (0.9, 0.999), eps 1e-8, no weight decay, no amsgrad), operation
for operation, so CPU results are bitwise those of `torch.optim.Adam(foreach=False)`; it works on
DTensor parameters as on plain tensors (in-place pointwise ops only).
"""
from __future__ import annotations

import torch


class GroupOptimiser:
    """Parameter groups `[(params, lr)]` and the one `zero_grad` the project's optimisers share."""

    groups: list

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None


class Adam(GroupOptimiser):
    """`Adam([(params, lr), ...])`: `zero_grad()` then, after `backward()`, `step()`."""

    def __init__(self, groups, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.groups = [(list(params), float(lr)) for params, lr in groups]
        if not any(params for params, _ in self.groups):
            raise ValueError("Adam got an empty parameter list")
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.state: dict[int, list] = {}      # id(param): [step, exp_avg, exp_avg_sq]

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.beta1, self.beta2
        for params, lr in self.groups:
            for p in params:
                if p.grad is not None:
                    self._update(p, p.grad, lr, b1, b2)

    def _update(self, p, grad, lr: float, b1: float, b2: float) -> None:
        """torch.optim.adam._single_tensor_adam for one parameter (its own step count, as there)."""
        if id(p) not in self.state:
            self.state[id(p)] = [0.0, torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format)]
        entry = self.state[id(p)]
        entry[0] += 1.0
        step, exp_avg, exp_avg_sq = entry
        exp_avg.lerp_(grad, 1 - b1)
        exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step_size = lr / (1 - b1 ** step)
        bias_correction2_sqrt = (1 - b2 ** step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)
