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
            live = [p for p in params if p.grad is not None]
            if _can_batch(live, self.state):
                self._update_all(live, lr, b1, b2)
                continue
            for p in live:
                self._update(p, p.grad, lr, b1, b2)

    def _update_all(self, params: list, lr: float, b1: float, b2: float) -> None:
        """`_update` on each of `params` (plain tensors of one device and dtype, one step count), as
        `torch._foreach_*` calls: the same operations per tensor (bitwise the same on a CPU), a few
        calls in all instead of a few per tensor (beta-CROWN's small rounds pay per call)."""
        for p in params:
            if id(p) not in self.state:
                self.state[id(p)] = [0.0, torch.zeros_like(p, memory_format=torch.preserve_format),
                                     torch.zeros_like(p, memory_format=torch.preserve_format)]
        entries = [self.state[id(p)] for p in params]
        for entry in entries:
            entry[0] += 1.0
        step = entries[0][0]
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = [e[1] for e in entries], [e[2] for e in entries]
        torch._foreach_lerp_(exp_avgs, grads, 1 - b1)
        torch._foreach_mul_(exp_avg_sqs, b2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - b2)
        step_size = lr / (1 - b1 ** step)
        bias_correction2_sqrt = (1 - b2 ** step) ** 0.5
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size)

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


def _can_batch(params: list, state: dict) -> bool:
    """More than one parameter, all plain tensors (not DTensors) of one device and dtype, and one
    step count among them (all new, or all seen equally often)."""
    if len(params) < 2 or any(type(p) is not torch.Tensor or type(p.grad) is not torch.Tensor for p in params):
        return False
    first = params[0]
    if any(p.device != first.device or p.dtype != first.dtype or p.grad.dtype != first.dtype for p in params):
        return False
    steps = {state[id(p)][0] if id(p) in state else 0.0 for p in params}
    return len(steps) == 1
