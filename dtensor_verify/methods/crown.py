"""CROWN: backward linear bound propagation, with CROWN intermediate bounds for every ReLU input.

`backward_bound` is the one backward sweep that all methods share: it starts from linear
functions of one node (`lA`, `uA` of shape [B, K, *S]), pushes them through each op's
backward rule in reverse topological order (accumulating where branches meet) and
concretises them over the input box.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import DEFAULT_LAYOUT, Layout
from ..memory import tag


@dataclass
class CrownOptions:
    # Rows bounded per backward sweep of an intermediate layer: caps A-matrix memory at
    # max_rows x (largest layer). None = all rows at once.
    max_rows: int | None = None
    # Intersect CROWN intermediate bounds with IBP (sound, never looser). Off for exact parity
    # with tools that do not.
    intersect_ibp: bool = True
    # Skip the backward sweep for neurons IBP already proves stable: their relaxation is exact.
    skip_stable: bool = True


def concretize(A: torch.Tensor, box, upper: bool) -> torch.Tensor:
    """min (or max) over the input box of A . x, for A of shape [B, K, *S_in]."""
    x_lower, x_upper = box
    center = ((x_upper + x_lower) / 2).flatten(1).unsqueeze(-1)
    radius = ((x_upper - x_lower) / 2).flatten(1).unsqueeze(-1)
    flat = A.flatten(2)
    mid = flat.matmul(center).squeeze(-1)
    dev = flat.abs().matmul(radius).squeeze(-1)
    return mid + dev if upper else mid - dev


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def backward_bound(graph, start: str, lA, uA, bounds, layout: Layout = DEFAULT_LAYOUT, alphas=None):
    """Bounds of `lA . v_start` (lower) and `uA . v_start` (upper) over the input box.

    `bounds` must hold the input box (under `graph.input_name`) and the bounds of every ReLU
    input upstream of `start`. `alphas` maps ReLU node names to their (lA, uA) lower slopes.
    Returns (lower, upper), each [B, K] or None.
    """
    with layout.sweep(start), tag("A-matrices"):
        return _backward_sweep(graph, start, lA, uA, bounds, layout, alphas)


def _backward_sweep(graph, start, lA, uA, bounds, layout, alphas):
    pending = {start: (lA, uA)}
    lbias = ubias = 0.0
    ancestors = graph.ancestors(start)
    for node in reversed(graph.nodes):
        if node.name not in pending or node.op is None:
            continue
        node_lA, node_uA = pending.pop(node.name)
        alpha = None
        if alphas is not None and node.name in alphas:
            alpha = layout.place_alpha(alphas[node.name], node, start)
        input_bounds = [layout.place_bounds(bounds.get(i), graph[i]) for i in node.inputs]
        with layout.weights(node, backward=True):
            result = node.op.backward(node_lA, node_uA, input_bounds, alpha=alpha)
        del node_lA, node_uA
        lbias = lbias + layout.local(result.lbias)
        ubias = ubias + layout.local(result.ubias)
        for name, (in_lA, in_uA) in zip(node.inputs, result.input_A):
            target = graph[name]
            in_lA = None if in_lA is None else layout.place_A(in_lA, target)
            in_uA = None if in_uA is None else layout.place_A(in_uA, target)
            old = pending.get(name, (None, None))
            pending[name] = (_add(old[0], in_lA), _add(old[1], in_uA))
    assert set(pending) <= {graph.input_name} and ancestors, "backward sweep left unvisited nodes"
    in_lA, in_uA = pending.get(graph.input_name, (None, None))
    box = bounds[graph.input_name]
    lower = upper = None
    if lA is not None:
        lower = layout.local(concretize(in_lA, box, upper=False) + lbias) if in_lA is not None else layout.local(lbias)
    if uA is not None:
        upper = layout.local(concretize(in_uA, box, upper=True) + ubias) if in_uA is not None else layout.local(ubias)
    return lower, upper


def identity_rows(rows: torch.Tensor, shape, batch: int, dtype, device) -> torch.Tensor:
    """One-hot A-matrix [B, k, *shape] selecting the flattened neurons `rows`."""
    numel = 1
    for s in shape:
        numel *= s
    eye = torch.zeros(len(rows), numel, dtype=dtype, device=device)
    eye[torch.arange(len(rows), device=device), rows] = 1.0
    return eye.reshape(1, len(rows), *shape).expand(batch, *([-1] * (1 + len(shape))))


def rows_to_bound(lower, upper, opts: CrownOptions) -> torch.Tensor:
    """Flattened neuron indices that need a backward sweep (unstable under the given bounds)."""
    if not opts.skip_stable:
        return torch.arange(lower[0].numel(), device=lower.device)
    unstable = ((lower < 0) & (upper > 0)).flatten(1).any(0)
    return unstable.nonzero().flatten()


def node_bound_rows(graph, name, rows, bounds, layout, opts: CrownOptions, batch, alphas_for=None):
    """CROWN bounds of the flattened neurons `rows` of node `name`, in chunks of `opts.max_rows`.

    Each rank computes only its `layout.row_slice` of the rows (spec sharding); the result is
    gathered to every rank. Returns (lower, upper) of shape [B, len(rows)].
    """
    node = graph[name]
    box = bounds[graph.input_name]
    n = len(rows)
    mine = layout.row_slice(name, n)
    local_rows = rows[mine]
    most = layout.max_local_rows(name, n)
    chunk = max(opts.max_rows or most, 1)
    lows, ups = [], []
    # Every rank runs the same number of sweeps (FSDP gathers are collectives), even with no rows.
    for start in range(0, most, chunk):
        part = local_rows[start:start + chunk]
        with tag("A-matrices"):
            A = layout.place_A(identity_rows(part, node.shape, batch, box[0].dtype, box[0].device), node)
        alphas = alphas_for(start, start + len(part)) if alphas_for else None
        lo, up = backward_bound(graph, name, A, A, bounds, layout, alphas)
        lows.append(lo)
        ups.append(up)
    if lows:
        lo, up = torch.cat(lows, 1), torch.cat(ups, 1)
    else:
        lo = up = box[0].new_zeros(batch, 0)
    diff = alphas_for is not None
    return layout.gather_rows(lo, name, n, differentiable=diff), layout.gather_rows(up, name, n, differentiable=diff)


def scatter_rows(full_lower, full_upper, rows, lo, up, intersect: bool):
    """Write row bounds into copies of the (IBP) bounds of the whole node."""
    shape = full_lower.shape
    fl, fu = full_lower.flatten(1), full_upper.flatten(1)
    if intersect:
        lo = torch.maximum(lo, fl[:, rows])
        up = torch.minimum(up, fu[:, rows])
    fl = fl.index_copy(1, rows, lo)
    fu = fu.index_copy(1, rows, up)
    return fl.reshape(shape), fu.reshape(shape)


def intermediate_bounds(graph, box, layout: Layout = DEFAULT_LAYOUT, opts: CrownOptions | None = None):
    """CROWN bounds for every ReLU input, in topological order.

    One forward sweep: each node first gets an IBP box computed from the *tightest* bounds of its
    inputs; ReLU inputs then get a CROWN backward sweep for the neurons that box leaves unstable
    (a stable neuron's relaxation is exact whatever its bounds), intersected with the box.
    Returns (bounds, rows): `bounds` maps node names to (lower, upper) [B, *S]; `rows` maps each
    pre-activation node to the neuron indices that got a CROWN sweep.
    """
    with tag("bounds"):
        return _intermediate_bounds(graph, box, layout, opts or CrownOptions())


def _intermediate_bounds(graph, box, layout, opts):
    batch = box[0].shape[0]
    bounds = {graph.input_name: box}
    preactivation = set(graph.preactivation_nodes())
    rows_by_node = {}
    for node in graph.nodes:
        if node.op is None:
            continue
        with layout.weights(node):
            ref_lo, ref_up = node.op.ibp(*[bounds[i] for i in node.inputs])
        ref_lo, ref_up = layout.local(ref_lo), layout.local(ref_up)
        name = node.name
        if name not in preactivation or graph.affine_from_input(name):
            bounds[name] = (ref_lo, ref_up)   # one affine op from the input: IBP is exact
            continue
        rows = rows_to_bound(ref_lo, ref_up, opts)
        rows_by_node[name] = rows
        lo, up = node_bound_rows(graph, name, rows, bounds, layout, opts, batch)
        bounds[name] = scatter_rows(ref_lo, ref_up, rows, lo, up, opts.intersect_ibp)
    return bounds, rows_by_node


def output_bound(graph, bounds, C, layout: Layout = DEFAULT_LAYOUT, alphas=None, want_lower=True,
                 want_upper=True, gather=True):
    """CROWN bounds of `C f(x)` given intermediate bounds; C: [B, K, n_out]. Spec rows are split
    over ranks by the layout (a no-op on one process); `gather=False` returns this rank's rows."""
    out = graph.output
    batch, n_rows = C.shape[:2]
    mine = layout.row_slice(graph.output_name, n_rows)
    A = C[:, mine].reshape(batch, -1, *out.shape)
    A = layout.place_A(A, out)
    lo, up = backward_bound(graph, graph.output_name, A if want_lower else None, A if want_upper else None,
                            bounds, layout, alphas)
    if not gather:
        return lo, up
    return tuple(None if t is None else layout.gather_rows(t, graph.output_name, n_rows) for t in (lo, up))


def crown(graph, box, C=None, layout: Layout = DEFAULT_LAYOUT, opts: CrownOptions | None = None):
    """CROWN bounds of C f(x) over the box. Returns (lower, upper, intermediate bounds)."""
    if C is None:
        C = default_spec(graph, box[0].shape[0], box[0].dtype, box[0].device)
    with torch.no_grad():
        bounds, _ = intermediate_bounds(graph, box, layout, opts)
        lo, up = output_bound(graph, bounds, C, layout)
    return lo, up, bounds


def default_spec(graph, batch, dtype, device):
    n_out = graph.output.numel
    return torch.eye(n_out, dtype=dtype, device=device).unsqueeze(0).expand(batch, -1, -1)
