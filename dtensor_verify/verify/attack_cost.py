"""Is the first attack round too costly to run before the bounds? (issue 21, ml4acopf)

The first PGD round runs `restarts` starts per open pair for `steps` steps before any bound. On
a property with hundreds of disjuncts and a network with wide elementwise tables (ml4acopf 2024:
236 disjuncts, 1696 outputs) that round alone took the whole scaled time limit on one CPU
thread, while CROWN then proves every disjunct in 2 s. `too_costly` times one forward +
backward pass on one chunk of the round's samples and says whether the whole round would take
more than `SHARE` of the time left; `stages.Attack` then defers the round until after the first
bound (`DeferredAttack`: the pairs it leaves open, restarts capped), as it does for thousands
of pairs. Deferring only reorders the stages: no verdict rule changes.

One process only: under a mesh every rank must take the same branch (collectives follow) and
their probes would time differently, so there the pair count alone decides, as before.
"""
from __future__ import annotations

import math
import time

import torch

SHARE = 0.25          # the first round may take at most this share of the time left
MIN_PAIRS = 16        # fewer open pairs: never probed (the round is cheap enough)


def _one_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1)


def round_seconds(inst, n_open: int) -> float:
    """Estimated seconds of the first round: one timed forward + backward on one chunk."""
    opts = inst.attack
    samples = n_open * max(opts.restarts, 1)
    chunk = min(samples, opts.max_samples)
    lo, hi = inst.pair_lo[:1], inst.pair_hi[:1]
    x = (lo + (hi - lo) * torch.rand((chunk, *lo.shape[1:]), dtype=lo.dtype, device=lo.device)).requires_grad_(True)
    t = time.perf_counter()
    with inst.model.layout.network_function():
        y = inst.model.forward(x)
        torch.autograd.grad(y.sum(), x)
    probe = time.perf_counter() - t
    return probe * (opts.steps + 1) * math.ceil(samples / chunk)


def too_costly(inst, n_open: int) -> bool:
    """True when the first round would take more than SHARE of the time left (one process)."""
    if n_open < MIN_PAIRS or not _one_process():
        return False
    left = inst.clock.left()
    if not math.isfinite(left):
        return False
    est = round_seconds(inst, n_open)
    if est > SHARE * left:
        inst.say(f"attack: deferred after the first bound (first round ~{est:.0f} s > {SHARE:g} x {left:.0f} s left)")
        return True
    return False
