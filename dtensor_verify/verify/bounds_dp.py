"""The bound stage spread over the `dp` groups of a `--mesh Dx1` run (D > 1).

The unit of work is a batch element of `bounds.bound_groups` (a region with its open disjuncts,
or one pair): its bounds depend on nothing else in the batch (each element has its own slopes;
Adam and the projection act element-wise), so bounding each rank's share and gathering them
gives every rank the bounds one process computes (within float tolerance; an early stop of
alpha-CROWN is decided per rank from its own share's progress, so with early stopping a bound
may differ by what the remaining steps would have added). Groups go round-robin to the ranks.

Lockstep: every rank calls `gather_outcomes` exactly once per bound stage, with an empty share
too, in the same order on every rank (the stage's open pairs are the same everywhere, since
every earlier stage agrees on them). A time-out on one rank is carried through the gather and
raised on every rank, so no rank waits in a collective the others never reach.

Only meshes of shard degree 1: there a rank's layout bounds whole rows on its own. With a shard
group (DxS, S > 1) every rank of it would have to take the same share and a member of each
group speak for it; that case keeps the whole stage on every rank.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import TimeLimitReached, VerifierError

_TIMED_OUT = "timed-out"
_FAILED = "failed"


def dp_topology(model):
    """The topology to spread the bound stage over, or None (one process, one dp group, a shard
    group of several ranks)."""
    topo = getattr(model.layout, "topology", None)
    if topo is None or getattr(topo, "dp", 1) <= 1 or getattr(topo, "shard", 1) != 1:
        return None
    if getattr(topo, "dp_group", None) is None:
        return None
    return topo


def my_share(groups: list, topo) -> list:
    """This rank's groups (round-robin: the same split on every rank)."""
    return groups[topo.dp_rank::topo.dp]


def _to(x, device):
    """A copy of an outcome's value (tensor, RootState, dict, list) on `device`."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _to(getattr(x, f.name), device) for f in dataclasses.fields(x)})
    return x


def gather_outcomes(topo, outcome, device, merge):
    """Every rank's outcome (or its time-out / failure), gathered over the dp group;
    `merge(outcomes)` of them in rank order, on `device`. If any rank timed out, every rank
    raises TimeLimitReached; if any failed, the failing rank re-raises its error and the others
    raise a VerifierError naming it (an `error` result, never a verdict)."""
    import torch.distributed as dist

    failure = outcome if isinstance(outcome, BaseException) else None
    mine = _TIMED_OUT if outcome is None else _FAILED if failure is not None else _to(outcome, "cpu")
    gathered = [None] * topo.dp
    dist.all_gather_object(gathered, mine, group=topo.dp_group)
    marks = [g for g in gathered if isinstance(g, str)]
    if failure is not None:
        raise failure
    if _FAILED in marks:
        raise VerifierError(f"bound stage failed on dp rank {gathered.index(_FAILED)}")
    if _TIMED_OUT in marks:
        raise TimeLimitReached()
    return merge([_to(g, device) for g in gathered])


def run_share(fn):
    """fn(); None when it ran out of time, the exception when it failed (the gather then
    raises on every rank, after every rank has joined it)."""
    try:
        return fn()
    except TimeLimitReached:
        return None
    except Exception as exc:  # carried through the gather: no rank is left waiting in it
        return exc
