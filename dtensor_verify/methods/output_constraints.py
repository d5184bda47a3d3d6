"""Intermediate bounds tightened by a disjunct's own output constraints (INVPROP-style).

A (region, disjunct) pair is unsafe at x when every row of `C f(x) - d <= 0` holds. Branch and
bound only has to show that no x of the box does that, so the bounds of an intermediate node z
need only hold on U = {x in box : C f(x) - d <= 0}. For any gamma >= 0, on U:

    z_j(x) >= z_j(x) + gamma . (C f(x) - d)          (the added term is <= 0 on U)
    z_j(x) <= z_j(x) - gamma . (C f(x) - d)

so min_U z_j >= min_box [ z_j + gamma . (C f - d)] and max_U z_j <= -min_box [-z_j + gamma . (C f - d)]:
one CROWN sweep from the output (A = gamma C) that picks up +-e_j on its way through z
(`backward_bound(..., extra=...)`), maximised over gamma >= 0 by projected Adam (gamma = 0 is
plain CROWN through z). Every gamma gives a sound bound; the best seen is kept and intersected
with the old bounds.

What the tightened bounds mean: they hold on U, not on the box. So they may only be used to prove
that U is empty (every bound computed from them is a bound over U; a positive row, or a neuron
whose lower bound passes its upper bound, proves the pair). Attacks and counterexamples never see
them: they read the network itself. Each pair gets its own (its U is its own).

Which nodes: by default the inputs of the last nonlinear layer (`last_preactivations`): the
output sweep then crosses one relaxation, the one these bounds tighten. alpha,beta-CROWN's
VNN-COMP 2024 TinyYOLO config does the same (`apply_output_constraints_to: /input-48`, INVPROP,
Kotha et al., NeurIPS 2023).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .adam import Adam
from .crown import backward_bound


EMPTY_TOL = 1e-5        # relative: crossed bounds prove U empty only past this (float32 rounding)


@dataclass(frozen=True)
class OutputConstraintOptions:
    iterations: int = 20                # projected Adam steps on gamma per chunk of neurons
    lr: float = 0.1
    lr_alpha: float = 0.1               # the slopes of the ReLUs between the node and the output
    lr_decay: float = 0.98
    slopes: bool = True                 # optimise those slopes per row too (False: CROWN's)
    upstream: str = "shared"            # the ReLUs below the node: 'shared' (one slope set for a sweep's
                                        # rows, optimised; alpha,beta-CROWN's share_alphas), 'rows' (per
                                        # row: memory of an A-matrix each), 'crown' (CROWN's, fixed)
    max_rows: int = 512                 # neurons per sweep, at most (each is two rows: its lower and
                                        # upper); fewer where this process's device share holds fewer
                                        # (`neurons_per_sweep`)
    rounds: int = 8                     # passes over the node, each relaxing its own ReLU with the
                                        # bounds the last pass left (stops when the width shrinks < 1 %)


@dataclass
class Tightened:
    """Bounds of one node over U, [1, *S], and what changed."""
    lower: torch.Tensor
    upper: torch.Tensor
    neurons: int                        # neurons swept (the unstable ones)
    stabilised: int                     # of those, now stable
    empty: bool                         # some neuron's lower bound passed its upper: U is empty
    width_before: float                 # summed width of the swept neurons' intervals
    width_after: float


def last_preactivations(graph) -> list[str]:
    """Inputs of nonlinear ops that feed no other nonlinear op's input (the last layer's)."""
    pre = [n for n in graph.preactivation_nodes() if n != graph.input_name]
    return [p for p in pre if not any(p in graph.ancestors(q) for q in pre if q != p)]


def tighten(graph, bounds: dict, C: torch.Tensor, d: torch.Tensor, node: str, layout,
            opts: OutputConstraintOptions = OutputConstraintOptions(), stop=None, neurons=None) -> Tightened:
    """`opts.rounds` passes of `tighten_once`: the sweeps from the output cross the node's own ReLU,
    whose relaxation the last pass's bounds make tighter (a fixed-point iteration, each pass sound)."""
    first = current = tighten_once(graph, bounds, C, d, node, layout, opts, stop, neurons)
    for _ in range(opts.rounds - 1):
        if current.empty or current.width_after > 0.99 * current.width_before or (stop is not None and stop()):
            break
        again = dict(bounds)
        again[node] = (current.lower, current.upper)
        current = tighten_once(graph, again, C, d, node, layout, opts, stop, neurons)
    lo, up = bounds[node]
    flat_lo, flat_up = current.lower.flatten(1)[0], current.upper.flatten(1)[0]
    swept = _swept(lo.flatten(1)[0], up.flatten(1)[0], neurons)
    stable_now = swept & ((flat_lo >= 0) | (flat_up <= 0))
    width_after = float((flat_up - flat_lo)[swept].clamp_min(0).sum())
    return Tightened(current.lower, current.upper, first.neurons, int(stable_now.sum()), current.empty,
                     first.width_before, width_after)


