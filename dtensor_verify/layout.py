"""Where tensors live: the few small protocols the engine sees. The engine never calls collectives.

The default layout is one process with everything local. The placement pass
(`placements.apply_plan`) installs a layout that answers the same questions with DTensors on a
DeviceMesh, one placement *style* per layer (`placements/styles/`). Four protocols:

* `Layout` (one per placed model): `weights(node)` for IBP / forward outside a sweep, `sweep(start)`
  for one backward sweep, `rows(start, n)` for a bound's row split over ranks, `alpha_param`,
  `local`, `all_true`, the attack / branch-and-bound contexts and the `topology`.
* `Sweep` (one backward sweep, an explicit value the engine passes along): lays out A-matrices,
  bounds, slopes through each node and hands out each node's `StepWeights`.
* `StepWeights` (one op, one step): the op's parameters for this step, and the op's rules run
  with them. Ops receive their parameters as an argument; nothing is swapped into a module.
* `RowSplit` (one bound's rows): this rank's slice, the most rows any rank holds, and the gather.

`Topology` is the mesh as branch and bound and the memory meter see it (groups and roles).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch


class Topology:
    """One process: a 1 x 1 mesh. See `placements.topology.Topology` for the distributed one."""
    dp = 1                  # groups of ranks with their own domains (branch and bound)
    shard = 1               # ranks that share each bounding step (the placement plan's mesh)
    world = 1
    rank = 0                # this rank in `group` (every rank of the mesh)
    dp_rank = 0
    shard_rank = 0
    group = None            # process group over the whole mesh (None: one process)
    shard_group = None
    is_leader = True

    def coords(self, rank: int) -> tuple[int, int]:
        """(dp index, shard index) of the mesh rank `rank` (a rank of `group`)."""
        return 0, 0

    def rank_at(self, dp_index: int, shard_index: int) -> int:
        """The rank of `group` at mesh coordinates (dp_index, shard_index)."""
        return 0


LOCAL_TOPOLOGY = Topology()


def weight_kwargs(op, params) -> dict:
    """The keyword that hands `params` to an op's rule (ops without weights take none)."""
    return {"params": params} if params is not None else {}


class StepWeights:
    """An op's parameters for one step (full tensors here) and its rules run with them."""

    def __init__(self, op, params=None):
        self.op = op
        self.params = params

    def ibp(self, intervals):
        return self.op.ibp(*intervals, **weight_kwargs(self.op, self.params))

    def forward(self, inputs):
        return self.op.forward(*inputs, **weight_kwargs(self.op, self.params))

    def rows(self, rows: torch.Tensor, batch: int):
        """The op's direct rule for the one-hot rows `rows` (`BoundOp.backward_rows`), or None to
        use the generic rule on one-hot A-matrices."""
        return self.op.backward_rows(rows, batch, **weight_kwargs(self.op, self.params))

    def backward(self, step, lA, uA):
        """Run `step(lA, uA, params)`, the node's backward rule whose input A-matrices come out
        laid out. A style may run it on slices of the rows (dim 1) or of the weight and join."""
        return step(lA, uA, self.params)


def local_weights(op) -> StepWeights:
    """The op's own parameters, read from its module (one process, replicated layers)."""
    params = op.module_params() if op is not None and op.caps.has_weights else None
    return StepWeights(op, params)


class Sweep:
    """One backward sweep started at `start`; here nothing is sharded."""
    row_split = False       # are the rows of this bound split over ranks?

    def __init__(self, start: str):
        self.start = start

    def weights(self, node):
        """Context yielding `node`'s StepWeights for a step of this sweep."""
        return nullcontext(local_weights(node.op))

    def place_A(self, A, node):
        """An A-matrix w.r.t. `node`'s output, laid out as `node`'s style expects."""
        return A

    def place_bounds(self, bounds, node):
        """The (lower, upper) bounds of `node` (or any tuple shaped like them), laid out."""
        return bounds

    def place_alpha(self, alpha, relu_node):
        """Stored slopes (or split multipliers) as the ReLU's backward rule needs them here."""
        return alpha


@dataclass(frozen=True)
class RowSplit:
    """The rows of one bound (`n` of them) as this rank computes them."""
    mine: slice             # this rank's rows
    most: int               # the most rows any rank computes

    def gather(self, t: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """Assemble `[B, n]` from each rank's part."""
        return t


def sweep_chunk(max_rows: int | None, most: int, n: int) -> int:
    """Rows per backward sweep on this rank. `max_rows` counts the rows of one sweep across the
    ranks that split the rows (spec): a rank with `most` of the `n` rows bounds its share of
    `max_rows` per sweep, so per-rank A-matrix memory falls with P while the number of sweeps
    stays that of one process (with the full `max_rows` per rank the cap would bind at every P)."""
    if not max_rows:
        return max(most, 1)
    if most >= n:
        return max(max_rows, 1)
    return max(-(-max_rows * most // n), 1)


class Layout:
    world_size = 1          # ranks that share each bounding step (the "shard" mesh dim)
    rank = 0                # this rank among them
    device = torch.device("cpu")
    topology = LOCAL_TOPOLOGY

    def weights(self, node):
        """Context yielding `node`'s StepWeights outside a sweep (IBP, the network's forward)."""
        return nullcontext(local_weights(node.op))

    @contextmanager
    def sweep(self, start_name: str):
        """Context yielding the `Sweep` of one backward sweep started at `start_name`."""
        yield Sweep(start_name)

    def rows(self, start_name: str, n_rows: int) -> RowSplit:
        """How the `n_rows` rows of a bound started at `start_name` are split over ranks."""
        return RowSplit(slice(0, n_rows), n_rows)

    def alpha_param(self, alpha, relu_node, start_name):
        """The part of a (full) slope tensor this rank stores and optimises."""
        return alpha

    def local(self, t):
        """A full, plain tensor (gathering / reducing a DTensor)."""
        return t

    def all_true(self, flag: bool) -> bool:
        """A decision all ranks agree on (e.g. early stopping)."""
        return flag

    def smallest(self, n: int) -> int:
        """The smallest of the ranks' `n` (ranks that share each bounding step): a size all of
        them use, e.g. rows per sweep derived from each rank's own free memory."""
        return n

    def total(self, x: float) -> float:
        """The sum over the ranks that split a bound's rows of a per-rank score (an optimiser's
        progress): here, and where each rank's score is its own, the score itself."""
        return x

    @contextmanager
    def search_weights(self):
        """Context of one search (an alpha- / beta-CROWN optimisation loop): a layout may keep
        weights it gathers per step gathered for its duration instead (every rank enters it)."""
        yield

    @contextmanager
    def network_function(self):
        """Context of an attack (many forward passes of the network): a layout may hold gathered
        weights for its duration instead of gathering them for every pass."""
        yield

    @contextmanager
    def domain_batches(self):
        """Context of branch and bound, yielding the layout to bound domains with: the batch dim
        holds domains, which the solver spreads over ranks itself, so its bounds are never split
        by rows over ranks."""
        yield self

    @property
    def splits_domains(self) -> bool:
        """May the ranks of this layout bound different domains? (False when a step needs every
        rank on the same domains, e.g. neuron-sharded A-matrices.)"""
        return True


DEFAULT_LAYOUT = Layout()
