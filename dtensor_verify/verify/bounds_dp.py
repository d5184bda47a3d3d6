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

Fewer batch elements than dp ranks (one input box: most robustness properties, acasxu's
single-box properties): the elements cannot be dealt, so the *rows* of every bound are (`rows_layout`):
each rank bounds its slice of each intermediate layer's unstable neurons and of the output rows
(with its slice of the slopes), and the slices are gathered after every bound, as the `spec`
placement does over a shard group, here over the dp group with the weights whole on every rank.
Rows are independent linear functions, so each rank's slice is what one process computes for those
rows; alpha-CROWN's loss is the sum of every rank's rows, its gradient reaches each rank's slopes
through the gather's backward (a sum over ranks), and the early stop is decided on the summed
score (`Layout.total`), so the bounds are one process's up to the order of float sums.

Small networks (`whole_on_one_rank`, below `ROWS_MIN_NEURONS` neurons feeding activations) do
not split rows: on the lent 16-core host (docs/bab_scaling/dp_s4/README.md) the split alpha-CROWN
took longer on 2 ranks than on one (mnist-net_256x4, 1024 neurons: 3.66 vs 3.34 s and 4.22 vs
3.59 s; acasxu, 300 neurons: 0.41-0.52 vs 0.20-0.23 s): a step's per-op cost does not halve with
its rows, and every step adds gathers. There dp rank 0 computes the whole bound alone
(`whole_then_agree`): one process's computation (its clock checked on that rank only, no
collective inside), then one gather hands its outcome (or its time-out / failure) to every rank.
Deciding time-outs and early stops together *inside* the bound (every clock check and step an
all-reduce over dp, about 1000 on prop_8_0.03) doubled the stage on the host: 1.98 s on one
process, 3.88 s on 2x1 (docs/benchmarks/gpu_h100_2026-12-06_s4/bab_scaling_d13c5fc.md); the
ranks wait for each other at every one.

Only meshes of shard degree 1: there a rank's layout bounds whole rows on its own. With a shard
group (DxS, S > 1) every rank of it would have to take the same share and a member of each
group speak for it; that case keeps the whole stage on every rank.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from ..errors import TimeLimitReached, VerifierError
from ..layout import DEFAULT_LAYOUT, Layout, RowSplit

_TIMED_OUT = "timed-out"
_FAILED = "failed"
_DONE = "done"          # a rank's outcome, not sent (`whole_then_agree`: rank 0's is used)


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


def gather_outcomes(topo, outcome, device, merge, send: bool = True):
    """Every rank's outcome (or its time-out / failure), gathered over the dp group;
    `merge(outcomes)` of them in rank order, on `device` (`send` False: this rank's outcome stays
    here, the others get a mark and merge without it). If any rank timed out, every rank raises
    TimeLimitReached; if any failed, the failing rank re-raises its error and the others raise a
    VerifierError naming it (an `error` result, never a verdict)."""
    import torch.distributed as dist

    failure = outcome if isinstance(outcome, BaseException) else None
    mine = _TIMED_OUT if outcome is None else _FAILED if failure is not None else \
        _to(outcome, "cpu") if send else _DONE
    gathered = [None] * topo.dp
    dist.all_gather_object(gathered, mine, group=topo.dp_group)
    marks = [g for g in gathered if isinstance(g, str)]
    if failure is not None:
        raise failure
    if _FAILED in marks:
        raise VerifierError(f"bound stage failed on dp rank {gathered.index(_FAILED)}")
    if _TIMED_OUT in marks:
        raise TimeLimitReached()
    return merge([_to(g, device) for g in gathered if not isinstance(g, str)])


