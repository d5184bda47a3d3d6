"""Branch and bound's gate search: a few probes of the softmax / LayerNorm shift's gates around
each row's warm gate, after beta-CROWN's iterations (`probe_gates`; methods/beta_crown.py calls it).

alpha-CROWN ends with a line search over one gate per row (ops/softmax_sum.search_gates: 7 sweeps
on a grid). Branch and bound's domains inherit the gates of their parent (warm start; the root's
are alpha-CROWN's searched ones) and beta-CROWN holds them during its iterations (OPTIMISE_SHIFT
off), but the iterations move the slopes and multipliers, so the best gate moves. Here, after the
iterations, each open domain's rows are bounded again with the best slopes and multipliers and
the row's gates moved by -STEP and +STEP (an end of [0, 1] probes two points inward instead), then
by half the step around the better point (ROUNDS rounds, 2 sweeps each). For fixed slopes and
multipliers a row's bound is concave in a common gate g (lam = g m: the minimum over the relaxed
set of functions linear in lam), so the probes walk towards its maximum.

Sound: any gate in [0, 1] is a valid shift for every point of the domain (the entries sum to the
group's total whatever the point; docs/SOFTMAX.md), and every probe is a full beta-CROWN bound with
that gate. Never looser: per row the larger of the given lower bound and the probes' is kept, and
only a row whose probe beat the given bound gets that probe's gates (its bound with them is the
probe's); the others keep theirs, so the children of a domain start from what proved best.
The gates of the upper side (unused by beta-CROWN) are left as they are.
"""
from __future__ import annotations

import torch

from .softmax_sum import GroupShiftOp

PROBE = False         # True: probe after beta-CROWN's iterations (off: no gain measured, docs/SOFTMAX.md)
STEP = 0.125          # the first probes' distance from the warm gate (alpha-CROWN's finest grid step)
ROUNDS = 1            # probe rounds (2 sweeps each; the step halves every round)
KEEP = True           # a row keeps the gates of its winning probe (its children start from them);
                      # False: the bound only, the gates stay as they were


def gate_names(graph, params: dict) -> list:
    """The group-shift nodes among `params`."""
    return [r for r in params if isinstance(graph[r].op, GroupShiftOp)]


def can_probe(graph, params: dict) -> bool:
    """Are there gates to probe (plain tensors: sharded gates are left alone on every rank)?"""
    names = gate_names(graph, params)
    return PROBE and ROUNDS > 0 and bool(names) and not any(hasattr(params[r], "placements") for r in names)


def row_gate(p: torch.Tensor) -> torch.Tensor:
    """[B, K]: each row's lA-side gate (p: [B, 2, K, *groups]; the mean over its groups)."""
    g = p[:, 0]
    return g.reshape(g.shape[0], g.shape[1], -1).mean(-1)


def _set(params: dict, names, g: torch.Tensor):
    """Every group's lA-side gate of each row set to g [B, K]."""
    for r in names:
        p = params[r]
        p[:, 0].copy_(g.reshape(*g.shape, *([1] * (p.dim() - 3))).expand_as(p[:, 0]))


def _points(base: torch.Tensor, step: float) -> tuple:
    """base - step and base + step; an end of [0, 1] gets two points inward instead."""
    down = torch.where(base - step < 0, base + 2 * step, base - step)
    up = torch.where(base + step > 1, base - 2 * step, base + step)
    return down.clamp(0.0, 1.0), up.clamp(0.0, 1.0)


def probe_gates(graph, params: dict, run, lower: torch.Tensor, step: float | None = None, rounds: int | None = None):
    """Probe the gates around each row's own (see the module docstring). params: node -> [B, 2, K,
    *S] (beta-CROWN's layout; changed in place: a row keeps the gates of its best probe where that
    beat `lower`); run(): the lower bound [B, K] with `params`; lower: the bound to beat [B, K].
    Returns the per-row maximum of `lower` and the probes' bounds. step / rounds: STEP / ROUNDS."""
    step, rounds = STEP if step is None else step, ROUNDS if rounds is None else rounds
    names = gate_names(graph, params)
    with torch.no_grad():
        saved = {r: params[r][:, 0].clone() for r in names}
        centre = row_gate(params[names[0]])
        best, chosen = lower.clone(), torch.full_like(lower, float("nan"))
        for _ in range(rounds):
            base = torch.where(torch.isnan(chosen), centre, chosen)
            for g in _points(base, step):
                _set(params, names, g)
                value = run()
                better = value > best
                best = torch.where(better, value, best)
                chosen = torch.where(better, g, chosen)
            step /= 2
        keep = torch.isnan(chosen) if KEEP else torch.ones_like(chosen, dtype=torch.bool)
        for r in names:
            p = params[r]
            mask = keep.reshape(*keep.shape, *([1] * (p.dim() - 3)))
            fill = chosen.nan_to_num(0.0).reshape(mask.shape).expand_as(p[:, 0])
            p[:, 0].copy_(torch.where(mask, saved[r], fill))
    return best
