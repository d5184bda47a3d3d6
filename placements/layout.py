"""The distributed layout: answers the engine's placement questions with DTensors on a mesh.

The engine (dtensor_verify.methods) calls these hooks and nothing else; see
dtensor_verify/layout.py for the contract. Which layer gets which treatment comes from the
policies chosen by the plan (`apply.py`), held here as per-node data.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from dtensor_verify.layout import Layout
from dtensor_verify.memory import tag, track_existing
from dtensor_verify.ops.base import BackwardResult

from .mesh import mesh_device
from .policies import Policy


def chunk_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """This rank's [start, stop) of n items split like DTensor's Shard (torch.chunk semantics)."""
    size = math.ceil(n / world) if n else 0
    start = min(n, rank * size)
    return start, min(n, start + size)


class DistributedLayout(Layout):
    def __init__(self, graph, mesh, node_policy: dict[str, Policy], neuron_sharded: dict[str, bool],
                 sweep_policy: dict[str, Policy]):
        self.graph = graph
        self.mesh = mesh
        self.node_policy = node_policy          # policy of each node that owns parameters
        self.neuron_sharded = dict(neuron_sharded)  # node -> A / bounds sharded on its neuron dim (tp zone)
        # The network input joins a tp zone that reads it: A w.r.t. the input then stays sharded
        # (a reduce-scatter instead of a full Partial all-reduced on every rank) and the box is
        # sharded to match, so concretisation only reduces the [B, K] result.
        self.neuron_sharded[graph.input_name] = _read_only_by_tp(graph, graph.input_name, node_policy)
        self.sweep_policy = sweep_policy        # start node -> policy deciding row (spec) sharding
        self.world_size = mesh.size()
        self.rank = mesh.get_local_rank()
        self.device = mesh_device(mesh)
        self._row_sharded = [False]             # stack: is the current sweep split by rows?
        self._gather_order = [()]               # stack: fsdp layers the current sweep gathers, in order
        self._gather_orders = {}                # (start node, autograd on?) -> that order
        self._prefetched = {}                   # node name -> pending async unshard (UnshardHandle)
        self._streaming = set()                 # nodes whose step runs shard by shard right now
        self._domain_mode = False               # inside branch and bound: rows are never split
        self._gathered = frozenset()            # fsdp layers held unsharded by `network_function`

    # -- weights ---------------------------------------------------------------------------
    @contextmanager
    def weights(self, node, backward: bool = False):
        policy = self.node_policy.get(node.name)
        module = node.op.module if node.op is not None else None
        if policy is None or module is None or policy.weights_at_rest == "full" or node.name in self._gathered:
            yield
            return
        if policy.weights_at_rest == "fsdp":
            if self._streams(node, policy):
                # Steps and IBP fetch the weight one rank's shard at a time (`backward_step`, `ibp`).
                self._streaming.add(node.name)
                try:
                    yield
                finally:
                    self._streaming.discard(node.name)
                return
            handle = self._prefetched.pop(node.name, None)
            with tag("weights"):
                if handle is not None:
                    handle.wait()
                else:
                    module.unshard()
            for p in module.parameters(recurse=False):
                track_existing(p, "weights")
            if backward and policy.prefetch_next:
                self._prefetch_after(node)
            try:
                hooks = _RegatherSavedWeights(module) if torch.is_grad_enabled() else nullcontext()
                with hooks:
                    yield
            finally:
                module.reshard()
            return
        # tp: inside a neuron-sharded backward sweep the op works on the DTensor shards; anywhere
        # else (IBP, forward, row-split sweeps) it needs the full weight for a moment.
        if backward and not self._row_sharded[-1]:
            yield
            return
        saved = {name: p for name, p in module.named_parameters(recurse=False)}
        try:
            with tag("weights"):
                for name, p in saved.items():
                    module._parameters[name] = torch.nn.Parameter(p.detach().full_tensor(), requires_grad=False)
            yield
        finally:
            for name, p in saved.items():
                module._parameters[name] = p

    def weights_are_local(self, node) -> bool:
        if node.name in self._streaming:
            return False
        policy = self.node_policy.get(node.name)
        # tp weights stay DTensor shards inside a neuron-sharded sweep (see `weights`).
        return policy is None or policy.weights_at_rest != "tp" or self._row_sharded[-1]

    # -- fsdp prefetch ----------------------------------------------------------------------
    def _gathers_in_step(self, node) -> bool:
        policy = self.node_policy.get(node.name)
        return (policy is not None and node.op is not None and node.op.module is not None
                and policy.weights_at_rest == "fsdp" and not self._streams(node, policy))

    def _sweep_gather_order(self, start_name: str) -> tuple[str, ...]:
        """The fsdp layers a sweep from `start_name` gathers, in the order it visits them (reverse
        topological over the start's ancestors: `crown._backward_sweep` visits every one)."""
        key = (start_name, torch.is_grad_enabled())
        if key not in self._gather_orders:
            ancestors = self.graph.ancestors(start_name)
            self._gather_orders[key] = tuple(n.name for n in reversed(self.graph.nodes)
                                             if n.name in ancestors and self._gathers_in_step(n))
        return self._gather_orders[key]

    def _prefetch_after(self, node):
        """Start the all-gather of the layer the sweep gathers after `node`. Every rank runs the
        same sweeps over the same graph, so the collectives are issued in the same order."""
        order = self._gather_order[-1]
        if node.name not in order:
            return
        i = order.index(node.name) + 1
        if i == len(order) or order[i] in self._prefetched:
            return
        with tag("weights"):
            self._prefetched[order[i]] = self.graph[order[i]].op.module.unshard(async_op=True)

    def _drop_prefetched(self, finish: bool):
        prefetched, self._prefetched = self._prefetched, {}
        if not finish:
            return                  # an error is unwinding: do not wait on collectives
        for name, handle in prefetched.items():
            handle.wait()
            self.graph[name].op.module.reshard()

    # -- spec: weights streamed shard by shard ---------------------------------------------
    def _streams(self, node, policy) -> bool:
        # Only without autograd (IBP, CROWN, alpha-CROWN's CROWN start): its optimisation saves
        # the weights its steps use, and the regather hooks (`_RegatherSavedWeights`) work on
        # whole FSDP layers.
        return (policy.stream_shards and not torch.is_grad_enabled()
                and node.op.caps.sums_over_weight_rows)

    def _weight_shards(self, node):
        """For each rank k in turn: set `node`'s parameters to rank k's Shard(0) rows (broadcast
        from k; its own are used in place) and yield their [start, stop). One shard besides the
        rank's own is resident at a time."""
        module = node.op.module
        params = dict(module.named_parameters(recurse=False))
        n_rows = params["weight"].shape[0]
        group = self.mesh.get_group()
        for k in range(self.world_size):
            start, stop = chunk_bounds(n_rows, self.world_size, k)
            if start == stop:
                continue
            shard = {}
            for name, p in params.items():
                if k == self.rank:
                    t = p.to_local().detach().contiguous()
                else:
                    with tag("weights"):
                        t = torch.empty((stop - start, *p.shape[1:]), dtype=p.dtype, device=self.device)
                # Outside the tag: the meter counts writes under "weights" as new memory (FSDP's
                # refills), and the owner's shard is already counted as resident.
                dist.broadcast(t, src=dist.get_global_rank(group, k), group=group)
                shard[name] = torch.nn.Parameter(t, requires_grad=False)
            try:
                module._parameters.update(shard)
                yield start, stop
            finally:
                module._parameters.update(params)
            del shard

    def _rows_step_by_shard(self, node, rows, batch):
        """The op's direct rule for one-hot `rows`, each row taken from the shard that holds it."""
        joined = _RowJoin(len(rows), self.local)
        for start, stop in self._weight_shards(node):
            inside = ((rows >= start) & (rows < stop)).nonzero().flatten()
            joined.add(node.op.backward_rows(rows[inside] - start, batch), inside)
        return joined.result()

    def _step_by_shard(self, step, lA, uA, node):
        """The step as a sum over weight shards: shard k's rows of W against A's columns [start, stop)."""
        total = None
        for start, stop in self._weight_shards(node):
            part_lA = _narrow_columns(lA, start, stop)
            part_uA = part_lA if uA is lA else _narrow_columns(uA, start, stop)
            total = _add_results(total, step(part_lA, part_uA))
        return total

    def ibp(self, node, intervals):
        """IBP of a streamed layer: shard k's rows of the weight give output slice k (dim 1)."""
        if node.name not in self._streaming:
            return super().ibp(node, intervals)
        return self._outputs_by_shard(node, lambda: node.op.ibp(*intervals))

    # An attack evaluates the network thousands of times; gathering each FSDP layer per call is
    # then mostly collective latency. Up to this many bytes of such weights (the whole model, per
    # rank), `network_function` gathers them once for the attack instead; larger models keep
    # gathering (or streaming) layer by layer, so an attack never holds more than a bound step.
    GATHER_ONCE_BYTES = 256 * 2**20

    @contextmanager
    def network_function(self):
        layers = [n for n in self.graph.layers()
                  if n.name in self.node_policy and self.node_policy[n.name].weights_at_rest == "fsdp"]
        full_bytes = sum(p.numel() * p.element_size() for n in layers for p in n.op.module.parameters())
        if self._gathered or not layers or full_bytes > self.GATHER_ONCE_BYTES:
            yield
            return
        with tag("weights"):
            for n in layers:                      # the same order on every rank: collectives
                n.op.module.unshard()
        self._gathered = frozenset(n.name for n in layers)
        try:
            yield
        finally:
            self._gathered = frozenset()
            for n in layers:
                n.op.module.reshard()

    def forward(self, node, inputs):
        """The network's forward through a streamed layer (spec under no_grad: PGD's last step,
        bound-guided vertices): like IBP, shard k's rows of the weight give output slice k."""
        if node.name not in self._streaming:
            return super().forward(node, inputs)
        out, = self._outputs_by_shard(node, lambda: (node.op.forward(*inputs),))
        return out

    def _outputs_by_shard(self, node, rule):
        """Run `rule()` (a tuple of [B, k, ...] outputs for the current shard's k output rows) once
        per weight shard and join the slices along dim 1 into full [B, *node.shape] outputs."""
        full = None
        for start, stop in self._weight_shards(node):
            parts = rule()
            if full is None:
                full = [p.new_empty((p.shape[0], *node.shape)) for p in parts]
            for whole, part in zip(full, parts):
                whole.narrow(1, start, stop - start).copy_(part)
        return tuple(full)

    def rows_step(self, node, rows, batch):
        if node.name in self._streaming:
            return self._rows_step_by_shard(node, rows, batch) if node.op.has_rows_rule() else None
        return super().rows_step(node, rows, batch)

    # -- sweeps, A-matrices, bounds, alphas --------------------------------------------------
    def _spec_split(self, start_name: str) -> bool:
        if self._domain_mode:
            return False
        policy = self.sweep_policy.get(start_name)
        return policy is not None and policy.a_matrix_sharding == "spec"

    @contextmanager
    def domain_batches(self):
        # Branch and bound gives each rank its own domains (or, with tp, the same ones): the
        # rows of a bound stay whole on the rank that bounds them.
        self._domain_mode = True
        try:
            yield
        finally:
            self._domain_mode = False

    @property
    def splits_domains(self) -> bool:
        return not any(p.a_matrix_sharding == "neuron" for p in self.node_policy.values())

    @contextmanager
    def sweep(self, start_name: str):
        self._row_sharded.append(self._spec_split(start_name))
        self._gather_order.append(self._sweep_gather_order(start_name))
        finished = False
        try:
            yield
            finished = True
        finally:
            self._drop_prefetched(finish=finished)
            self._gather_order.pop()
            self._row_sharded.pop()

    def _shard_local(self, t: torch.Tensor, dim: int) -> DTensor:
        """This rank's chunk of a replicated tensor as a Shard(dim) DTensor: no communication
        forward; backward all-gathers the gradient, so every rank's copy gets the same grad."""
        replicated = DTensor.from_local(t, self.mesh, [Replicate()], run_check=False)
        return replicated.redistribute(self.mesh, [Shard(dim)])

    def place_A(self, A, node):
        want_shard = self.neuron_sharded.get(node.name, False) and not self._row_sharded[-1]
        if isinstance(A, DTensor):
            if want_shard:
                return A.redistribute(self.mesh, [Shard(A.dim() - 1)])    # Partial -> reduce-scatter
            return A.full_tensor()
        if want_shard:
            return self._shard_local(A, A.dim() - 1)
        return A

    # Row slices per rank of a tp layer's backward step (see `backward_step`): the transient
    # Partial A-matrix is then about 1/(ROW_SLICES_PER_RANK * P) of a full one.
    ROW_SLICES_PER_RANK = 1

    def backward_step(self, node, step, lA, uA):
        # A tp layer's rule (A Shard(-1) @ W Shard(0)) yields a full-size Partial A-matrix on every
        # rank until `place_A` reduce-scatters it, which would be the per-rank peak. Run on
        # slices of the rows, only a slice of it exists at a time; every rank cuts the same
        # slices (rows are not split over ranks here), so the collectives match.
        if node.name in self._streaming:
            return self._step_by_shard(step, lA, uA, node)
        n_rows = _n_rows(lA, uA)
        if self.weights_are_local(node) or n_rows < 2:
            return step(lA, uA)
        n_slices = min(n_rows, self.ROW_SLICES_PER_RANK * self.world_size)
        joined = _RowJoin(n_rows, self.local)
        for i in range(n_slices):
            start, stop = chunk_bounds(n_rows, n_slices, i)
            if start == stop:
                continue
            part_lA = _narrow_rows(lA, start, stop)
            part_uA = part_lA if uA is lA else _narrow_rows(uA, start, stop)
            joined.add(step(part_lA, part_uA), slice(start, stop))
        return joined.result()

    def place_bounds(self, bounds, node):
        if bounds is None or self._row_sharded[-1] or not self.neuron_sharded.get(node.name, False):
            return bounds
        return tuple(self._shard_local(b, b.dim() - 1) for b in bounds)

    def _alpha_sharded(self, relu_node, start_name) -> bool:
        return self.neuron_sharded.get(relu_node.name, False) and not self._spec_split(start_name)

    def alpha_param(self, alpha, relu_node, start_name):
        # tp zone: keep only this rank's neurons (slopes, their grads and Adam state all 1/P);
        # spec: the rows are already this rank's slice (init_alphas asked row_slice).
        if not self._alpha_sharded(relu_node, start_name):
            return alpha
        start, stop = chunk_bounds(alpha.shape[-1], self.world_size, self.rank)
        return alpha[..., start:stop]

    def place_alpha(self, alpha, relu_node, start_name):
        if not self._alpha_sharded(relu_node, start_name):
            return alpha
        shape = torch.Size((*alpha.shape[:-1], relu_node.shape[-1]))
        return DTensor.from_local(alpha, self.mesh, [Shard(alpha.dim() - 1)], run_check=False, shape=shape,
                                  stride=_contiguous_stride(shape))

    def local(self, t):
        if isinstance(t, DTensor):
            return t.full_tensor()
        return t

    # -- rows (spec sharding) ---------------------------------------------------------------
    def row_slice(self, start_name: str, n_rows: int) -> slice:
        if not self._spec_split(start_name):
            return slice(0, n_rows)
        return slice(*chunk_bounds(n_rows, self.world_size, self.rank))

    def max_local_rows(self, start_name: str, n_rows: int) -> int:
        if not self._spec_split(start_name):
            return n_rows
        return math.ceil(n_rows / self.world_size)

    def gather_rows(self, t, start_name: str, n_rows: int, differentiable: bool = False):
        if not self._spec_split(start_name):
            return t
        shape = torch.Size((t.shape[0], n_rows))
        dt = DTensor.from_local(t.contiguous(), self.mesh, [Shard(1)], run_check=False, shape=shape,
                                stride=(n_rows, 1))
        # Each rank's later use of the gathered rows differs (its own slice of the next bound),
        # so the gradient arriving here is a partial sum over ranks.
        return dt.full_tensor(grad_placements=[Partial()] if differentiable else None)

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.mesh.get_group())
        return bool(t.item())

    def barrier(self):
        dist.barrier(group=self.mesh.get_group())