def whole_then_agree(topo, fn, device, side=None):
    """`fn()` (the whole bound stage, computed alone: no collective inside) on dp rank 0, then one
    gather over dp: (rank 0's outcome, the other ranks' `side` results in rank order) on every
    rank, or a time-out / failure of any rank raised on every rank (as `gather_outcomes`). The
    other ranks would compute the same bound: they run `side(stopped)` instead (e.g. the next
    attack round, `stages.Bound`; no collective inside), which should return None soon after
    `stopped()` turns True: rank 0 tells them when its bound is done (one message each), so a
    quick bound never waits for a long side job. Without `side` they wait (a rank waiting in
    gloo's gather takes no CPU: a loaded host's cores go to rank 0)."""
    first = topo.dp_rank == 0
    if first:
        share = run_share(fn)
        if side is not None:
            _tell_done(topo)
    else:
        share = run_share(lambda: _Side(_side_until_told(topo, side)))
    return gather_outcomes(topo, share, device, lambda outs: (outs[0], [o.value for o in outs[1:]]))


@dataclasses.dataclass
class _Side:
    """A side job's result (a wrapper: its value may be None, which `gather_outcomes` reads as a
    time-out)."""
    value: object = None


def _tell_done(topo) -> None:
    """Rank 0's bound is done: one message to every other rank of the dp group."""
    import torch.distributed as dist

    for r in range(1, topo.dp):
        dist.send(torch.ones(1), group=topo.dp_group, group_dst=r)


def _side_until_told(topo, side):
    """`side(stopped)` on this rank, `stopped()` True once rank 0's message came (always received)."""
    import torch.distributed as dist

    if side is None:
        return None
    work = dist.irecv(torch.zeros(1), group=topo.dp_group, group_src=0)
    try:
        return side(work.is_completed)
    finally:
        work.wait()


def local_clock(clock):
    """The instance's clock deciding on this rank alone (`whole_then_agree`: the ranks agree after)."""
    view = copy.copy(clock)
    view.layout = DEFAULT_LAYOUT
    return view


def run_share(fn):
    """fn(); None when it ran out of time, the exception when it failed (the gather then
    raises on every rank, after every rank has joined it)."""
    try:
        return fn()
    except TimeLimitReached:
        return None
    except Exception as exc:  # carried through the gather: no rank is left waiting in it
        return exc


# -- one batch element (or fewer than dp): the rows of every bound dealt over dp -------------------

def by_rows(groups: list, topo) -> bool:
    """Whether to split the rows of each bound over dp instead of dealing batch elements (fewer
    elements than ranks: some rank would have none)."""
    return 0 < len(groups) < topo.dp


# Neurons feeding activations (all layers) below which a bound's rows are not split over dp.
ROWS_MIN_NEURONS = 4096


def whole_on_one_rank(graph) -> bool:
    """Fewer boxes than ranks on a small network: dp rank 0 computes each bound whole, alone
    (`whole_then_agree`; splitting its rows costs more in gathers and per-op overhead than it
    saves; see the module docstring)."""
    return sum(graph[n].numel for n in graph.preactivation_nodes()) < ROWS_MIN_NEURONS


