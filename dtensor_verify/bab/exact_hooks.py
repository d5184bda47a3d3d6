"""Branch and bound's use of the exact LP (bab/exact.py): fully split domains of a round, and
(one worker, no collective) open domains with a few unstable neurons left. The BabSolver calls
these with itself; they read and update its `exact` oracle, stats, counterexample and the
exhausted-domain count."""
from __future__ import annotations

import torch


def prepare_exact(solver) -> None:
    """The LP oracle of leaf domains, built by every rank at the same point (it may gather
    sharded weights); a failure leaves it disabled with the reason."""
    from .exact import ExactLeaves

    solver.exact = ExactLeaves(solver.problem)
    try:
        solver.exact.prepare()
    except Exception as exc:    # noqa: BLE001 - then leaves stay open, saying why
        solver.exact.disabled = f"cannot copy the network for the exact LP ({type(exc).__name__}: {str(exc)[:200]})"


def decide_leaves(solver, leaves) -> None:
    """Fully split domains of a BabSolver's round, decided exactly by the LP; those it cannot
    decide count as exhausted (the run then ends unknown, saying why)."""
    if solver.exact is None:
        solver._prepare_exact()
    if solver.exact.disabled:
        solver.exhausted += len(leaves)
        solver.exhausted_reason = (f"{solver.exhausted} fully split domain(s) not proved by beta-CROWN; "
                                   f"no exact LP: {solver.exact.disabled}")
        return
    try:
        out = solver.exact.decide(leaves, solver.confirm)
    except Exception as exc:    # noqa: BLE001 - no collective inside: this worker alone gives up
        solver.exact.disabled = f"the exact LP failed ({type(exc).__name__}: {str(exc)[:200]})"
        solver.exhausted += len(leaves)
        solver.exhausted_reason = f"{solver.exhausted} fully split domain(s) left open: {solver.exact.disabled}"
        return
    solver.stats.proved += int(out.proved.sum())
    solver.counterexample = solver.counterexample or out.counterexample
    if out.undecided and out.counterexample is None:
        solver.exhausted += out.undecided
        solver.exhausted_reason = out.reason


def settle_few_unstable(solver, rest, margins, open_idx):
    """One worker (no collective): the open domains of `rest` with a few unstable neurons left
    are decided by the exact LP, one per phase pattern. Returns (rest, margins, open_idx) of
    the domains still open."""
    keep = _few_unstable_open(solver, rest)
    if keep is None:
        return rest, margins, open_idx
    return rest.index(keep), margins[keep], open_idx[keep]


LP_SHARE_OF_BOUNDING = 0.2     # few-unstable LPs may take at most this share of bounding's time


def lp_budget_seconds(time_left: float, bounding_seconds: float, lp_seconds: float) -> float:
    """Seconds the few-unstable LPs of one round may take: at most a quarter of the time left
    (HiGHS does not stop on the run's clock), and in all at most LP_SHARE_OF_BOUNDING of the time
    spent bounding (plus 50 ms to start). On a GPU an input sub-box is bounded in microseconds
    and an LP takes milliseconds on the CPU: without the share, acasxu 3_3 prop_2 bounded 3k
    sub-boxes per second instead of 96k and timed out."""
    share = LP_SHARE_OF_BOUNDING * bounding_seconds + 0.05 - lp_seconds
    return max(0.0, min(0.25 * time_left, share))


def _few_unstable_open(solver, rest):
    """The mask of `rest` still open after the few-unstable LPs, or None (nothing decided)."""
    if solver.exact is None:
        solver._prepare_exact()
    exact = solver.exact
    if exact.disabled or len(rest) == 0:
        return None
    counts = exact.few_unstable(rest, counts=True)
    idx = counts.nonzero().flatten()
    per_lp = exact.seconds / exact.lps if exact.lps else 3e-3
    budget = lp_budget_seconds(solver.time_left(), solver.stats.phases["bounding"], exact.seconds) / max(per_lp, 1e-4)
    idx = idx[torch.cumsum(2 ** counts[idx], 0) <= budget]
    if idx.numel() == 0:
        return None
    try:
        out = exact.decide_enumerated(rest.index(idx), solver.confirm)
    except Exception as exc:    # noqa: BLE001 - this worker alone: its domains stay open
        exact.disabled = f"the exact LP failed ({type(exc).__name__}: {str(exc)[:200]})"
        return None
    solver.stats.proved += int(out.proved.sum())
    solver.counterexample = solver.counterexample or out.counterexample
    keep = torch.ones(len(rest), dtype=torch.bool, device=counts.device)
    keep[idx[out.proved]] = False
    return keep
