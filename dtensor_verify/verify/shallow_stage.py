"""The one-hidden-layer stage: before beta-CROWN's branch and bound, a network of the form
affine -> ReLU -> affine (safenlp) is decided by `bab/mip_planes.py` on each open pair.

It runs in one process only (a torchrun run goes to branch and bound), when the split kind is
not forced to input splitting, and on pairs of one output row each; otherwise, or when it ends
undecided (not at the time limit), branch and bound takes over. `unsat` needs every open pair
proved; `sat` needs a counterexample that the original model confirmed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import TimeLimitReached
from .instance import Instance
from .result import Decision

DECIDED_BY = "shallow-bab"
RESERVE_S = 0.05            # seconds kept back from the clock for writing the result


def _why_not(inst: Instance, options) -> str | None:
    if inst.model.layout.topology.world > 1 or inst.model.layout.world_size > 1:
        return "several processes"
    if options is not None and getattr(options, "split", "auto") == "input":
        return "input splitting was asked for"
    rows = [inst.pairs.n_real_rows[p] for p in inst.open_pairs()]
    if any(k != 1 for k in rows):
        return "a disjunct with more than one output row"
    return None


def _exact_pair(inst: Instance, p: int, n_out: int):
    """The pair's row (c [n_out], d) and box as the property wrote them (float64), not the
    float32 copies the bounds use: a proof is about the property's own numbers."""
    r, j = inst.pairs.index[p]
    region = inst.prop.regions[r]
    dj = region.disjuncts[j]
    C = torch.from_numpy(np.asarray(dj.C, dtype=np.float64).reshape(-1, n_out)[0].copy())
    d = float(np.asarray(dj.d, dtype=np.float64).reshape(-1)[0])
    lo = torch.from_numpy(np.asarray(region.lower, dtype=np.float64).reshape(-1).copy())
    hi = torch.from_numpy(np.asarray(region.upper, dtype=np.float64).reshape(-1).copy())
    return C, d, lo, hi


class _Confirm:
    """Candidate points of one pair through the original model."""

    def __init__(self, inst: Instance, pair: int, row):
        self.inst, self.pair, self.row = inst, pair, row

    def __call__(self, x: torch.Tensor):
        values = self.row.value(x)
        order = values.argsort()[:8]                    # the best few per round
        shape = self.inst.pair_lo.shape[1:]
        xs = x[order].reshape(len(order), *shape).float()
        return self.inst.confirm.first(xs, values[order].float(), [self.pair] * len(order), self.inst.pairs.index)


@dataclass
class ShallowSearch:
    """See the module docstring. `options`: the run's BabOptions (its split kind)."""
    options: object = None
    name: str = "shallow-bab"

    def run(self, inst: Instance) -> Decision | None:
        open_idx = inst.open_pairs()
        if not open_idx or _why_not(inst, self.options):
            return None
        from ..bab.mip_shallow import shallow_net

        inst.clock.check()
        t = time.perf_counter()
        net = shallow_net(inst.model.graph, tuple(inst.pair_lo.shape[1:]), inst.pair_lo[open_idx[0]],
                          inst.pair_hi[open_idx[0]])
        if isinstance(net, str):
            inst.result.bounds["shallow_bab"] = {"skipped": net}
            return None
        entry = {"pairs": len(open_idx), "proved": 0, "domains": 0, "rounds": 0, "max_depth": 0}
        inst.result.bounds["shallow_bab"] = entry
        try:
            return self._search(inst, net, open_idx, entry)
        finally:
            entry["seconds"] = time.perf_counter() - t
            inst.add_phase("shallow_bab", entry["seconds"])

    def _search(self, inst: Instance, net, open_idx, entry) -> Decision | None:
        from ..bab.mip_planes import search_row
        from ..bab.mip_shallow import rows_of

        for p in open_idx:
            row = rows_of(net, *_exact_pair(inst, p, net.W2.shape[0]))
            deadline = time.perf_counter() + inst.clock.left() - RESERVE_S
            out = search_row(row, deadline, _Confirm(inst, p, row))
            for k in ("domains", "rounds"):
                entry[k] += getattr(out, k)
            entry["max_depth"] = max(entry["max_depth"], out.max_depth)
            inst.say(f"shallow-bab: pair {p}: {out.status}, {out.domains} domains, depth {out.max_depth}, "
                     f"smallest value seen {out.best_value:.4g}" + (f" ({out.reason})" if out.reason else ""))
            if out.status == "sat":
                inst.accept(out.candidates[0])
                return Decision("sat", DECIDED_BY)
            if out.status == "timeout":
                entry["reason"] = out.reason
                raise TimeLimitReached()
            if out.status != "proved":
                entry["reason"] = out.reason
                return None
            inst.details[p].status, inst.details[p].proved_by = "proved", DECIDED_BY
            entry["proved"] += 1
        return Decision("unsat", DECIDED_BY)
