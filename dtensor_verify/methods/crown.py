"""CROWN: backward linear bound propagation, with CROWN intermediate bounds for every ReLU input.

`backward_bound` is the one backward sweep that all methods share: it starts from linear
functions of one node (`lA`, `uA` of shape [B, K, *S]), pushes them through each op's
backward rule in reverse topological order (accumulating where branches meet) and
concretises them over the input box.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import torch

from .. import deadline
from .alpha_budget import crown_max_rows
from .crown_rows import _feeds_general_op, rows_to_bound, scatter_rows  # noqa: F401 (re-exported)
from ..layout import DEFAULT_LAYOUT, Layout, sweep_chunk, weight_kwargs
from ..memory import tag
from ..ops.patches import Patches, add_A, dense
from ..ops.row_pieces import in_row_pieces
from ..ops.softmax_sum import best_of_shifts
from .ibp import ibp_step
from .output_rows import default_spec, output_ibp, tighter_than_ibp  # noqa: F401 (re-exported)
from .ratio_bounds import ratio_sites, tighten as tighten_ratio
from .sweep_patches import (concretize_patches_pair, identity_output_as_rows, patches_or_dense,
                            reshape_rows_patches, starts_patches)


@dataclass
class CrownOptions:
    # Rows bounded per backward sweep of an intermediate layer: caps A-matrix memory at
    # max_rows x (largest layer). None = all rows at once. Under `spec` the rows of a sweep are
    # split across the ranks (each bounds about max_rows / P; see sweep_chunk).
    max_rows: int | None = None
    # Intersect CROWN intermediate bounds with IBP (sound, never looser). Off for exact parity
    # with tools that do not.
    intersect_ibp: bool = True
    # Skip the backward sweep for neurons IBP already proves stable: their relaxation is exact.
    skip_stable: bool = True
    # Conv layers' intermediate bounds start from A-matrices kept as local patches (ops/patches.py),
    # converted to dense at the first op without a patches rule or where dense is no larger.
    # Same bounds either way; False: dense throughout.
    patches: bool = True


def concretize_both(A: torch.Tensor, box):
    """(min, max) over the input box of A . x, for A of shape [B, K, *S_in]: A . center -/+ |A| . radius."""
    x_lower, x_upper = box
    center = ((x_upper + x_lower) / 2).flatten(1).unsqueeze(-1)
    radius = ((x_upper - x_lower) / 2).flatten(1).unsqueeze(-1)
    flat = A.flatten(2)
    mid = flat.matmul(center).squeeze(-1)
    dev = flat.abs().matmul(radius).squeeze(-1)
    return mid - dev, mid + dev


def concretize(A: torch.Tensor, box, upper: bool) -> torch.Tensor:
    """min (or max) over the input box of A . x (both sides cost the same two products)."""
    return concretize_both(A, box)[1 if upper else 0]


def backward_bound(graph, start: str, lA, uA, bounds, layout: Layout = DEFAULT_LAYOUT, alphas=None, rows=None,
                   betas=None, record=None, patches=False, extra=None):
    """Bounds of `lA . v_start` (lower) and `uA . v_start` (upper) over the input box.

    `bounds` must hold the input box (under `graph.input_name`) and the bounds of every ReLU
    input upstream of `start`. `alphas` maps ReLU node names to their (lA, uA) lower slopes
    (a `[2, ...]` tensor or a pair whose entries may be None). `betas` maps ReLU node names to
    their split constraints (multipliers, signs) (beta-CROWN). With `rows` (and lA = uA = None)
    the sweep bounds those flattened neurons of `start` themselves (one-hot A-matrices, built
    only if the start op has no direct rule for them). `record`, a dict, receives the lower
    A-matrix reaching each ReLU's output (detached, full), which branching heuristics score.
    `patches`: with `rows`, start a conv node's sweep from patches (see `CrownOptions.patches`).
    `extra` maps upstream node names to (lA, uA) [B, K, *S_node] added to what reaches them: the
    sweep then bounds `lA . v_start + sum extra . v_node` (output constraints, output_constraints.py).
    Returns (lower, upper), each [B, K] or None.
    """
    with layout.sweep(start) as sweep, tag("A-matrices"):
        return _backward_sweep(graph, start, lA, uA, bounds, layout, sweep, alphas, rows, betas, record, patches,
                               extra)


def _step(node, lA, uA, input_bounds, alpha, beta=None, params=None):
    """One op's backward rule, with the parameters its style handed out for this step. An affine
    op maps lower and upper A-matrices the same way, so when both sides carry the same matrix
    it is pushed through once and shared."""
    kwargs = weight_kwargs(node.op, params)
    if isinstance(lA, Patches) or isinstance(uA, Patches):
        result = None
        if alpha is None and beta is None:
            result = node.op.backward_patches(lA, uA, input_bounds, **kwargs)
        elif getattr(node.op, "patches_slopes", False):      # slopes / splits windowed per row
            result = node.op.backward_patches(lA, uA, input_bounds, alpha=alpha, beta=beta, **kwargs)
        if result is not None:
            return result
        shared = lA is uA
        lA = dense(lA)
        uA = lA if shared else dense(uA)
    if beta is not None:
        kwargs["beta"] = beta
    if lA is uA and lA is not None and node.op.is_affine:
        result = node.op.backward(lA, None, input_bounds, alpha=alpha, **kwargs)
        result.input_A = [(a, a) for a, _ in result.input_A]
        result.ubias = result.lbias
        return result
    if alpha is None and beta is None and node.op.needs_input_bounds and node.op.caps.elementwise:
        # A relaxation step's A-sized temporaries, a piece of the rows at a time.
        return in_row_pieces(lambda l, u: node.op.backward(l, u, input_bounds, **kwargs), lA, uA)
    return node.op.backward(lA, uA, input_bounds, alpha=alpha, **kwargs)


def _place_inputs(graph, node, result, sweep):
    """Lay out a step's input A-matrices as their nodes expect, keeping a shared pair shared."""
    placed = []
    for name, (in_lA, in_uA) in zip(node.inputs, result.input_A):
        target = graph[name]
        shared = in_lA is in_uA
        in_lA, in_uA = patches_or_dense(in_lA, in_uA, target, sweep)
        in_lA = None if in_lA is None else sweep.place_A(in_lA, target)
        in_uA = in_lA if shared else (None if in_uA is None else sweep.place_A(in_uA, target))
        placed.append((in_lA, in_uA))
    result.input_A = placed
    return result


