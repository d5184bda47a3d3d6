"""Where a CROWN sweep keeps conv A-matrices as patches (`ops/patches.py`) and where it goes dense.

A sweep out of a conv-like node ([C, H, W], an op with a patches rule) starts from 1x1 windows;
an A-matrix stays patches while it is smaller than dense and the node's neurons are not sharded
by the placement (tp), and is concretised over the input box as patches.
"""
from __future__ import annotations

from ..ops.base import BackwardResult, BoundOp
from ..ops.patches import Patches, dense
from ..ops.row_pieces import concretize_patches
from ..ops.reshape import ReshapeOp


def patches_or_dense(lA, uA, node, sweep):
    """Keep patches where they are smaller than dense and the node's neurons are not sharded."""
    if not isinstance(lA, Patches) and not isinstance(uA, Patches):
        return lA, uA
    ref = lA if lA is not None else uA
    ctx = getattr(sweep, "ctx", None)
    sharded = ctx is not None and getattr(ctx.zone(node), "shards_neurons", False)
    if not (sharded or ref.smaller_as_dense()):
        return lA, uA
    shared = lA is uA
    lA = dense(lA)
    return lA, (lA if shared else dense(uA))


def starts_patches(node, sweep) -> bool:
    """Does a sweep out of `node`'s neurons start from patches (a conv-like op on [C, H, W])?"""
    if type(node.op).backward_patches is BoundOp.backward_patches or len(node.shape) != 3:
        return False
    ctx = getattr(sweep, "ctx", None)
    return node.shape[1] * node.shape[2] > 1 and not (
        ctx is not None and getattr(ctx.zone(node), "shards_neurons", False))


def concretize_patches_pair(in_lA, in_uA, box):
    """(lower, upper) over the box of the input A-matrices given as patches (each None when absent)."""
    lower = None if in_lA is None else concretize_patches(in_lA, box)[0]
    upper = None if in_uA is None else concretize_patches(in_uA, box)[1]
    return lower, upper


def _flattens_feature_map(node) -> bool:
    """A reshape of a [C, H, W] feature map (H * W > 1): flat index i is input neuron i."""
    if not isinstance(node.op, ReshapeOp) or len(node.op.in_shapes) != 1:
        return False
    shape = tuple(node.op.in_shapes[0])
    return len(shape) == 3 and shape[1] * shape[2] > 1


def reshape_rows_patches(graph, node, rows, batch, like, sweep):
    """The first step out of a reshape of a feature map for one-hot `rows`: the same rows of its
    input as 1x1 patches (a reshape only relabels neurons). None where that does not apply."""
    if not _flattens_feature_map(node):
        return None
    target = graph[node.inputs[0]]
    ctx = getattr(sweep, "ctx", None)
    if ctx is not None and getattr(ctx.zone(target), "shards_neurons", False):
        return None
    P = Patches.identity(rows, tuple(node.op.in_shapes[0]), batch, like.dtype, like.device)
    return BackwardResult([(P, P)])


def identity_output_as_rows(graph) -> bool:
    """Bound every output as a row of its own (CROWN without a spec) starting from patches?"""
    return _flattens_feature_map(graph.output)