def _read_only_by_tp(graph, name, node_policy) -> bool:
    """Is every reader of node `name` a tp layer (and its value flat, as tp layers need)?"""
    readers = graph.consumers.get(name, [])
    return len(graph[name].shape) == 1 and bool(readers) and all(
        node_policy.get(r) is not None and node_policy[r].a_matrix_sharding == "neuron" for r in readers)


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= s
    return tuple(reversed(stride))


def _n_rows(lA, uA) -> int:
    A = lA if lA is not None else uA
    return 0 if A is None else A.shape[1]


def _narrow_rows(A, start, stop):
    return None if A is None else A.narrow(1, start, stop - start)


def _narrow_columns(A, start, stop):
    """A's slice on the node's first dim (Linear features, conv channels): dim 2 of [B, K, *S]."""
    return None if A is None else A.narrow(2, start, stop - start)


def _add_results(total: BackwardResult | None, part: BackwardResult) -> BackwardResult:
    """Sum of two step results over the same rows (in place into `total`: no autograd here)."""
    if total is None:
        return part
    for (t_l, t_u), (p_l, p_u) in zip(total.input_A, part.input_A):
        if t_l is not None:
            t_l.add_(p_l)
        if t_u is not None and t_u is not t_l:
            t_u.add_(p_u)
    shared = total.ubias is total.lbias
    total.lbias = total.lbias + part.lbias
    total.ubias = total.lbias if shared else total.ubias + part.ubias
    return total