def _swept(lo, up, neurons=None):
    """The neurons a pass tightens: unstable ones (of `neurons`, when given). lo, up: flat [N]."""
    mask = (lo < 0) & (up > 0)
    if neurons is not None:
        chosen = torch.zeros_like(mask)
        chosen[neurons] = True
        mask &= chosen
    return mask


def tighten_once(graph, bounds: dict, C: torch.Tensor, d: torch.Tensor, node: str, layout,
                 opts: OutputConstraintOptions = OutputConstraintOptions(), stop=None, neurons=None) -> Tightened:
    """Bounds of `node` over U for one pair. bounds: node -> (lower, upper) [1, *S] (with the
    input box); C [K, n_out], d [K]: the pair's real rows. `stop()` is asked between sweeps: True
    ends the work there, keeping what was found (neurons not reached keep their bounds); it may
    also raise (a clock). `neurons` (flat indices): only these of the unstable ones (benchmarks).
    Every bound returned is detached."""
    lo, up = bounds[node]
    shape = lo.shape[1:]
    flat_lo, flat_up = lo.detach().flatten(1).clone(), up.detach().flatten(1).clone()
    before = (flat_up - flat_lo)
    unstable = _swept(flat_lo[0], flat_up[0], neurons).nonzero().squeeze(1)
    width_before = float(before[0, unstable].sum())
    out_shape = graph.output.shape
    C = C.detach().to(lo.dtype)
    d = d.detach().to(lo.dtype)
    step = layout.smallest(neurons_per_sweep(graph, lo.device, opts.max_rows))    # (ranks sweep together)
    for start in range(0, len(unstable), step):
        if stop is not None and stop():
            break
        idx = unstable[start:start + step]
        with torch.enable_grad():
            best = _sweep_chunk(graph, bounds, C, d, node, idx, shape, out_shape, layout, opts, stop)
        r = len(idx)
        flat_lo[0, idx] = torch.maximum(flat_lo[0, idx], best[:r])
        flat_up[0, idx] = torch.minimum(flat_up[0, idx], -best[r:])
    # U empty: some neuron's bounds cross by more than float32 rounding of their size could explain
    # (a one-point U computed a hair apart must not prove anything).
    empty = bool((flat_lo - flat_up > EMPTY_TOL * (1.0 + flat_lo.abs() + flat_up.abs())).any())
    if not empty:       # crossed within rounding: those neurons keep the bounds they came with
        crossed = flat_lo > flat_up
        flat_lo = torch.where(crossed, lo.detach().flatten(1), flat_lo)
        flat_up = torch.where(crossed, up.detach().flatten(1), flat_up)
    stable_now = ((flat_lo[0, unstable] >= 0) | (flat_up[0, unstable] <= 0))
    width_after = float((flat_up - flat_lo)[0, unstable].clamp_min(0).sum())
    return Tightened(flat_lo.reshape(1, *shape), flat_up.reshape(1, *shape), len(unstable),
                     int(stable_now.sum()), empty, width_before, width_after)