def _placed_step(graph, node, lA, uA, input_bounds, alpha, sweep, weights, beta=None):
    """`node`'s backward rule with its input A-matrices laid out, run by its StepWeights (which
    may run it on slices of the rows, as tp does so that no full-size Partial A-matrix exists at
    once, or on one weight shard at a time, as spec does); the rule never sees the difference."""
    def step(part_lA, part_uA, params):
        return _place_inputs(graph, node, _step(node, part_lA, part_uA, input_bounds, alpha, beta, params), sweep)

    return weights.backward(step, lA, uA)


def _first_step(graph, node, rows, bounds, sweep, patches=False):
    """The backward step out of `node` for the one-hot rows `rows`: the op's direct rule
    (a Linear layer's rows of W and b) where it has one, else the generic rule on one-hot A."""
    box = bounds[graph.input_name]
    batch = box[0].shape[0]
    with sweep.weights(node) as weights:
        result = weights.rows(rows, batch)
        if result is not None:
            return _place_inputs(graph, node, result, sweep)
        relabelled = reshape_rows_patches(graph, node, rows, batch, box[0], sweep) if patches else None
        if relabelled is not None:
            return _place_inputs(graph, node, relabelled, sweep)
        if patches and starts_patches(node, sweep):
            A = Patches.identity(rows, node.shape, batch, box[0].dtype, box[0].device)
        else:
            A = sweep.place_A(identity_rows(rows, node.shape, batch, box[0].dtype, box[0].device), node)
        input_bounds = [sweep.place_bounds(bounds.get(i), graph[i]) for i in node.inputs]
        return _placed_step(graph, node, A, A, input_bounds, None, sweep, weights)


