"""beta-CROWN: lower bounds of `C y - d` on a batch of branch-and-bound domains.

A domain fixes some ReLU pre-activations to `z >= 0` or `z <= 0`. Its intermediate bounds are
its parent's with the split neurons clamped (`l = 0` / `u = 0`), so the split neurons' ReLUs are
exact; the constraints themselves enter the output's backward sweep as `beta * sign` terms at the
split layer (see `ops.relu`), and the lower slopes `alpha` and multipliers `beta >= 0` are
optimised together by the same projected-gradient loop as alpha-CROWN (`optimize.maximise`).
Intermediate bounds stay fixed, as in alpha,beta-CROWN's default: one backward sweep from the
output per step, which is what makes large domain batches cheap.

Every tensor is batched over domains (dim 0), so a batch of domains is bounded in one sweep, and
choosing, splitting or dropping domains is indexing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import DEFAULT_LAYOUT, Layout
from ..margin import margin
from ..memory import tag
from ..ops.relu import fixed_bounds_memo
from ..ops.softmax_gate_probes import can_probe, gate_names, probe_gates
from ..ops.softmax_sum import best_of_gates, split_gates
from .crown import output_bound
from .optimize import ParamGroup, maximise


@dataclass
class BetaOptions:
    iterations: int = 20
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    patience: int = 5
    tol: float = 1e-4
    gate_probes: bool = True             # the shift's gates probed after the iterations (below)


@dataclass
class BetaResult:
    lower: torch.Tensor                      # [B, K] best lower bounds of C y (d not subtracted)
    alphas: dict                             # relu -> [B, K, *S], the slopes of the best step
    betas: dict                              # relu -> [B, K, *S], the multipliers of the best step
    lA: dict                                 # relu -> [B, K, *S] lower A-matrix at its output;
                                             # input name -> A w.r.t. the input (last step)
    iterations: int


def _objective(lower, d, row_mask):
    """Per domain: sum over its real rows of `lower - d` (padded rows count 0)."""
    return (lower - d).masked_fill(~row_mask, 0.0).sum(1)


def _slopes(a, relu: bool):
    """What a node's backward rule reads for the lower bound: a ReLU's slopes [B, K, *S] (lA
    side); another alpha op's two lA-side parameters, stored as [B, 2, K, *S] (see bab/roots.py)."""
    return (a, None) if relu else (a[:, 0], a[:, 1], None, None)


def _where_batch(mask, new, old):
    """`new` where the domain (dim 0) is marked, else `old`."""
    return torch.where(mask.reshape(mask.shape[0], *([1] * (new.dim() - 1))), new, old)


def beta_crown(graph, bounds, C, d, row_mask, alphas, betas, signs, layout: Layout = DEFAULT_LAYOUT,
               opts: BetaOptions | None = None, on_step=None) -> BetaResult:
    """Optimised lower bounds of `C y` on a batch of domains.

    bounds: the input box (under `graph.input_name`) and every pre-activation's bounds, [B, *S],
        split neurons already clamped. C: [B, K, n_out]; d, row_mask: [B, K] (padded rows False).
    alphas, betas: relu node -> [B, K, *S] warm starts (copied, not changed); other alpha ops
        (sigmoid, products) -> [B, 2, K, *S]. signs: relu node ->
        [B, *S] in {-1, 0, +1}: +1 where the domain has `z <= 0`, -1 where `z >= 0`; an
        elementwise general op -> [B, *S] mask of the neurons whose interval a general split cut
        (their betas [B, 2, K, *S]: multipliers of `l <= z` and `z <= u`).
    A domain's rows are proved where `lower - d > 0`; the loop stops early once every domain has a
    proved row (on every rank).
    """
    # The intermediate bounds are fixed here: each ReLU's relaxation is computed once, not every step.
    with fixed_bounds_memo():
        return _beta_crown(graph, bounds, C, d, row_mask, alphas, betas, signs, layout, opts or BetaOptions(),
                           on_step)


