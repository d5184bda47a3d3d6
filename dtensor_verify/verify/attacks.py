"""The pipeline's attacks: PGD rounds on the open pairs and checks of bound-guided vertices.
Each returns the confirmed counterexample it found (or None) and records the margins it reached."""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

import torch

from ..attack import pgd
from ..margin import output_margin
from ..errors import TimeLimitReached, VerifierError
from .instance import Instance
from .result import AttackOptions, Counterexample


def _start_points(lo, hi, idx, starts, n0: int) -> torch.Tensor:
    """[n0, len(idx), *S]: each pair's given starts, padded with its box centre."""
    init = ((lo[idx] + hi[idx]) / 2).unsqueeze(0).repeat(n0, *([1] * lo[idx].dim()))
    for j, p in enumerate(idx):
        if p in starts:
            init[:starts[p].shape[0], j] = starts[p]
    return init


def attack_round(model, pairs, open_idx, lo, hi, clock, opts: AttackOptions, restarts: int, seed: int,
                 starts=None):
    """PGD on the pairs `open_idx` (starts: {pair: [n, *S]}); returns (x_best [p, *S], margin_best [p])."""

    def fn(x):
        clock.check()
        return model.forward(x)

    n0 = max((starts[p].shape[0] for p in open_idx if p in starts), default=0) if starts else 0
    chunk = max(1, opts.max_samples // max(restarts + n0, 1))
    xs, vals = [], []
    with model.layout.network_function():      # a placed model may gather its weights once here
        for s in range(0, len(open_idx), chunk):
            idx = open_idx[s:s + chunk]
            C, d, mask = pairs.C[idx], pairs.d[idx], pairs.mask[idx]
            init = _start_points(lo, hi, idx, starts, n0) if n0 else None
            x_best, v_best = pgd(fn, lo[idx], hi[idx], lambda out, C=C, d=d, mask=mask: output_margin(out, C, d, mask),
                                 steps=opts.steps, restarts=restarts, seed=seed, starts=init)
            xs.append(x_best.detach())
            vals.append(v_best.detach().reshape(-1))
    return torch.cat(xs), torch.cat(vals)


def confirm_candidates(inst: Instance, x_best, margins, idx) -> Counterexample | None:
    """Record the candidates' margins; the first confirmed counterexample among them (or None)."""
    margins = margins.detach().cpu().tolist()          # one transfer, not one per candidate
    inst.note_margins(idx, margins)
    return inst.confirm.first(x_best, margins, idx, inst.pairs.index)


def _dp_share(inst: Instance, restarts: int, seed: int) -> tuple[int, int, object]:
    """This dp group's part of an attack round spread over the `dp` mesh dim: its share of the
    restarts (rounded up) from seeds of its own, and the topology (None: one dp group). The
    ranks of a shard group share their dp index, so their forward passes stay in step."""
    topo = getattr(inst.model.layout, "topology", None)
    if topo is None or topo.dp <= 1:
        return restarts, seed, None
    return max(1, -(-restarts // topo.dp)), seed + 7919 * topo.dp_rank, topo


def _dp_starts(starts, topo):
    """This dp group's share of the given starts of each pair (round-robin; every group ran all
    of them before: docs/bab_scaling/relu2x1/README.md); all of them with one group."""
    if topo is None or not starts:
        return starts
    return {p: v[topo.dp_rank::topo.dp] for p, v in starts.items()}


def _first_found(topo, run):
    """`run()` -> (found, margins) on this rank; then every rank's confirmed counterexample is
    gathered and the first one returned on every rank (so every rank decides alike). A rank whose
    round ran out of time or failed still joins the gather (none is left waiting in it): with no
    counterexample anywhere, every rank then raises TimeLimitReached, or a VerifierError naming
    the failed rank (the failing rank re-raises its own error): `timeout` / `error`, never a verdict."""
    import torch.distributed as dist

    out, failure, mark = None, None, None
    try:
        out = run()
    except TimeLimitReached:
        mark = "timed out"
    except Exception as exc:  # carried through the gather, re-raised after it
        failure, mark = exc, "failed"
    gathered = [None] * topo.world
    dist.all_gather_object(gathered, (out[0] if out else None, mark), group=topo.group)
    found = next((f for f, _ in gathered if f is not None), None)
    if found is not None:
        return found, (out[1] if out else None)
    if failure is not None:
        raise failure
    marks = [m for _, m in gathered]
    if "failed" in marks:
        raise VerifierError(f"attack round failed on rank {marks.index('failed')}")
    if "timed out" in marks:
        raise TimeLimitReached()
    return None, out[1]


def attack_open(inst: Instance, restarts: int, seed: int, phase: str, starts=None,
                spread: bool = False) -> Counterexample | None:
    """One PGD round on the open pairs (timed as `phase`). `spread`: the restarts are shared out
    over the `dp` groups, which then agree on what was found (every rank must take the round)."""
    open_idx = inst.open_pairs()
    if not open_idx:
        return None
    t = time.perf_counter()
    restarts, seed, topo = _dp_share(inst, restarts, seed) if spread else (restarts, seed, None)
    starts = _dp_starts(starts, topo)

    def run():
        x_best, margins = attack_round(inst.model, inst.pairs, open_idx, inst.pair_lo, inst.pair_hi, inst.clock,
                                       inst.attack, restarts, seed, starts)
        return confirm_candidates(inst, x_best, margins, open_idx), margins

    found, margins = run() if topo is None else _first_found(topo, run)
    if margins is None:                 # another rank found one while this one could not finish
        return found
    inst.add_phase(phase, time.perf_counter() - t)
    n0 = max((v.shape[0] for v in (starts or {}).values()), default=0)
    inst.say(f"{phase}: {restarts} restarts" + (f" + {n0} guided start(s)" if n0 else "")
             + f" x {inst.attack.steps} steps, best margin {float(margins.min()):.4g} ({time.perf_counter() - t:.2f} s)")
    return found


class _Stopped(Exception):
    """The bound that a side round runs beside is done (`helper_round`)."""


class _StopClock:
    """A rank's own clock (no collective) that also stops the round once `stopped()` says so."""

    def __init__(self, clock, stopped):
        self.clock, self.stopped = clock, stopped

    def check(self):
        self.clock.check()
        if self.stopped():
            raise _Stopped()


def helper_round(inst: Instance, seed: int):
    """The attack-extra round (`stages.AttackBeforeBab`'s: the pipeline's restarts, the guided
    starts so far) as the side job of the dp ranks that wait while rank 0 bounds one box alone
    (`bounds_dp.whole_then_agree`): ranks 1 .. dp-1 share it out (restarts rounded up, guided starts
    round-robin, seeds of their own), each on its own clock (no collective inside). A callable of
    `stopped` returning (the confirmed counterexample or None, seconds), or None when `stopped()`
    turned True before the round ended (then the round is left to `AttackBeforeBab`)."""
    from .bounds_dp import local_clock

    def run(stopped):
        t = time.perf_counter()
        topo = inst.model.layout.topology
        helpers, k = max(1, topo.dp - 1), max(0, topo.dp_rank - 1)
        share = SimpleNamespace(dp=helpers, dp_rank=k)
        open_idx = inst.open_pairs()
        restarts = max(1, -(-inst.attack.restarts // helpers))
        try:
            x_best, margins = attack_round(inst.model, inst.pairs, open_idx, inst.pair_lo, inst.pair_hi,
                                           _StopClock(local_clock(inst.clock), stopped), inst.attack, restarts,
                                           seed + 7919 * k, _dp_starts(inst.guided, share))
        except _Stopped:
            return None
        return confirm_candidates(inst, x_best, margins, open_idx), time.perf_counter() - t
    return run


def check_vertices(inst: Instance, vertices: dict, phase: str) -> Counterexample | None:
    """Margins of the bound-guided vertices, for every open pair of the same region; keeps the
    best 8 of each pair as starts for later attack rounds."""
    open_idx = inst.open_pairs()
    if not vertices or not open_idx:
        return None
    t = time.perf_counter()
    for p, v in vertices.items():
        inst.guided[p] = (torch.cat([v, inst.guided[p]]) if p in inst.guided else v)[:8]
    pts = torch.cat(list(vertices.values()))
    device = pts.device
    pts_region = torch.cat([torch.full((v.shape[0],), inst.pairs.index[p][0], device=device)
                            for p, v in vertices.items()])
    with torch.no_grad():
        y = inst.model.forward(pts)                                            # [N, n_out]
    idx = torch.tensor(open_idx, device=device)
    pairs = inst.pairs
    margins = output_margin(y.unsqueeze(1).expand(-1, len(idx), -1), pairs.C[idx], pairs.d[idx], pairs.mask[idx])
    same = pts_region.unsqueeze(1) == inst.pair_region[idx].unsqueeze(0)
    best, arg = margins.masked_fill(~same, math.inf).min(0)
    found = confirm_candidates(inst, pts[arg], best, open_idx)
    inst.add_phase(phase, time.perf_counter() - t)
    inst.say(f"{phase}: {pts.shape[0]} bound-guided vertices, best margin {float(best.min()):.4g}")
    return found