def _place_slopes(alpha, node, sweep):
    """Slopes as stored (`[2, ...]` or a pair with None entries) laid out for this sweep."""
    if isinstance(alpha, (tuple, list)):
        return tuple(None if a is None else sweep.place_alpha(a, node) for a in alpha)
    return sweep.place_alpha(alpha, node)


def _place_split(beta, node, sweep):
    """Split constraints (multipliers [B, K, *S], signs [B, *S]) laid out like slopes / bounds."""
    multipliers, signs = beta
    # A ReLU's neurons are sharded (tp) exactly when its input's are: signs go like its bounds.
    signs, = sweep.place_bounds((signs,), node)
    return sweep.place_alpha(multipliers, node), signs


def _backward_sweep(graph, start, lA, uA, bounds, layout, sweep, alphas, rows=None, betas=None, record=None,
                    patches=False, extra=None):
    # The starting A-matrices laid out as the start node's style expects (a shared pair stays shared).
    shared = lA is uA
    lA = None if lA is None else sweep.place_A(lA, graph[start])
    uA = lA if shared else (None if uA is None else sweep.place_A(uA, graph[start]))
    pending = {start: (lA, uA)}
    lbias = ubias = 0.0
    ancestors = graph.ancestors(start)
    for name, (e_lA, e_uA) in (extra or {}).items():
        assert name in ancestors and name != start, f"extra A-matrix for {name}: not upstream of {start}"
        pending[name] = tuple(None if a is None else sweep.place_A(a, graph[name]) for a in (e_lA, e_uA))
    for node in reversed(graph.nodes):
        if node.name not in pending or node.op is None:
            continue
        deadline.check_fine()           # one sweep of a wide node can take a while
        node_lA, node_uA = pending.pop(node.name)
        if rows is not None and node.name == start:
            result = _first_step(graph, node, rows, bounds, sweep, patches)
        else:
            alpha = beta = None
            if alphas is not None and node.name in alphas:
                alpha = _place_slopes(alphas[node.name], node, sweep)
            if betas is not None and node.name in betas:
                beta = _place_split(betas[node.name], node, sweep)
            if record is not None and node.op.needs_input_bounds and node_lA is not None:
                record[node.name] = layout.local(dense(node_lA)).detach()
            input_bounds = [sweep.place_bounds(bounds.get(i), graph[i]) for i in node.inputs]
            with sweep.weights(node) as weights:
                result = _placed_step(graph, node, node_lA, node_uA, input_bounds, alpha, sweep, weights, beta)
        del node_lA, node_uA
        step_lbias = layout.local(result.lbias)
        step_ubias = step_lbias if result.ubias is result.lbias else layout.local(result.ubias)
        lbias, ubias = lbias + step_lbias, ubias + step_ubias
        _accumulate(pending, node.inputs, result.input_A)
        # Drop the step's A-matrices now: kept until the next step they would add to its memory.
        del result
    assert set(pending) <= {graph.input_name} and ancestors, "backward sweep left unvisited nodes"
    in_lA, in_uA = pending.pop(graph.input_name, (None, None))
    if record is not None and in_lA is not None:
        record[graph.input_name] = layout.local(dense(in_lA)).detach()
    # The layout may keep A w.r.t. the input sharded (tp): the box is laid out to match and only
    # the [B, K] results are made local.
    box = sweep.place_bounds(bounds[graph.input_name], graph[graph.input_name])
    want_lower, want_upper = (True, True) if rows is not None else (lA is not None, uA is not None)
    if isinstance(in_lA, Patches) or isinstance(in_uA, Patches):
        lower, upper = concretize_patches_pair(in_lA, in_uA, box)
    else:
        lower, upper = _concretize_dense(in_lA, in_uA, box)
    if want_lower:
        lower = layout.local(lbias) if lower is None else layout.local(lower) + lbias
    if want_upper:
        upper = layout.local(ubias) if upper is None else layout.local(upper) + ubias
    return lower, upper