def _beta_crown(graph, bounds, C, d, row_mask, alphas, betas, signs, layout, opts, on_step) -> BetaResult:
    with tag("alphas"):
        alpha_p = {r: a.detach().clone().requires_grad_(True) for r, a in alphas.items()}
        beta_p = {r: b.detach().clone().requires_grad_(True) for r, b in betas.items()}
    recorded: dict = {}

    def bound_at(a, b, idx=None, record=None):
        pick = (lambda t: t) if idx is None else (lambda t: t[idx])      # idx: some domains only
        return output_bound(graph, {k: tuple(pick(t) for t in v) for k, v in bounds.items()}, pick(C), layout,
                            {r: _slopes(x, getattr(graph[r].op, "splittable", False)) for r, x in a.items()},
                            want_lower=True, want_upper=False, gather=False,
                            betas={r: (x, pick(signs[r])) for r, x in b.items()}, record=record)[0]

    def bound(record=None):
        return bound_at(alpha_p, beta_p, record=record)

    with torch.no_grad():
        # Shifted and plain softmax / LayerNorm steps, the tighter per row (ops/softmax_sum.py).
        best_lower = best_of_gates(graph, alpha_p, lambda: bound(recorded))
    best = {"lower": best_lower, "objective": _objective(best_lower, d, row_mask),
            "alphas": {r: a.detach().clone() for r, a in alpha_p.items()},
            "betas": {r: b.detach().clone() for r, b in beta_p.items()}}

    def proved_all(lower):
        return bool((margin(lower, d, row_mask) > 0).all())

    def evaluate(it):
        rec: dict = {}
        lower = bound(rec)
        return -(lower.masked_fill(~row_mask, 0.0)).sum(), (lower.detach(), rec)

    def keep_best(state):
        lower, rec = state
        objective = _objective(lower, d, row_mask)
        better = objective > best["objective"]
        best["objective"] = torch.where(better, objective, best["objective"])
        best["lower"] = torch.maximum(best["lower"], lower)
        for r in alpha_p:
            best["alphas"][r] = _where_batch(better, alpha_p[r].detach(), best["alphas"][r])
        for r in beta_p:
            best["betas"][r] = _where_batch(better, beta_p[r].detach(), best["betas"][r])
        recorded.update(rec)
        # The score and "all proved" in one read from the device (one host sync a step, not two).
        total = best["objective"].sum()
        proved = (margin(best["lower"], d, row_mask) > 0).all().to(total.dtype)
        score, done = torch.stack([total, proved]).tolist()
        return score, done > 0

    iterations = 0
    if not layout.all_true(proved_all(best_lower)):
        gates, slopes, gate_lr, rule = split_gates(graph, list(alpha_p.items()), opts.lr_alpha)   # (softmax_sum.py)
        groups = [ParamGroup(slopes, opts.lr_alpha, 0.0, 1.0), ParamGroup(gates, gate_lr, 0.0, 1.0, rule),
                  ParamGroup(list(beta_p.values()), opts.lr_beta, 0.0, None)]
        iterations = maximise(groups, evaluate, keep_best, opts.iterations, layout, opts.patience, opts.tol,
                              on_step)
        if opts.gate_probes and iterations > 0 and can_probe(graph, best["alphas"]):
            _probe_gates(graph, bound_at, best, d, row_mask, layout, on_step, iterations)
    return BetaResult(best["lower"], best["alphas"], best["betas"], recorded, iterations)


def _probe_gates(graph, bound_at, best: dict, d, row_mask, layout: Layout, on_step, steps: int):
    """The softmax / LayerNorm shift's gates probed around each row's own after the iterations, on
    the best slopes and multipliers (ops/softmax_gate_probes.py): `best` (lower, alphas) tightened
    in place, never looser. One process probes the domains with no proved row only; ranks that
    share sweeps probe all theirs (the same sweeps on every rank), unless all are proved or a rank
    is out of time (`on_step`, as after alpha-CROWN's iterations)."""
    open_ = margin(best["lower"], d, row_mask) <= 0                      # [B]
    late = on_step is not None and bool(on_step(steps, None))
    if layout.all_true(not bool(open_.any())) or not layout.all_true(not late):
        return
    idx = open_.nonzero().flatten() if layout.world_size == 1 else torch.arange(len(open_), device=open_.device)
    alphas = {r: a[idx] for r, a in best["alphas"].items()}
    betas = {r: b[idx] for r, b in best["betas"].items()}
    lower = probe_gates(graph, alphas, lambda: bound_at(alphas, betas, idx), best["lower"][idx])
    best["lower"] = best["lower"].index_put((idx,), lower)
    for r in gate_names(graph, alphas):
        best["alphas"][r] = best["alphas"][r].index_put((idx,), alphas[r])