class _RowBuffer:
    """One A-matrix (or bias) assembled from parts over subsets of its rows (dim 1), each copied
    into a local buffer as it arrives (so the parts need not all be alive at once); wrapped as a
    DTensor again if the parts were. Every row must be written once."""

    def __init__(self, n_rows: int):
        self.n_rows = n_rows
        self.buffer = None
        self.dtensor_spec = None       # (mesh, placements, global shape) of DTensor slices
        self.joined = None

    def write(self, part, rows):
        """`rows`: a slice, or an index tensor (then no autograd: index_copy_ is in place)."""
        local = part
        if isinstance(part, DTensor):
            # Each rank holds whole rows of its shard: rows must not be split or pending a sum.
            assert not any(p.is_shard(1) or p.is_partial() for p in part.placements), part.placements
            local = part.to_local()
            if self.dtensor_spec is None:
                shape = torch.Size((part.shape[0], self.n_rows, *part.shape[2:]))
                self.dtensor_spec = (part.device_mesh, part.placements, shape)
        if self.buffer is None:
            self.buffer = local.new_empty((local.shape[0], self.n_rows, *local.shape[2:]))
        if isinstance(rows, slice):
            self.buffer[:, rows].copy_(local)     # differentiable (CopySlices)
        else:
            self.buffer.index_copy_(1, rows, local)

    def tensor(self):
        if self.joined is None:
            self.joined = self.buffer
            if self.dtensor_spec is not None:
                mesh, placements, shape = self.dtensor_spec
                self.joined = DTensor.from_local(self.buffer, mesh, placements, run_check=False, shape=shape,
                                                 stride=_contiguous_stride(shape))
        return self.joined