def _sweep_chunk(graph, bounds, C, d, node, idx, shape, out_shape, layout, opts, stop):
    """max over gamma >= 0 of min_box [s z_j + gamma (C f - d)] for the neurons idx, s = +1 then -1:
    returns [2r] (lower bounds of z_j, then of -z_j)."""
    r = len(idx)
    numel = 1
    for s in shape:
        numel *= s
    E = torch.zeros(1, 2 * r, numel, dtype=C.dtype, device=C.device)
    rows = torch.arange(r, device=C.device)
    E[0, rows, idx] = 1.0
    E[0, r + rows, idx] = -1.0
    E = E.reshape(1, 2 * r, *shape)
    gamma = torch.zeros(1, 2 * r, C.shape[0], dtype=C.dtype, device=C.device, requires_grad=True)
    slopes = _downstream_slopes(graph, bounds, node, 2 * r, layout) if opts.slopes else {}
    if opts.upstream != "crown":
        slopes.update(_upstream_slopes(graph, bounds, node, 1 if opts.upstream == "shared" else 2 * r, layout))
    groups = [([gamma], opts.lr)] + ([(list(slopes.values()), opts.lr_alpha)] if slopes else [])
    opt = Adam(groups)
    best = torch.full((2 * r,), -torch.inf, dtype=C.dtype, device=C.device)
    for it in range(max(1, opts.iterations)):
        if it and stop is not None and stop():
            break
        A = torch.einsum("bqk,kn->bqn", gamma, C).reshape(1, 2 * r, *out_shape)
        value, _ = backward_bound(graph, graph.output_name, A, None, bounds, layout,
                                  alphas=slopes, extra={node: (E, None)})
        value = value - torch.einsum("bqk,k->bq", gamma, d)
        best = torch.maximum(best, value.detach()[0])
        if it + 1 == opts.iterations:
            break
        opt.zero_grad()
        (-value.sum()).backward()
        opt.step()
        with torch.no_grad():
            gamma.clamp_(min=0)
            for a in slopes.values():
                a.clamp_(0.0, 1.0)
        opt.groups = [(params, lr * opts.lr_decay) for params, lr in opt.groups]
    return best


def neurons_per_sweep(graph, device, most: int, free_bytes=None) -> int:
    """Neurons per sweep (2 rows each) that this process's part of the device holds: a sweep with
    autograd keeps every node's A-matrix for the backward pass (about two copies of each node per
    row: the A-matrix and what the slopes' rule saves). `most` on a CPU whose memory is not shared
    (as `alpha_budget.crown_max_rows`)."""
    from ..device_share import free_memory_bytes, sharing
    from .alpha_budget import FRACTION

    if device.type == "cpu" and sharing() == 1 and free_bytes is None:
        return most
    per_row = 2 * 4 * sum(n.numel for n in graph.nodes if n.op is not None)
    free = (free_bytes or free_memory_bytes)(device)
    return max(1, min(most, int(free * FRACTION) // (2 * per_row)))


def _relus(graph):
    return [n for n in graph.nodes
            if n.op is not None and getattr(n.op, "splittable", False) and hasattr(n.op, "init_alpha")]


def _upstream_slopes(graph, bounds, node, rows, layout):
    """Slopes of the ReLUs upstream of `node` (rows = 1: one set shared by every row)."""
    above = graph.ancestors(node)
    return {n.name: _slope_param(n, bounds, rows, layout, graph) for n in _relus(graph)
            if n.name in above and n.name != node}


def _downstream_slopes(graph, bounds, node, rows, layout):
    """Slopes, one set per row, of the ReLUs on the way from the output to `node`: those whose
    input is `node` or has it upstream."""
    return {n.name: _slope_param(n, bounds, rows, layout, graph) for n in _relus(graph)
            if n.inputs[0] == node or node in graph.ancestors(n.inputs[0])}


def _slope_param(relu, bounds, rows, layout, graph):
    """CROWN's adaptive slopes [2 (sides), 1, rows, *S] laid out as alpha-CROWN's are for the
    output's sweep (`layout.alpha_param`: a tp rank keeps its neurons), to be optimised."""
    init = relu.op.init_alpha(*bounds[relu.inputs[0]])          # [2, 1, *S]
    a = init.unsqueeze(2).expand(-1, -1, rows, *([-1] * (init.dim() - 2)))
    return layout.alpha_param(a, relu, graph.output_name).clone().requires_grad_(True)
