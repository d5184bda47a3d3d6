"""Where a CROWN sweep keeps conv A-matrices as patches (`ops/patches.py`) and where it goes dense.

A sweep out of a conv-like node ([C, H, W], an op with a patches rule) starts from 1x1 windows;
an A-matrix stays patches while it is smaller than dense and the node's neurons are not sharded
by the placement (tp), and is concretised over the input box as patches.
"""
from __future__ import annotations

from ..ops.base import BoundOp
from ..ops.patches import Patches, concretize_patches, dense


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
