"""The branch-and-bound stage: beta-CROWN on the pairs the bounds left open.

Branch and bound gets two functions that look at candidate points and *return* what the
original model confirmed (a `Counterexample`, or None); the solver carries it out in its
`BabResult` and this stage records it. Nothing inside `bab/` changes the instance record.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from .. import deadline
from ..errors import TimeLimitReached
from ..margin import output_margin
from .attacks import attack_round
from .instance import Instance, NoClock
from .result import AttackOptions, Counterexample


class _ConfirmPoints:
    """BaB's candidate vertices (x, pair, y): their margins, then the original model."""

    def __init__(self, inst: Instance):
        self.inst = inst

    def __call__(self, x, pair, y) -> Counterexample | None:
        pairs = self.inst.pairs
        margins = output_margin(y.unsqueeze(0), pairs.C[pair], pairs.d[pair], pairs.mask[pair])[0]
        return self.inst.confirm.first(x.detach().cpu(), margins.cpu(), pair.tolist(), pairs.index)


class _ShortPgd:
    """A short PGD from branch and bound's most promising points. Every open pair gets the same
    number of starts (its seeds, padded with its box centre) on every rank, so the forward passes
    line up where they are collectives; no clock check inside (BaB's sync handles time for all
    workers)."""

    def __init__(self, inst: Instance, open_now: list[int], points: int):
        self.inst, self.open_now, self.points, self.rounds = inst, open_now, points, 0

    def __call__(self, x, pair) -> Counterexample | None:
        inst, k = self.inst, self.points
        lo, hi = inst.pair_lo, inst.pair_hi
        starts = {}
        for p in self.open_now:
            own = x[pair == p][:k].to(lo.device)
            centre = ((lo[p] + hi[p]) / 2).unsqueeze(0)
            starts[p] = torch.cat([own, centre.expand(k - own.shape[0], *centre.shape[1:])])
        self.rounds += 1
        x_best, margins = attack_round(inst.model, inst.pairs, self.open_now, lo, hi, NoClock(),
                                       AttackOptions(steps=20), restarts=1, seed=1000 + self.rounds, starts=starts)
        return inst.confirm.first(x_best.detach().cpu(), margins.detach().cpu(), self.open_now, inst.pairs.index)


def _skip_reason(inst: Instance, open_idx, opts) -> str | None:
    if any(p not in inst.roots or inst.pairs.n_real_rows[p] == 0 for p in open_idx):
        return "a disjunct has no bound to start from"
    nonlinear = [n for n in inst.model.graph.nodes if n.op is not None and n.op.needs_input_bounds]
    if opts.split == "relu" and not nonlinear:        # input splitting needs no ReLU
        return "no ReLU to split: the bounds are already those of a linear network"
    return None


@dataclasses.dataclass(frozen=True)
class _Split:
    """What kind of split this search makes (`bab.input_bab.mode_of`: 'relu' | 'input' | ...) and
    whether the network has general (non-ReLU) nonlinear ops; decided once per search."""
    mode: str
    general: bool


def _split_of(inst: Instance, opts) -> _Split:
    from ..bab import BabProblem
    from ..bab.input_bab import mode_of

    model, pairs = inst.model, inst.pairs
    with model.layout.domain_batches() as layout:
        probe = BabProblem(model.graph, layout, model.forward, pairs.C, pairs.d, pairs.mask, inst.pair_lo, inst.pair_hi)
        return _Split(mode_of(probe, opts), bool(probe.general_ops))


def _solve(inst: Instance, open_idx, opts, split: _Split, tightened=None):
    """Build the problem and the roots, run the solver; returns (BabResult, shared counterexample).
    `tightened`: roots tightened by the output constraints (TightenedRoots), used where given."""
    from ..bab import BabProblem, BabSolver, make_roots
    from ..bab.comm import comm_for
    from ..bab.focus_rows import focus

    model, pairs = inst.model, inst.pairs
    param = next(iter(model.module.parameters()), None)          # where the weights live (DTensors too)
    device = param.device if param is not None else model.layout.device
    with model.layout.domain_batches() as layout:      # rows of a bound stay on one rank
        problem = BabProblem(model.graph, layout, model.forward, pairs.C.to(device), pairs.d.to(device),
                             pairs.mask.to(device), inst.pair_lo.to(device), inst.pair_hi.to(device))
        if layout.world_size > 1 and opts.root_iterations == 0:
            opts = dataclasses.replace(opts, root_iterations=opts.beta.iterations)   # split rows: no slopes
        lowers = [torch.tensor(inst.details[p].lower, dtype=pairs.d.dtype, device=device) for p in open_idx]
        states = [inst.roots[p] for p in open_idx]
        if tightened is not None:
            lowers = [tightened.lowers[p].to(device) if p in tightened.lowers else lo for p, lo in zip(open_idx, lowers)]
            states = [tightened.states.get(p, s) for p, s in zip(open_idx, states)]
        focused = None
        if split.mode != "input":         # (input splitting keeps every row: focus_rows.py)
            focused = focus(problem.C, problem.d, problem.row_mask, open_idx, lowers, states, opts.focus_rows,
                            set(problem.relus), set(problem.general_ops))
        if focused is not None:
            problem = dataclasses.replace(problem, C=focused.C, d=focused.d, row_mask=focused.mask)
            lowers, states = focused.lowers, focused.roots
            inst.say(f"bab: bounding {focused.kept} of the open disjuncts' {focused.rows} rows "
                     f"(the others' root bounds are below {opts.focus_rows:g} x their best row's)")
        roots = make_roots(problem, open_idx, states, lowers)
        comm = comm_for(layout)
        solver = BabSolver(problem, opts, inst.clock.left, _ConfirmPoints(inst), log=inst.say, comm=comm,
                           pgd=_ShortPgd(inst, open_idx, opts.pgd_points))
        outcome = _solve_on_time(solver, roots, inst, layout)
        if focused is not None:
            outcome.stats.rows = (focused.kept, focused.rows)
        shared = comm.share_counterexample(outcome.counterexample) if outcome.status == "sat" else None
    if outcome.status == "sat" and not isinstance(shared, Counterexample):
        raise RuntimeError("branch and bound reported sat without a confirmed counterexample")
    return outcome, shared


