"""Which neurons of a node get a CROWN sweep, and writing their bounds back into the node's box.

Split from `methods/crown.py` (one concern: row selection and scatter); `crown` re-exports the names.
"""
from __future__ import annotations

import torch


def _feeds_general_op(graph, name) -> bool:
    """True when `name` feeds a nonlinear op other than ReLU: its bounds matter for every neuron,
    not only for those that cross 0."""
    ops = [graph[c].op for c in graph.consumers[name]]
    return any(op.needs_input_bounds and not getattr(op, "exact_when_sign_known", False) for op in ops)


def rows_to_bound(lower, upper, opts, all_rows: bool = False) -> torch.Tensor:
    """Flattened neuron indices that need a backward sweep (unstable under the given bounds)."""
    lo, up = lower.flatten(1), upper.flatten(1)
    # A neuron with a zero-width box in every box of the batch (a function of fixed inputs only:
    # nn4sys mscn's set elements and masks) is known exactly: no sweep can tighten it.
    moving = (lo != up).any(0) if lo.shape[0] else torch.ones(lo.shape[1], dtype=torch.bool, device=lo.device)
    if not opts.skip_stable or all_rows:
        return moving.nonzero().flatten()
    unstable = ((lo < 0) & (up > 0)).any(0)
    return (unstable & moving).nonzero().flatten()


class _TighterOf(torch.autograd.Function):
    """max (lower side) or min (upper side) of a bound being optimised and a reference bound. The
    value is exactly the tighter one; the gradient goes whole to the optimised bound. (With
    `torch.maximum` a tie splits it in half and a 1-ulp win of the reference zeroes it, so the
    slopes' Adam steps would hinge on rounding: on the first alpha iteration the optimised bound
    *is* the CROWN reference, up to the order of a sum.)"""

    @staticmethod
    def forward(ctx, new, ref, upper: bool):
        return torch.minimum(new, ref) if upper else torch.maximum(new, ref)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def scatter_rows(full_lower, full_upper, rows, lo, up, intersect: bool):
    """Write row bounds into copies of the (IBP) bounds of the whole node."""
    shape = full_lower.shape
    fl, fu = full_lower.flatten(1), full_upper.flatten(1)
    if intersect:
        lo = _TighterOf.apply(lo, fl[:, rows], False)
        up = _TighterOf.apply(up, fu[:, rows], True)
    fl2 = fl.index_copy(1, rows, lo)
    fu2 = fu.index_copy(1, rows, up)
    # A neuron fixed in this box keeps its exact (IBP) value, whether or not another box of the
    # batch had it swept: a box's bounds do not depend on the rest of its batch.
    fixed = fl == fu
    fl2 = torch.where(fixed, fl, fl2)
    fu2 = torch.where(fixed, fu, fu2)
    return fl2.reshape(shape), fu2.reshape(shape)
