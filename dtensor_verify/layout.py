"""Where tensors live. The engine asks its `Layout` at every step; it never calls collectives.

The default layout is one process with everything local. The placement pass
(`placements.apply_plan`) installs a `DistributedLayout` that answers the same questions with
DTensors on a DeviceMesh: FSDP unshard/reshard around a layer, A-matrices sharded on the
neuron dim (tp) or rows of a bound split over ranks (spec).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


class Layout:
    world_size = 1          # ranks that share each bounding step (the "shard" mesh dim)
    rank = 0                # this rank among them
    device = torch.device("cpu")
    dp_mesh = None          # branch and bound's "dp" mesh dim (groups with their own domains), or None

    def weights(self, node, backward: bool = False):
        """Context in which `node`'s parameters are usable as full tensors or DTensor shards."""
        return nullcontext()

    def weights_are_local(self, node) -> bool:
        """Inside `weights(node, backward=True)`: are `node`'s parameters plain full tensors?"""
        return True

    def ibp(self, node, intervals):
        """Inside `weights(node)`: the op's IBP rule on the input boxes `intervals`."""
        return node.op.ibp(*intervals)

    def forward(self, node, inputs):
        """Inside `weights(node)`: the op's forward on the values `inputs` (the network itself)."""
        return node.op.forward(*inputs)

    def rows_step(self, node, rows: torch.Tensor, batch: int):
        """Inside `weights(node, backward=True)`: the op's direct rule for the one-hot rows `rows`
        (`BoundOp.backward_rows`), or None to use the generic rule on one-hot A-matrices."""
        return node.op.backward_rows(rows, batch) if self.weights_are_local(node) else None

    def place_A(self, A, node):
        """Lay out an A-matrix w.r.t. `node`'s output as `node`'s policy expects."""
        return A

    def backward_step(self, node, step, lA, uA):
        """Run `step(lA, uA)`: `node`'s backward rule, returning a BackwardResult whose input
        A-matrices are already laid out by `place_A`. A layout may instead run it on slices of
        the rows (dim 1) and join the results (rows are independent linear functions, and the
        rule's alpha, if any, must not be per-row for the nodes it does this for)."""
        return step(lA, uA)

    def place_bounds(self, bounds, node):
        """Lay out the (lower, upper) bounds of `node` as its policy expects."""
        return bounds

    def alpha_param(self, alpha, relu_node, start_name):
        """The part of a (full) slope tensor this rank stores and optimises."""
        return alpha

    def place_alpha(self, alpha, relu_node, start_name):
        """The stored slopes as the ReLU's backward rule needs them in this sweep."""
        return alpha

    def local(self, t):
        """A full, plain tensor (gathering / reducing a DTensor)."""
        return t

    @contextmanager
    def sweep(self, start_name: str):
        """Context of one backward sweep started at `start_name`."""
        yield

    def max_local_rows(self, start_name: str, n_rows: int) -> int:
        """The most rows any rank computes for a bound started at `start_name`."""
        return n_rows

    def row_slice(self, start_name: str, n_rows: int) -> slice:
        """The rows of a bound starting at `start_name` that this rank computes."""
        return slice(0, n_rows)

    def gather_rows(self, t: torch.Tensor, start_name: str, n_rows: int, differentiable=False) -> torch.Tensor:
        """Assemble `[B, n_rows]` from each rank's `row_slice` part."""
        return t

    def all_true(self, flag: bool) -> bool:
        """A decision all ranks agree on (e.g. early stopping)."""
        return flag

    def barrier(self):
        pass

    @contextmanager
    def phase(self, name: str):
        yield

    @contextmanager
    def network_function(self):
        """Context of an attack (many forward passes of the network): a layout may hold gathered
        weights for its duration instead of gathering them for every pass."""
        yield

    @contextmanager
    def domain_batches(self):
        """Context of branch and bound: the batch dim holds domains, which the solver spreads
        over ranks itself, so a layout must not split the rows of a bound over ranks here."""
        yield

    @property
    def splits_domains(self) -> bool:
        """Under `domain_batches`, may the ranks of this layout bound different domains? (False
        when a step needs every rank on the same domains, e.g. neuron-sharded A-matrices.)"""
        return True


DEFAULT_LAYOUT = Layout()