def _solve_on_time(solver, roots, inst: Instance, layout):
    """`solver.solve(roots)`; in one process its bound computations also check the clock inside
    (dtensor_verify/deadline.py): a round's sweeps (general splits redo whole layers, and their
    trial splits too) may outlast the time left that the solver measured (pgd_2_3_16_94 on a CPU:
    5.8 s past a 45 s limit without, 1.0 s past 55 s with). Several workers stop together at their
    sync instead."""
    if layout.topology.world > 1:
        return solver.solve(roots)
    with deadline.checking(inst.clock.check, inst.clock.left, layout):
        try:
            return solver.solve(roots)
        except TimeLimitReached:
            # The clock stopped a round from inside: the search's counts so far (domains bounded,
            # the worst open margin of the last sync), not nothing (TinyYOLO on this CPU: a row
            # "timeout (in bab)" with no branch-and-bound columns).
            return solver.stopped_inside_round()


def _output_constraints(inst: Instance, open_idx, opts, split: _Split):
    """`--output-constraints`: the open pairs' roots tightened over their unsafe sets (pairs proved
    there are marked so); None when it does not run (`_wanted`)."""
    from .output_constraints_stage import tighten_roots

    if not _wanted(inst, open_idx, opts, split):
        return None
    t = time.perf_counter()
    tightened = tighten_roots(inst, open_idx, opts)
    inst.add_phase("output_constraints", time.perf_counter() - t)
    inst.result.bounds["output_constraints"] = tightened.report
    r = tightened.report
    if r.get("neurons"):
        inst.say(f"output constraints: {r['neurons']} neurons of {', '.join(r['nodes'])}, {r['stabilised']} made stable, "
                 f"width {r['width_before']:.4g} -> {r['width_after']:.4g}, {len(tightened.proved)} of {len(open_idx)} "
                 f"pairs proved ({r['seconds']:.2f} s)")
    for p in tightened.proved:
        inst.details[p].status, inst.details[p].proved_by = "proved", "output constraints"
    return tightened


def _wanted(inst: Instance, open_idx, opts, split: _Split) -> bool:
    """'last': before ReLU / general splitting (input splitting bounds every sub-box afresh).
    'auto' (the default): also only where the network's nonlinear ops are all ReLUs and some open
    disjunct is a conjunction of several rows (TinyYOLO's 5: the unsafe set is their intersection,
    which says more than one half-space); measured there (docs/BENCHMARKS.md, session 12)."""
    if opts.output_constraints == "off" or split.mode == "input":
        return False
    if opts.output_constraints == "last":
        return True
    return not split.general and any(inst.pairs.n_real_rows[p] >= 2 for p in open_idx)


def branch_and_bound(inst: Instance, bab_options, progress: bool) -> str:
    """Run branch and bound on the open pairs; returns 'proved', 'sat', 'timeout' or 'unknown'
    (a counterexample is recorded in the instance), or 'proved-output-constraints' where the
    output-constraint step alone proved every open pair (no search ran)."""
    from ..bab import BabOptions

    open_idx = inst.open_pairs()
    opts = bab_options or BabOptions()
    why = _skip_reason(inst, open_idx, opts)
    if why:
        inst.say(f"bab: skipped ({why})")
        inst.result.bounds["bab"] = {"reason": f"skipped: {why}"}
        return "unknown"
    if progress and inst.model.layout.rank == 0:
        opts = dataclasses.replace(opts, progress=True)
    t = time.perf_counter()
    split = _split_of(inst, opts)
    tightened = _output_constraints(inst, open_idx, opts, split)
    if tightened is not None:
        open_idx = [p for p in open_idx if p not in tightened.proved]
        if not open_idx:
            inst.result.bounds["bab"] = {"reason": "not run: the output constraints proved every open pair"}
            return "proved-output-constraints"
    outcome, found = _solve(inst, open_idx, opts, split, tightened)
    if found is not None:
        inst.accept(found)
    stats = outcome.stats.as_dict()
    inst.result.bounds["bab"] = stats
    inst.result.phases["bab"] = time.perf_counter() - t
    inst.say(f"bab: {outcome.status}: {stats['domains_visited']} domains bounded, {stats['domains_proved']} proved, "
             f"{stats['open_domains']} open, depth {stats['max_depth']}, batch {stats['batch_size']} "
             f"({stats['seconds']:.2f} s)")
    if outcome.status == "proved":
        for p in open_idx:
            inst.details[p].status, inst.details[p].proved_by = "proved", "bab"
    return outcome.status
