"""The input-splitting parts of branch and bound (the solver calls them when its domains are sub-boxes).

    mode_of       'input' or 'relu' for a problem (split_kinds.resolve_mode on its boxes)
    with_boxes    roots that carry their own box (their pair's), so that splits can halve it
    refreshed     children's intermediate bounds recomputed on their own boxes
    alpha_before  fewer alpha-CROWN steps before branch and bound when it will split inputs (the
                  sub-boxes' bounds soon beat what long optimisation on the whole box gives)
    attack_boxes  PGD inside the most promising open sub-boxes; candidates go to the solver's
                  `try_points`, which confirms them like every other counterexample

Sub-boxes travel between workers like any domain (`Domains.box` is a field), so the `dp`
rebalancing and the stop-together sync of ReLU splitting apply unchanged.
"""
from __future__ import annotations

import math

import torch

from ..methods.crown import CrownOptions, intermediate_bounds
from .domains import Domains
from .split_kinds import perturbed_dims, resolve_mode


def mode_of(problem, opts) -> str:
    return resolve_mode(opts.split, len(problem.relus), perturbed_dims(problem.box_lower, problem.box_upper),
                        opts.max_input_dims)


def alpha_before(model, pair_lo, pair_hi, bab: bool, bab_options, alpha_options):
    """The alpha-CROWN options of the pipeline's bounding stage: `bab_options.input_alpha_iterations`
    steps when branch and bound will split inputs, else `alpha_options` unchanged."""
    from ..methods import AlphaOptions
    from .solver import BabOptions

    opts = bab_options or BabOptions()
    if not bab or alpha_options is not None:
        return alpha_options
    n_relus = sum(1 for n in model.graph.nodes if n.op is not None and n.op.needs_input_bounds)
    mode = resolve_mode(opts.split, n_relus, perturbed_dims(pair_lo, pair_hi), opts.max_input_dims)
    return AlphaOptions(iterations=opts.input_alpha_iterations) if mode == "input" else None


def with_boxes(problem, roots: Domains) -> Domains:
    if roots.box is None:
        roots.box = (problem.box_lower[roots.pair].clone(), problem.box_upper[roots.pair].clone())
    return roots


def refreshed(problem, kids: Domains, lockstep: bool) -> dict:
    """Each child's intermediate bounds: CROWN on its own box intersected with what it inherited
    (both hold on the child's region). Ranks that share bounding steps (`lockstep`) sweep every
    neuron, stable or not, so that they run the same collectives whatever their domains."""
    if not kids.bounds:
        return kids.bounds
    with torch.no_grad():
        fresh, _ = intermediate_bounds(problem.graph, kids.box, problem.layout,
                                       CrownOptions(skip_stable=not lockstep))
    out = {}
    for name, (lo, up) in kids.bounds.items():
        new_lo, new_up = fresh[name]
        out[name] = (torch.maximum(lo, new_lo), torch.minimum(up, new_up))
    return out


def _objective(problem, pair):
    C, d, mask = problem.C[pair], problem.d[pair], problem.row_mask[pair]

    def margin(y):                                    # y [R, n, n_out] -> [R, n]
        rows = torch.einsum("pkn,rpn->rpk", C, y) - d
        return rows.masked_fill(~mask, -math.inf).max(-1).values
    return margin


def attack_boxes(problem, domains: Domains, opts, try_points, lockstep: bool, restarts: int = 4,
                 steps: int = 10) -> bool:
    """Short PGD inside the `opts.pgd_points` open sub-boxes with the smallest margins (lower
    bound closest to a violation). True once `try_points` confirmed a counterexample."""
    n = len(domains)
    if n == 0 and not lockstep:
        return False
    margins = problem.margins(domains.lower, domains.pair)
    pick = torch.topk(margins, min(opts.pgd_points, n), largest=False).indices
    lo, hi = (t[pick] for t in problem.box_of(domains))
    pair = domains.pair[pick]
    margin = _objective(problem, pair)
    gen = torch.Generator(device=lo.device).manual_seed(int(domains.depth.sum()) if n else 0)
    LO, HI = lo.unsqueeze(0).expand(restarts, *lo.shape), hi.unsqueeze(0).expand(restarts, *hi.shape)
    W = HI - LO
    x = LO + W * torch.rand(LO.shape, generator=gen, device=lo.device, dtype=lo.dtype)
    if restarts:
        x[0] = (lo + hi) / 2
    best_x, best_v = (lo + hi) / 2, torch.full((lo.shape[0],), math.inf, dtype=lo.dtype, device=lo.device)
    ar = torch.arange(lo.shape[0], device=lo.device)
    for t in range(steps + 1):
        x = x.detach().requires_grad_(t < steps)
        with torch.set_grad_enabled(t < steps):
            y = problem.forward(x.reshape(-1, *lo.shape[1:]))
            val = margin(y.reshape(restarts, lo.shape[0], y.shape[-1]))
        with torch.no_grad():
            v, i = val.detach().min(0)
            better = v < best_v
            best_v = torch.where(better, v, best_v)
            best_x[better] = x.detach()[i[better], ar[better]]
        if t == steps:
            break
        grad, = torch.autograd.grad(val.sum(), x)
        eta = 0.25 * (1 + math.cos(math.pi * t / steps)) + 0.01
        with torch.no_grad():
            x = torch.max(torch.min(x - eta * W * grad.sign(), HI), LO)
    with torch.no_grad():
        y = problem.forward(best_x)          # every rank, hits or not (a collective under some layouts)
    hits = (best_v <= 0).nonzero().flatten()
    return hits.numel() > 0 and bool(try_points(best_x[hits], pair[hits], y[hits]))
