"""Projected gradient ascent on the parameters of a bound: one loop for alpha-CROWN and beta-CROWN.

beta-CROWN is alpha-CROWN with more parameters: both maximise a sound bound over parameters that
live in a box (slopes in [0, 1], split multipliers >= 0). Any value of them gives a valid bound,
so the loop only has to climb, project back into the box, and remember the best bound seen.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..memory import tag
from .adam import Adam
from .sign_steps import SignSteps


@dataclass
class ParamGroup:
    """Tensors sharing a learning rate and a projection `[low, high]` (None: unbounded side).
    `rule`: "adam", or "sign" (methods/sign_steps.py: piecewise-linear objectives; lr = the
    largest step)."""
    params: list
    lr: float
    low: float | None = None
    high: float | None = None
    rule: str = "adam"

    def project_(self):
        if len(self.params) > 1 and all(type(p) is torch.Tensor for p in self.params):
            # One call per side for the group (the same clamp on each tensor; DTensors: one by one).
            if self.low is not None:
                torch._foreach_clamp_min_(self.params, self.low)
            if self.high is not None:
                torch._foreach_clamp_max_(self.params, self.high)
            return
        for p in self.params:
            p.clamp_(self.low, self.high)


class _Optimizers:
    """Adam on the "adam" groups and sign steps on the "sign" groups, as one optimiser."""

    def __init__(self, adam_groups, sign_groups):
        self.parts = ([Adam([(g.params, g.lr) for g in adam_groups])] if adam_groups else []) + \
            ([SignSteps([(g.params, g.lr) for g in sign_groups])] if sign_groups else [])

    def zero_grad(self):
        for part in self.parts:
            part.zero_grad()

    def step(self):
        for part in self.parts:
            part.step()


def maximise(groups: list[ParamGroup], evaluate, keep_best, iterations: int, layout,
             patience: int = 5, tol: float = 1e-4, on_step=None) -> int:
    """Adam on `groups` for at most `iterations` steps; returns the number of steps run.

    `evaluate(it)` computes the bound with the current parameters and returns `(loss, state)`:
    Adam minimises `loss`; `state` goes to `keep_best(state)` once the step and the projection are
    done, which records the best bounds and returns `(score, finished)`. `on_step(it, score)` may
    raise (a time-out) or return True to ask for a stop. The loop stops early when `finished` (or
    that request) holds on every rank (e.g. every domain proved), or when `score` improved by less
    than `tol` (relative) over `patience` steps on every rank: ranks bound different rows or
    domains, but their collectives must stay in step.
    """
    groups = [g for g in groups if g.params]
    if not groups or iterations <= 0:
        return 0
    # not torch.optim.Adam: that imports torch._dynamo (seconds of start-up; methods/adam.py)
    optimizer = _Optimizers([g for g in groups if g.rule == "adam"], [g for g in groups if g.rule == "sign"])
    with layout.search_weights():     # a placed layout may hold its weights gathered for the loop
        return _steps(optimizer, groups, evaluate, keep_best, iterations, layout, patience, tol, on_step)


def _steps(optimizer, groups, evaluate, keep_best, iterations, layout, patience, tol, on_step) -> int:
    history = []
    steps = 0
    for it in range(iterations):
        steps = it + 1
        loss, state = evaluate(it)
        with tag("alpha-optimizer"):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        del loss
        with torch.no_grad():
            for g in groups:
                g.project_()
            score, finished = keep_best(state)
            score = layout.total(score)     # the rows' sum over ranks that split them (bounds_dp)
        del state
        history.append(score)
        if on_step is not None and on_step(it, score):
            finished = True
        stalled = False
        if len(history) > patience:
            old = history[-1 - patience]
            stalled = abs(score - old) <= tol * max(1.0, abs(old))
        # Every rank asks every step, so the collective stays in step.
        if layout.all_true(finished or stalled):
            break
    return steps
