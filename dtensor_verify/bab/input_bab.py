"""The input-splitting parts of branch and bound (the solver calls them when its domains are sub-boxes).

    mode_of       'input' or 'relu' for a problem (split_kinds.resolve_mode on its boxes)
    with_boxes    roots that carry their own box (their pair's), so that splits can halve it
    refreshed     children's intermediate bounds recomputed on their own boxes
    splits_inputs will branch and bound split input boxes (the pipeline's many-pairs policy)
    alpha_before  fewer alpha-CROWN steps before branch and bound when it will split inputs (the
                  sub-boxes' bounds soon beat what long optimisation on the whole box gives)
    attack_boxes  PGD inside the most promising open sub-boxes; candidates go to the solver's
                  `confirm`, which checks them like every other counterexample

Sub-boxes travel between workers like any domain (`Domains.box` is a field), so the `dp`
rebalancing and the stop-together sync of ReLU splitting apply unchanged.
"""
from __future__ import annotations

import torch

from ..attack import pgd
from ..margin import margin, spec_rows
from ..methods.crown import CrownOptions, intermediate_bounds
from .domains import Domains, split
from .split_kinds import has_general, perturbed_dims, relu_neurons, resolve_mode


def mode_of(problem, opts) -> str:
    """The kind of split of this run. Ranks that share one queue (tp: each holds a slice of the
    same domains) split ReLUs: input splitting reads the A-matrix at the input, which such a
    layout may keep sliced, so the ranks could choose different dimensions (not supported yet)."""
    mode = resolve_mode(opts.split, relu_neurons(problem.graph), perturbed_dims(problem.box_lower, problem.box_upper),
                        opts.max_input_dims, has_general(problem.graph))
    layout = problem.layout
    if mode == "input" and layout.world_size > 1 and not layout.splits_domains and problem.relus:
        return "relu"
    return mode


def alpha_before(model, pair_lo, pair_hi, bab: bool, bab_options, alpha_options):
    """The alpha-CROWN options of the pipeline's bounding stage: `bab_options.input_alpha_iterations`
    steps when branch and bound will split inputs, else `alpha_options` unchanged. `bab_options`:
    a `BabOptions` (not None)."""
    from ..methods import AlphaOptions

    if not bab or alpha_options is not None:
        return alpha_options
    if splits_inputs(model, pair_lo, pair_hi, bab, bab_options):
        return AlphaOptions(iterations=bab_options.input_alpha_iterations)
    return None


def splits_inputs(model, pair_lo, pair_hi, bab: bool, bab_options) -> bool:
    """Will branch and bound split the input boxes of these pairs (`resolve_mode`)?"""
    opts = bab_options
    return bab and resolve_mode(opts.split, relu_neurons(model.graph), perturbed_dims(pair_lo, pair_hi),
                                opts.max_input_dims, has_general(model.graph)) == "input"


def with_boxes(problem, roots: Domains) -> Domains:
    if roots.box is None:
        roots.box = (problem.box_lower[roots.pair].clone(), problem.box_upper[roots.pair].clone())
    return roots


def refreshed(problem, kids: Domains, lockstep: bool = False) -> dict:
    """Each child's intermediate bounds: CROWN on its own box intersected with what it inherited
    (both hold on the child's region), for every neuron, stable or not. So a child's bounds do not
    depend on the rest of its batch: sweeping only the neurons unstable in *some* box of the batch
    (`skip_stable`) kept their CROWN bounds in boxes where IBP already proved them stable, which
    tightened the IBP of the layers after them, so one process and two dp workers (half batches)
    bounded the same sub-box differently and grew other trees (docs/bab_scaling/dp_s4). Ranks
    that share bounding steps need this too (the same collectives whatever their domains); `lockstep`
    is kept for the callers."""
    if not kids.bounds:
        return kids.bounds
    with torch.no_grad():
        fresh, _ = intermediate_bounds(problem.graph, kids.box, problem.layout,
                                       CrownOptions(skip_stable=False))
    out = {}
    for name, (lo, up) in kids.bounds.items():
        new_lo, new_up = fresh[name]
        out[name] = (torch.maximum(lo, new_lo), torch.minimum(up, new_up))
    return out


def _objective(problem, pair):
    C, d, mask = problem.C[pair], problem.d[pair], problem.row_mask[pair]
    return lambda y: margin(spec_rows(C, y), d, mask)         # y [R, n, n_out] -> [R, n]