def _concretize_dense(in_lA, in_uA, box):
    """(lower, upper) of dense input A-matrices (each None when absent)."""
    lower = upper = None
    if in_lA is not None and in_lA is in_uA:
        lower, upper = concretize_both(in_lA, box)
    else:
        if in_lA is not None:
            lower = concretize(in_lA, box, upper=False)
        if in_uA is not None:
            upper = concretize(in_uA, box, upper=True)
    return lower, upper


def _accumulate(pending, names, input_A):
    """Add a step's input A-matrices to those already pending for each input (branches meet)."""
    for name, (in_lA, in_uA) in zip(names, input_A):
        old_lA, old_uA = pending.get(name, (None, None))
        merged_lA = add_A(old_lA, in_lA)
        merged_uA = merged_lA if (in_lA is in_uA and old_lA is old_uA) else add_A(old_uA, in_uA)
        pending[name] = (merged_lA, merged_uA)


def identity_rows(rows: torch.Tensor, shape, batch: int, dtype, device) -> torch.Tensor:
    """One-hot A-matrix [B, k, *shape] selecting the flattened neurons `rows`."""
    numel = 1
    for s in shape:
        numel *= s
    eye = torch.zeros(len(rows), numel, dtype=dtype, device=device)
    eye[torch.arange(len(rows), device=device), rows] = 1.0
    return eye.reshape(1, len(rows), *shape).expand(batch, *([-1] * (1 + len(shape))))


def node_bound_rows(graph, name, rows, bounds, layout, opts: CrownOptions, batch, alphas_for=None):
    """CROWN bounds of the flattened neurons `rows` of node `name`, in chunks of `opts.max_rows`
    (None: in one process, what this process's share of the device holds, `crown_max_rows`).

    Each rank computes only its `layout.rows(...).mine` of the rows (spec sharding); the result
    is gathered to every rank. Returns (lower, upper) of shape [B, len(rows)].
    """
    box = bounds[graph.input_name]
    n = len(rows)
    split = layout.rows(name, n)
    local_rows = rows[split.mine]
    most = split.most
    max_rows = opts.max_rows
    if max_rows is None and layout.world_size == 1:
        # A caller that did not size its rows gets this process's share of the device: branch and
        # bound's layers bounded again behind general splits swept all 14,739 rows of a ViT
        # softmax difference node for 48 trial children at once (38.85 GiB asked of a shared H100).
        max_rows = crown_max_rows(graph, batch, box[0].device)
    # Under a deadline on a CPU, shorter sweeps (so its checks come often; deadline.sweep_rows).
    cap = deadline.sweep_rows(max((nd.numel for nd in graph.nodes), default=1), batch, box[0].device)
    chunk = sweep_chunk(max_rows if cap is None else min(cap, max_rows or cap), most, n)
    lows, ups = [], []
    # Every rank runs the same number of sweeps (FSDP gathers are collectives), even with no rows.
    for start in range(0, most, chunk):
        deadline.check()                # every rank runs the same chunks
        part = local_rows[start:start + chunk]
        alphas = alphas_for(start, start + len(part)) if alphas_for else None
        lo, up = backward_bound(graph, name, None, None, bounds, layout, alphas, rows=part,
                                patches=opts.patches)
        lows.append(lo)
        ups.append(up)
    if lows:
        lo, up = torch.cat(lows, 1), torch.cat(ups, 1)
    else:
        lo = up = box[0].new_zeros(batch, 0)
    diff = alphas_for is not None
    return split.gather(lo, differentiable=diff), split.gather(up, differentiable=diff)


