"""alpha-CROWN: CROWN with the ReLU lower slopes optimised by projected gradient ascent.

Every backward sweep (each intermediate layer's and the output's) gets its own slopes, one per
(bound row, ReLU neuron) and per side (lA / uA), as in alpha,beta-CROWN. All sweeps are redone
each iteration, so intermediate bounds tighten too and gradients reach their slopes. Adam,
projection to [0, 1], best bound kept per row and per intermediate neuron, early stop.

Two cheap exits (docs/ALPHA_SPEED.md): with `stop_above` (the thresholds the lower bounds must
exceed, e.g. a spec's `d`) the loop ends as soon as every row is proved, as alpha,beta-CROWN's
stop criterion does; and `AlphaOptions.warmup` first runs up to that many steps on the output
sweep's slopes alone, the intermediate bounds held at CROWN's (one sweep per step instead of
one per intermediate node: a ViT has 16 of those), before the joint optimisation starts from
where the warm-up left the output slopes.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from .. import deadline
from ..layout import DEFAULT_LAYOUT, Layout
from ..memory import tag
from ..ops.softmax_sum import best_of_shifts, search_gates, searchable, split_gates
from .alpha_budget import crown_max_rows, plan_starts
from .optimize import ParamGroup, maximise
from .crown import (CrownOptions, _feeds_general_op, default_spec, intermediate_bounds, node_bound_rows,
                    output_bound, rows_to_bound, scatter_rows, tighter_than_ibp)


@dataclass
class AlphaOptions:
    iterations: int = 20
    lr: float = 0.1
    # Stop when the summed bound improved by less than `tol` (relative) over `patience` iterations.
    patience: int = 5
    tol: float = 1e-4
    optimize_intermediate: bool = True
    # Steps on the output sweep's slopes alone (intermediate bounds fixed) before the joint
    # optimisation; 0: none. Only with optimize_intermediate (else every step is such a step).
    warmup: int = 0
    crown: CrownOptions = field(default_factory=CrownOptions)
    # Intermediate start nodes whose slopes are optimised (None: every one that gets a CROWN
    # sweep); the others keep their best bounds fixed. Set from the memory budget
    # (methods/alpha_budget.py) when the device is shared.
    intermediate_starts: tuple | None = None
    # Intermediate start nodes whose rows share one slope set (alpha,beta-CROWN's share_alphas):
    # None: those that the budget cannot give per-row slopes (alpha_budget.plan_starts; one
    # process), True: every one, False: none (a node that does not fit is left out instead).
    share_alphas: bool | None = None
    # Stop optimising once a call has run this long (seconds; None: no cap). The best bounds so
    # far are kept (every step's bounds are sound). The verdict pipeline sets it when branch and
    # bound follows (BabOptions.alpha_time_fraction of the limit), as alpha,beta-CROWN's
    # `solver.alpha-crown.max_time` does for its vit configuration.
    max_seconds: float | None = None


def verdict_options() -> AlphaOptions:
    """The verdict pipeline's alpha-CROWN (verify/bounds.py): up to 20 steps on the output's
    slopes alone, then up to 100 joint ones; each phase stops once every row is proved (the
    pipeline passes `stop_above`) or the bound stalls."""
    return AlphaOptions(iterations=100, warmup=20)


@dataclass
class AlphaResult:
    """What alpha-CROWN hands on: the bounds, CROWN's (its starting point), and the state that
    branch and bound starts from (intermediate bounds, slopes)."""
    lower: torch.Tensor | None                   # [B, K] best lower bounds of C f(x) (gathered rows)
    upper: torch.Tensor | None                   # [B, K]
    crown_lower: torch.Tensor | None             # CROWN's bounds before any step
    crown_upper: torch.Tensor | None
    iterations: int                              # optimisation steps run
    intermediate: dict                           # pre-activation node -> (lower, upper) [B, *S], best seen
    alphas: dict                                 # start node -> relu node -> slopes [2, B, K_local, *S]
    output_name: str                             # the start node of the output's sweep

    @property
    def output_alphas(self) -> dict:
        """relu node -> [2, B, K_local, *S] slopes (lower, upper side) of the output's sweep,
        detached (K_local: this rank's rows); {} without a ReLU."""
        return {r: a.detach() for r, a in self.alphas.get(self.output_name, {}).items()}


def _relu_nodes(graph):
    """Nodes whose op has relaxation parameters (ReLU slopes, tangent points of other activations)."""
    return [n for n in graph.nodes if n.op is not None and getattr(n.op, "has_alpha", False)]


def init_alphas(graph, bounds, starts: dict[str, int], layout: Layout, shared=()):
    """Slopes initialised to CROWN's adaptive choice, for each start node and upstream ReLU; the
    start nodes in `shared` get one set for all their rows ([.., 1, *S]: it broadcasts over them)."""
    alphas = {}
    relus = _relu_nodes(graph)
    for start, n_rows in starts.items():
        k = 1 if start in shared else len(range(n_rows)[layout.rows(start, n_rows).mine])
        ancestors = graph.ancestors(start)
        per_start = {}
        for relu in relus:
            if relu.name not in ancestors or relu.inputs[0] == start:
                continue
            if any(i == start for i in relu.inputs):
                continue
            if hasattr(relu.op, "init_alpha_inputs"):                  # ops of several inputs
                init = relu.op.init_alpha_inputs([bounds[i] for i in relu.inputs])
            else:
                init = relu.op.init_alpha(*bounds[relu.inputs[0]])    # [P, B, *S]
            a = init.unsqueeze(2).expand(-1, -1, k, *([-1] * (init.dim() - 2)))
            per_start[relu.name] = layout.alpha_param(a, relu, start).clone().requires_grad_(True)
        alphas[start] = per_start
    return alphas


class _Run:
    """One alpha-CROWN call's fixed inputs and its best bounds so far (kept across phases)."""

    def __init__(self, graph, box, C, layout, opts, want_lower, want_upper, stop_above):
        self.graph, self.box, self.C, self.layout, self.opts = graph, box, C, layout, opts
        self.shared: tuple = ()          # start nodes whose rows share one slope set
        self.want_lower, self.want_upper = want_lower, want_upper
        self.batch = box[0].shape[0]
        self.best: dict = {}
        self.stop_at: float | None = None    # perf_counter (opts.max_seconds after the call began)
        self.stop_above = None
        if stop_above is not None and want_lower:
            # This rank's rows: each rank stops on its own rows, and maximise asks all ranks.
            self.stop_above = stop_above[:, layout.rows(graph.output_name, C.shape[1]).mine]

    def out_of_share(self) -> bool:
        """Past `stop_at` on every rank (a collective under several ranks: call on all)."""
        return self.stop_at is not None and self.layout.all_true(time.perf_counter() >= self.stop_at)

    def proved(self) -> bool:
        """Every row of this rank proved (False without `stop_above`)."""
        return self.stop_above is not None and bool((self.best["lo"] > self.stop_above).all())

    def all_proved(self) -> bool:
        """Every row of every rank proved: a collective when `stop_above` is given (on every rank)."""
        return self.stop_above is not None and self.layout.all_true(self.proved())

    def evaluate(self, alphas, rows):
        """Loss and state of one step: the sweeps of `rows`' nodes with their slopes, then the output's."""
        graph, layout, opts, best = self.graph, self.layout, self.opts, self.best
        cur = {graph.input_name: self.box}
        # The step's backward pass checks the deadline where it reaches each sweep's bounds.
        hook = deadline.fine_hook(deadline.current())
        for name in graph.preactivation_nodes():
            if name not in alphas or name not in rows:
                cur[name] = best["bounds"][name]
                continue
            deadline.check()
            start_alphas = alphas[name]

            def slice_alphas(s, e, start_alphas=start_alphas, shared=name in self.shared):
                return dict(start_alphas) if shared else {r: a[:, :, s:e] for r, a in start_alphas.items()}

            lo, up = node_bound_rows(graph, name, rows[name], cur, layout, opts.crown, self.batch, slice_alphas)
            _watch(hook, lo, up)
            ref_lo, ref_up = best["bounds"][name]
            cur[name] = scatter_rows(ref_lo, ref_up, rows[name], lo, up, intersect=True)
        lo, up = output_bound(graph, cur, self.C, layout, alphas[graph.output_name], self.want_lower,
                              self.want_upper, gather=False)
        _watch(hook, lo, up)
        loss = 0.0
        if lo is not None:
            loss = loss - lo.sum()
        if up is not None:
            loss = loss + up.sum()
        return loss, (cur, lo, up)

    def keep_best(self, state, rows):
        cur, lo, up = state
        best = self.best
        if lo is not None:
            best["lo"] = torch.maximum(best["lo"], lo.detach())
        if up is not None:
            best["up"] = torch.minimum(best["up"], up.detach())
        for name in rows:
            if name in cur:
                l_new, u_new = cur[name]
                l_old, u_old = best["bounds"][name]
                best["bounds"][name] = (torch.maximum(l_old, l_new.detach()), torch.minimum(u_old, u_new.detach()))
        score = 0.0
        if best["lo"] is not None:
            score += float(best["lo"].sum())
        if best["up"] is not None:
            score -= float(best["up"].sum())
        return score, self.proved()

    def optimise(self, alphas, rows, iterations, on_step, first=0):
        """Adam on the slopes of `alphas` (the output's and those of `rows`' nodes) for at most
        `iterations` steps; returns the steps run."""
        named = [(r, a) for start, per_start in alphas.items() if start == self.graph.output_name or start in rows
                 for r, a in per_start.items()]
        gates, params, gate_lr, rule = split_gates(self.graph, named, self.opts.lr)   # (softmax_sum.py)
        groups = [ParamGroup(params, self.opts.lr, 0.0, 1.0), ParamGroup(gates, gate_lr, 0.0, 1.0, rule)]
        step = _until_deadline(on_step, first, self.stop_at)
        return maximise(groups, lambda it: self.evaluate(alphas, rows),
                        lambda state: self.keep_best(state, rows), iterations, self.layout, self.opts.patience,
                        self.opts.tol, step)


def _watch(hook, *tensors):
    """`hook` (a deadline check, or None) on the tensors of a step that need a gradient."""
    if hook is None:
        return
    for t in tensors:
        if t is not None and t.requires_grad:
            t.register_hook(hook)


def _until_deadline(on_step, first: int, stop_at: float | None = None):
    """`maximise`'s per-step callback: the caller's `on_step` (numbered from `first`), and a stop
    when the time limit is nearer than twice the step just taken (the next would likely end past
    it: steps vary; the best bounds so far are kept, all sound), or once `stop_at` (perf_counter,
    `AlphaOptions.max_seconds`) is passed. `maximise` stops only when every rank asks."""
    last = [time.perf_counter()]

    def step(it, score):
        now = time.perf_counter()
        took, last[0] = now - last[0], now
        stop = bool(on_step(first + it, score)) if on_step is not None else False
        return deadline.ends_within(2.0 * took) or stop or (stop_at is not None and now >= stop_at)
    return step


def _given_rows(graph, bounds, opts) -> dict:
    """The rows to optimise of each intermediate node whose CROWN bounds are given: those still
    unstable under them (a ReLU input's stable neuron is exact whatever its bounds), every row of
    a node feeding another nonlinear op."""
    return {name: rows_to_bound(*bounds[name], opts, all_rows=_feeds_general_op(graph, name))
            for name in graph.preactivation_nodes() if not graph.affine_from_input(name)}


def _crown_start(run: _Run, given: dict | None = None):
    """CROWN's intermediate bounds (computed, or `given`: CROWN's bounds of the same boxes from an
    earlier stage), their swept rows, and its output bounds (alpha's start)."""
    graph, layout, opts, C = run.graph, run.layout, run.opts, run.C
    crown_opts = opts.crown
    if crown_opts.max_rows is None and layout.world_size == 1:
        # Rows per sweep chunk from this process's part of the device (alpha_budget; None: no limit).
        crown_opts = dataclasses.replace(crown_opts, max_rows=crown_max_rows(graph, run.batch, run.box[0].device))
    with torch.no_grad():
        if given is not None:
            bounds = {graph.input_name: run.box, **given}
            rows = _given_rows(graph, bounds, crown_opts)
        else:
            bounds, rows = intermediate_bounds(graph, run.box, layout, crown_opts)
        lo, up = best_of_shifts(graph, graph.output_name, lambda: output_bound(
            graph, bounds, C, layout, want_lower=run.want_lower, want_upper=run.want_upper, gather=False))
        if opts.crown.intersect_ibp:
            # CROWN's start (and so alpha's result) is never looser than IBP's, like `crown`.
            mine = C[:, layout.rows(graph.output_name, C.shape[1]).mine]
            lo, up = tighter_than_ibp(graph, bounds, mine, lo, up)
    return bounds, rows, lo, up


def _joint_rows(run: _Run, rows: dict) -> tuple[dict, tuple]:
    """The intermediate start nodes optimised with the output, and those of them whose rows share
    one slope set: `intermediate_starts` when given, else (one process) those the budget allows
    (alpha_budget.plan_starts: per-row slopes where they fit, shared ones where only those fit;
    the others keep CROWN's bounds), else all."""
    names, share, shared = run.opts.intermediate_starts, run.opts.share_alphas, ()
    if names is None and run.layout.world_size == 1 and rows:
        plan = plan_starts(run.graph, rows, run.C.shape[1], run.batch, run.box[0].device,
                           run.box[0].element_size(), share=share)
        # Ranks that split the rows between them (verify/bounds_dp.py) must sweep the same start
        # nodes: those every rank keeps (one agreement per node; none on one process).
        names = tuple(n for n in rows if run.layout.all_true(n in plan.names))
        shared = tuple(n for n in names if run.layout.all_true(n in plan.shared))
    elif share and run.layout.world_size == 1:
        shared = tuple(rows if names is None else names)
    joint = rows if names is None else {n: r for n, r in rows.items() if n in names}
    return joint, tuple(n for n in shared if n in joint)


def alpha_crown(graph, box, C=None, layout: Layout = DEFAULT_LAYOUT, opts: AlphaOptions | None = None,
                want_lower=True, want_upper=True, on_step=None, stop_above=None, crown_bounds=None) -> AlphaResult:
    """Optimised bounds of C f(x) over the box (see `AlphaResult`). `stop_above` ([B, K], optional):
    stop once every row's lower bound exceeds it (rows that need no proof: -inf). `crown_bounds`
    (optional): CROWN's bounds of these boxes with `opts.crown` (node -> (lower, upper) [B, *S], every
    pre-activation node and the output), e.g. from the verdict pipeline's CROWN stage: the start
    uses them instead of computing them again."""
    opts = opts or AlphaOptions()
    if C is None:
        C = default_spec(graph, box[0].shape[0], box[0].dtype, box[0].device)
    run = _Run(graph, box, C, layout, opts, want_lower, want_upper, stop_above)
    t0 = time.perf_counter()
    run.stop_at = None if opts.max_seconds is None else t0 + opts.max_seconds
    bounds, rows, crown_lo, crown_up = _crown_start(run, crown_bounds)
    crown_seconds = time.perf_counter() - t0
    run.best = {"lo": crown_lo, "up": crown_up, "bounds": {k: (v[0].detach(), v[1].detach()) for k, v in bounds.items()}}
    joint, run.shared = _joint_rows(run, rows) if opts.optimize_intermediate else ({}, ())
    with tag("alphas"):
        alphas = init_alphas(graph, bounds, {graph.output_name: C.shape[1]}, layout)
    steps = 0
    if opts.warmup > 0 and joint and not run.all_proved():
        steps = run.optimise(alphas, {}, min(opts.warmup, opts.iterations), on_step)
    # A joint step redoes the start's sweeps with autograd, then their backward pass: about twice
    # the start's time. Not begun when the limit is nearer (fine checks stop it anyway).
    if not run.all_proved() and not (joint and deadline.ends_within(2.0 * crown_seconds)) \
            and not run.out_of_share():
        with tag("alphas"):
            alphas.update(init_alphas(graph, bounds, {name: len(r) for name, r in joint.items()}, layout, run.shared))
        steps += run.optimise(alphas, joint, opts.iterations, on_step, first=steps)
    best = run.best
    # the shift's line search (ops/softmax_sum.py), after one more clock check (on_step may raise)
    out_alphas = alphas[graph.output_name]
    if searchable(graph, out_alphas) and not run.all_proved() and not (on_step is not None and on_step(steps, None)):
        best["lo"], best["up"] = search_gates(graph, out_alphas, lambda: output_bound(
            graph, best["bounds"], C, layout, out_alphas, want_lower, want_upper, gather=False), best["lo"], best["up"])
    split = layout.rows(graph.output_name, C.shape[1])
    gather = (lambda t: None if t is None else split.gather(t))
    return AlphaResult(gather(best["lo"]), gather(best["up"]), gather(crown_lo), gather(crown_up), steps,
                       best["bounds"], alphas, graph.output_name)