def attack_boxes(problem, domains: Domains, points: int, confirm, lockstep: bool, restarts: int = 4,
                 steps: int = 10):
    """Short PGD inside the `points` open sub-boxes with the smallest margins (lower bound closest
    to a violation; the solver gives each dp worker its share of `BabOptions.pgd_points`). Returns
    what `confirm` confirmed, or None."""
    n = len(domains)
    if n == 0 and not lockstep:
        return None
    margins = problem.margins(domains.lower, domains.pair)
    pick = torch.topk(margins, min(points, n), largest=False).indices
    lo, hi = (t[pick] for t in problem.box_of(domains))
    pair = domains.pair[pick]
    seed = int(domains.depth.sum()) if n else 0
    best_x, best_v = pgd(problem.forward, lo, hi, _objective(problem, pair), steps=steps, restarts=restarts,
                         seed=seed)
    with torch.no_grad():
        y = problem.forward(best_x)          # every rank, hits or not (a collective under some layouts)
    hits = (best_v <= 0).nonzero().flatten()
    return confirm(best_x[hits], pair[hits], y[hits]) if hits.numel() else None


def pop_crowded(store, k: int):
    """The `k` deepest open sub-boxes (worst margin first among equals), for a queue over half its
    limit: depth first on the smallest boxes, whose children are the likeliest to be proved, so the
    queue stops growing while the search goes on (instead of giving up at the limit)."""
    if len(store) == 0:
        return None, None
    depth = store.domains.depth.to(store.margins.dtype)
    key = depth + 0.5 * torch.sigmoid(-store.margins.nan_to_num(0.0))   # in [depth, depth + 0.5]
    return store.pop_largest(key, k)


def fill_batch(kids: Domains, decision: torch.Tensor, room: int, problem) -> Domains:
    """Children split again along their parent's dimension (2 -> 4 -> 8 ... parts of it) while
    twice their number still fits in `room` (the children a round may bound): a frontier smaller
    than the batch (the first rounds, a nearly finished search, a worker of several with few
    domains) uses the spare room at once instead of one halving per round. Sound like any split:
    the parts cover the parent, and their bounds are recomputed on their own boxes."""
    if len(kids) == 0:
        return kids
    dec = torch.cat([decision, decision])                    # child i comes from parent i % n
    while 2 * len(kids) <= room:
        kids = split(kids, dec, problem.relus, problem.pre_of)
        dec = torch.cat([dec, dec])
    return kids


FIRST_ROUND_CHILDREN = 2048     # before any round is timed


def room_this_round(batch: int, child_seconds: float | None, time_left: float) -> int:
    """Children this round may bound: 2 x batch, but at most `FIRST_ROUND_CHILDREN` while the time
    per child is unknown, and at most what a fifth of the time left covers at the last round's
    rate (a round cannot stop early: a 65536-child first round could overrun the limit)."""
    room = 2 * batch
    if child_seconds is None:
        return min(room, FIRST_ROUND_CHILDREN)
    return max(2, min(room, int(0.2 * time_left / max(child_seconds, 1e-9))))


CLIP_SLACK = 1e-3       # a clipped side moves back out by this share of the box's width (rounding)


def clip_boxes(problem, boxes: Domains, lA_in: torch.Tensor, lower: torch.Tensor) -> tuple:
    """Each open sub-box shrunk to the part where a counterexample can still lie (alpha,beta-CROWN's
    domain clipping). The bound of row k is linear on the box, `L_k(x) = A_k x + b_k <= (C y)_k`,
    with `min over the box = lower_k`; a counterexample needs `(C y)_k <= d_k` on every real row,
    so `L_k(x) <= d_k`, which bounds each `x_i` given the others at their best. `lA_in` [n, K, *S]
    and `lower` [n, K] must come from the same CROWN pass (no optimisation steps). A side that
    would leave the box empty is not moved (the box stays as it was)."""
    lo, hi = (t.flatten(1) for t in boxes.box)                                   # [n, N]
    A = lA_in.flatten(2)                                                         # [n, K, N]
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    bias = lower - (A * centre.unsqueeze(1)).sum(-1) + (A.abs() * radius.unsqueeze(1)).sum(-1)     # [n, K]
    d, rows = problem.d[boxes.pair], problem.row_mask[boxes.pair]
    least = torch.minimum(A * lo.unsqueeze(1), A * hi.unsqueeze(1))              # [n, K, N]
    room = (d - bias).unsqueeze(-1) - (least.sum(-1, keepdim=True) - least)      # A_ki x_i <= room
    cut = room / torch.where(A == 0, torch.ones_like(A), A)
    real = rows.unsqueeze(-1) & torch.isfinite(cut)
    up = torch.where(real & (A > 0), cut, torch.inf).min(1).values
    down = torch.where(real & (A < 0), cut, -torch.inf).max(1).values
    slack = CLIP_SLACK * (hi - lo)
    new_lo, new_hi = torch.maximum(lo, down - slack), torch.minimum(hi, up + slack)
    keep = new_lo <= new_hi
    new_lo, new_hi = torch.where(keep, new_lo, lo), torch.where(keep, new_hi, hi)
    shape = boxes.box[0].shape
    return new_lo.reshape(shape), new_hi.reshape(shape)