class _RowJoin:
    """The BackwardResult of a step run on subsets of the rows: A-matrices joined per input and
    side (a pair shared by both sides stays shared), biases [B, k] made local and joined."""

    def __init__(self, n_rows: int, local):
        self.n_rows = n_rows
        self.local = local
        self.slots = None
        self.biases = [None, None]     # per side: a _RowBuffer, or the float every part had
        self.bias_shared = False

    def _slots_for(self, pair):
        lower = None if pair[0] is None else _RowBuffer(self.n_rows)
        upper = lower if pair[1] is pair[0] else (None if pair[1] is None else _RowBuffer(self.n_rows))
        return lower, upper

    def add(self, result: BackwardResult, rows):
        """`rows`: where `result`'s rows go (a slice, or an index tensor)."""
        if self.slots is None:
            self.slots = [self._slots_for(pair) for pair in result.input_A]
            self.bias_shared = result.ubias is result.lbias
        for (lower, upper), (part_lA, part_uA) in zip(self.slots, result.input_A):
            if lower is not None:
                lower.write(part_lA, rows)
            if upper is not None and upper is not lower:
                upper.write(part_uA, rows)
        for side, bias in enumerate((result.lbias, result.ubias)[:1 if self.bias_shared else 2]):
            bias = self.local(bias)
            if isinstance(bias, torch.Tensor):
                if self.biases[side] is None:
                    self.biases[side] = _RowBuffer(self.n_rows)
                self.biases[side].write(bias, rows)
            else:
                self.biases[side] = bias

    def result(self) -> BackwardResult:
        input_A = [tuple(None if slot is None else slot.tensor() for slot in pair) for pair in self.slots]
        lbias, ubias = (b.tensor() if isinstance(b, _RowBuffer) else b for b in self.biases)
        return BackwardResult(input_A, lbias, lbias if self.bias_shared else ubias)