def agreed_max_rows(graph, batch: int, device, layout: Layout) -> int | None:
    """`crown_max_rows`, the same on every rank that shares the sweeps (each asks its own device's
    free memory; a different number of chunks would unpair FSDP's gathers)."""
    most = crown_max_rows(graph, batch, device)
    return most if most is None or layout.world_size == 1 else layout.smallest(most)


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
    if opts.max_rows is None:
        # Sized to this process's part of the device (a GPU shared by benchmark processes): all
        # rows of a wide layer at once asked an H100 for 29 GiB (ml4acopf's 300-bus networks).
        opts = dataclasses.replace(opts, max_rows=agreed_max_rows(graph, batch, box[0].device, layout))
    bounds = {graph.input_name: box}
    preactivation = set(graph.preactivation_nodes())
    rows_by_node = {}
    ratios = ratio_sites(graph, layout, box[0])     # averages by normalised weights (ratio_bounds.py)
    for node in graph.nodes:
        if node.op is None:
            continue
        ref_lo, ref_up = ibp_step(node, bounds, layout)
        name = node.name
        if name in ratios:
            bounds[name] = (ref_lo, ref_up)
            ref_lo, ref_up = tighten_ratio(graph, ratios[name], bounds, layout, backward_bound)
        if name not in preactivation or graph.affine_from_input(name):
            bounds[name] = (ref_lo, ref_up)   # one affine op from the input: IBP is exact
            continue
        deadline.check()                # each node's CROWN pass (24 wide ones on a ViT)
        rows = rows_to_bound(ref_lo, ref_up, opts, all_rows=_feeds_general_op(graph, name))
        rows_by_node[name] = rows
        lo, up = best_of_shifts(graph, name, lambda: node_bound_rows(graph, name, rows, bounds, layout, opts, batch))
        bounds[name] = scatter_rows(ref_lo, ref_up, rows, lo, up, opts.intersect_ibp)
    return bounds, rows_by_node


def output_bound(graph, bounds, C, layout: Layout = DEFAULT_LAYOUT, alphas=None, want_lower=True,
                 want_upper=True, gather=True, betas=None, record=None):
    """CROWN bounds of `C f(x)` given intermediate bounds; C: [B, K, n_out]. Spec rows are split
    over ranks by the layout (a no-op on one process); `gather=False` returns this rank's rows.
    `betas` / `record`: see `backward_bound`."""
    out = graph.output
    batch, n_rows = C.shape[:2]
    split = layout.rows(graph.output_name, n_rows)
    A = C[:, split.mine]
    A = A.reshape(batch, A.shape[1], *out.shape)
    lo, up = backward_bound(graph, graph.output_name, A if want_lower else None, A if want_upper else None,
                            bounds, layout, alphas, betas=betas, record=record)
    if not gather:
        return lo, up
    return tuple(None if t is None else split.gather(t) for t in (lo, up))


def crown(graph, box, C=None, layout: Layout = DEFAULT_LAYOUT, opts: CrownOptions | None = None,
          want_lower=True, want_upper=True):
    """CROWN bounds of C f(x) over the box. Returns (lower, upper, intermediate bounds)."""
    opts = opts or CrownOptions()
    if C is None and opts.patches and identity_output_as_rows(graph):
        return _every_output_as_rows(graph, box, layout, opts, want_lower, want_upper)
    if C is None:
        C = default_spec(graph, box[0].shape[0], box[0].dtype, box[0].device)
    with torch.no_grad():
        bounds, _ = intermediate_bounds(graph, box, layout, opts)
        lo, up = best_of_shifts(graph, graph.output_name, lambda: output_bound(
            graph, bounds, C, layout, want_lower=want_lower, want_upper=want_upper))
        if (opts or CrownOptions()).intersect_ibp:
            lo, up = tighter_than_ibp(graph, bounds, C, lo, up)
    return lo, up, bounds


def _every_output_as_rows(graph, box, layout, opts, want_lower, want_upper):
    """CROWN without a spec on a flattened conv map (TinyYOLO): each output neuron a row started
    as patches (`sweep_patches.reshape_rows_patches`), instead of a dense identity spec over them."""
    with torch.no_grad():
        bounds, _ = intermediate_bounds(graph, box, layout, opts)
        rows = torch.arange(graph.output.numel, device=box[0].device)
        lo, up = node_bound_rows(graph, graph.output_name, rows, bounds, layout, opts, box[0].shape[0])
        if opts.intersect_ibp:
            ilo, iup = (t.flatten(1) for t in bounds[graph.output_name])
            lo, up = torch.maximum(lo, ilo), torch.minimum(up, iup)
    return (lo if want_lower else None), (up if want_upper else None), bounds
