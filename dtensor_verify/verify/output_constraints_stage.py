"""Branch and bound's roots, tightened by each open pair's own output constraints.

`--output-constraints last` (BabOptions.output_constraints): before ReLU / general branch and
bound, each open (region, disjunct) pair's bounds of the last nonlinear layer's inputs are
tightened over U = {x in the box : every row of the disjunct holds} (methods/output_constraints.py).
A pair is proved here when some neuron's bounds cross (U is empty) or a row's bound over the
tightened bounds is positive: alpha-CROWN's, its output slopes optimised afresh for those bounds
(the root's slopes were chosen for the box's looser ones); otherwise branch and bound starts from
the tightened bounds (valid on U, which is all it has to rule out) and the root's slopes (those of
the new bound, from 20 steps at CROWN's start, made it bound more domains on the MILP sweeps:
docs/trust/output_constraints/). Input splitting re-bounds every sub-box from scratch and is left
as it is.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..methods.alpha_crown import AlphaOptions, alpha_crown
from ..methods.crown import CrownOptions
from ..methods.output_constraints import OutputConstraintOptions, last_preactivations, tighten
from ..bab.roots import RootState
from .instance import Instance


@dataclass
class TightenedRoots:
    """What the stage hands to branch and bound: new root states and root lower bounds of the
    pairs it tightened, and the pairs it proved."""
    states: dict = field(default_factory=dict)      # pair -> RootState
    lowers: dict = field(default_factory=dict)      # pair -> [K_p] lower bounds of C y - d over U
    proved: list = field(default_factory=list)
    report: dict = field(default_factory=dict)      # for the result JSON


class _SoftStop:
    """One process: stop tightening (keeping what was found) past a share of the time left.
    Several ranks share collectives and stop only at the clock's agreed `check`."""

    def __init__(self, inst: Instance, fraction: float, ranks: int):
        self.inst = inst
        self.end = time.perf_counter() + fraction * max(0.0, inst.clock.left()) if ranks == 1 else None

    def __call__(self) -> bool:
        self.inst.clock.check()
        return self.end is not None and time.perf_counter() > self.end


def tighten_roots(inst: Instance, open_idx: list[int], opts) -> TightenedRoots:
    """Tighten every open pair's root (see the module doc). `opts`: BabOptions."""
    from ..bab.comm import comm_for

    out = TightenedRoots()
    model = inst.model
    graph = model.graph
    nodes = last_preactivations(graph)
    if not nodes:
        return out
    oc = OutputConstraintOptions(iterations=opts.oc_iterations)
    t0 = time.perf_counter()
    totals = {"neurons": 0, "stabilised": 0, "width_before": 0.0, "width_after": 0.0, "stopped_early": False}
    with model.layout.domain_batches() as layout:
        comm = comm_for(layout)
        stop = _SoftStop(inst, opts.oc_time_fraction, layout.topology.world)
        for p in open_idx:
            state = inst.roots.get(p)
            if state is None or any(n not in state.bounds for n in nodes):
                continue
            if stop():
                totals["stopped_early"] = True
                break
            device = next(iter(state.bounds.values()))[0].device
            mask = inst.pairs.mask[p].to(device)
            C = inst.pairs.C[p].to(device)[mask]
            d = inst.pairs.d[p].to(device)[mask]
            bounds = {graph.input_name: (inst.pair_lo[p:p + 1].to(device), inst.pair_hi[p:p + 1].to(device))}
            bounds.update({k: (lo.unsqueeze(0), up.unsqueeze(0)) for k, (lo, up) in state.bounds.items()})
            empty = False
            for node in nodes:
                t = tighten(graph, bounds, C, d, node, layout, oc, stop)
                bounds[node] = (t.lower, t.upper)
                for key in ("neurons", "stabilised", "width_before", "width_after"):
                    totals[key] += getattr(t, key)
                if t.empty:
                    empty = True
                    break
            lower = None
            if not empty:
                lb = output_bound_over_u(graph, bounds, C, layout, opts.oc_iterations, stop)
                old = torch.tensor(inst.details[p].lower, dtype=lb.dtype, device=device)
                lower = torch.maximum(old, lb - d)
            # Every worker must agree: a pair proved on one and searched on another would unpair them.
            proved = comm.agree_min(int(empty or bool(lower.max() > 0))) == 1
            if proved:
                out.proved.append(p)
                continue
            if empty:       # crossed here but not on every worker: this worker keeps its old root
                continue
            out.states[p] = RootState(bounds={k: (bounds[k][0][0], bounds[k][1][0]) for k in state.bounds},
                                      alphas=state.alphas)
            out.lowers[p] = lower
    totals["seconds"] = round(time.perf_counter() - t0, 3)
    totals["nodes"] = nodes
    totals["proved_pairs"] = len(out.proved)
    out.report = totals
    return out


def output_bound_over_u(graph, bounds: dict, C, layout, iterations: int, stop):
    """Lower bounds [K] of the pair's rows C y over U, from its tightened intermediate bounds
    (`bounds`: node -> (lower, upper) [1, *S], with the input box): alpha-CROWN on the output's
    slopes alone, the intermediate bounds held fixed. Every step's bound holds on U (any slopes are
    sound), so the best one is kept."""
    given = {k: v for k, v in bounds.items() if k != graph.input_name}
    res = alpha_crown(graph, bounds[graph.input_name], C.unsqueeze(0), layout,
                      AlphaOptions(iterations=iterations, optimize_intermediate=False,
                                   crown=CrownOptions(intersect_ibp=False)),    # (no output interval here)
                      want_upper=False,
                      on_step=lambda it, score: stop(), crown_bounds=given)
    return res.lower[0].detach()