class _RegatherSavedWeights(torch.autograd.graph.saved_tensors_hooks):
    """Let autograd save an FSDP layer's weight without keeping it unsharded.

    alpha-CROWN backpropagates through every bound step; autograd would keep the gathered weights
    alive (or read freed storage after `reshard()`). Instead a saved weight is stored as a
    reference to its module and re-gathered with `unshard()` when the backward pass needs it,
    which is what FSDP itself does around a layer's backward.
    """

    def __init__(self, module):
        params = {name: p for name, p in module.named_parameters(recurse=False)}
        ptrs = {}
        for name, p in params.items():
            if not isinstance(p, DTensor):
                ptrs[p.untyped_storage().data_ptr()] = (name, p.storage_offset())

        def pack(t):
            if isinstance(t, DTensor) or t.device.type == "meta":
                return t
            try:
                key = t.untyped_storage().data_ptr()
            except RuntimeError:
                return t
            if key not in ptrs:
                return t
            name, base = ptrs[key]
            return (module, name, tuple(t.shape), tuple(t.stride()), t.storage_offset() - base)

        def unpack(packed):
            if isinstance(packed, torch.Tensor):
                return packed
            mod, name, shape, stride, offset = packed
            with tag("weights"):
                mod.unshard()
            try:
                with tag("weights"):
                    full = getattr(mod, name).detach().clone()
            finally:
                mod.reshard()
            return full.as_strided(shape, stride, offset)

        super().__init__(pack, unpack)