def _chunk(n: int, parts: int, k: int) -> tuple[int, int]:
    """Part k's [start, stop) of n rows split like torch.chunk (the shard styles' split)."""
    size = -(-n // parts) if n else 0
    start = min(n, k * size)
    return start, min(n, start + size)


class _GatherPadded(torch.autograd.Function):
    """All ranks' [B, most] parts side by side ([B, dp * most]); backward: the sum over ranks of
    the gradient reaching the gathered tensor, this rank's columns of it (each rank's loss uses
    every rank's rows, and the total loss is the sum of the ranks' losses)."""

    @staticmethod
    def forward(ctx, t, group, dp, rank):
        import torch.distributed as dist

        parts = [torch.empty_like(t) for _ in range(dp)]
        dist.all_gather(parts, t.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.most = group, rank, t.shape[1]
        return torch.cat(parts, 1)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[:, ctx.rank * ctx.most:(ctx.rank + 1) * ctx.most], None, None, None


@dataclasses.dataclass(frozen=True)
class DpRows(RowSplit):
    """The rows of one bound split over the dp group (contiguous slices, as torch.chunk)."""
    n: int = 0
    dp: int = 1
    rank: int = 0
    group: object = None

    def gather(self, t: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        pad = self.most - t.shape[1]
        if pad:
            t = torch.cat([t, t.new_zeros(t.shape[0], pad)], 1)
        if differentiable:
            # Every rank takes the gather's backward (a collective), also one whose slice is empty
            # or does not depend on the parameters: its part becomes a leaf of the graph.
            full = _GatherPadded.apply(t if t.requires_grad else t.detach().requires_grad_(True), self.group,
                                       self.dp, self.rank)
        else:
            with torch.no_grad():
                full = _GatherPadded.apply(t.detach(), self.group, self.dp, self.rank)
        keep = [full[:, k * self.most:k * self.most + (stop - start)]
                for k, (start, stop) in ((k, _chunk(self.n, self.dp, k)) for k in range(self.dp))]
        return torch.cat(keep, 1)


class DpRowsLayout(Layout):
    """The model's layout (shard degree 1: weights whole on this rank) with the rows of every bound
    split over the dp group; everything else is the model's layout's."""
    splits_rows = True

    def __init__(self, base, topo):
        self.base, self.topo = base, topo
        # The dp ranks share every bound step here (its gathers are collectives): a method must
        # take the same steps on each, e.g. not size its work from this rank's free memory.
        self.world_size, self.rank, self.device = topo.dp, topo.dp_rank, base.device
        self.topology = base.topology

    def __getattr__(self, name):            # anything else the engine asks: the model's layout
        return getattr(self.__dict__["base"], name)

    def weights(self, node):
        return self.base.weights(node)

    def sweep(self, start_name: str):
        return self.base.sweep(start_name)

    def rows(self, start_name: str, n_rows: int) -> RowSplit:
        dp, rank = self.topo.dp, self.topo.dp_rank
        return DpRows(slice(*_chunk(n_rows, dp, rank)), -(-n_rows // dp), n_rows, dp, rank, self.topo.dp_group)

    def alpha_param(self, alpha, relu_node, start_name):
        return self.base.alpha_param(alpha, relu_node, start_name)

    def local(self, t):
        return self.base.local(t)

    def all_true(self, flag: bool) -> bool:
        import torch.distributed as dist

        t = torch.tensor([1 if self.base.all_true(flag) else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.topo.dp_group)
        return bool(t.item())

    def total(self, x: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.topo.dp_group)
        return float(t.item())

    def network_function(self):
        return self.base.network_function()

    def search_weights(self):
        return self.base.search_weights()

    def domain_batches(self):
        return self.base.domain_batches()

    @property
    def splits_domains(self) -> bool:
        return self.base.splits_domains


def rows_layout(model, topo) -> DpRowsLayout:
    """The layout of a bound stage with fewer boxes than dp ranks on a network that is not small
    (`whole_on_one_rank` False)."""
    return DpRowsLayout(model.layout, topo)


def gather_rows_dim2(topo, alphas: dict) -> dict:
    """Slopes [P, B, K_local, *S] per node from every dp rank, joined on the row dim (rank order:
    the contiguous slices of `DpRows`)."""
    import torch.distributed as dist

    out = {}
    for name in sorted(alphas):
        a = alphas[name].detach().contiguous()
        sizes = [None] * topo.dp
        dist.all_gather_object(sizes, a.shape[2], group=topo.dp_group)
        most = max(sizes)
        pad = torch.zeros((*a.shape[:2], most, *a.shape[3:]), dtype=a.dtype, device=a.device)
        pad[:, :, :a.shape[2]] = a
        parts = [torch.empty_like(pad) for _ in range(topo.dp)]
        dist.all_gather(parts, pad, group=topo.dp_group)
        out[name] = torch.cat([p[:, :, :k] for p, k in zip(parts, sizes)], 2)
    return out


def rows_clock(clock, layout):
    """The instance's clock deciding over the dp group (every rank stops at the same check: the
    bound's gathers are collectives)."""
    view = copy.copy(clock)
    view.layout = layout
    return view
