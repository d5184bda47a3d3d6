"""ReLU with the CROWN / alpha-CROWN linear relaxation.

For a neuron with pre-activation bounds l < 0 < u (unstable) the upper line is
u/(u-l) * (x - l); the lower line has slope alpha in [0, 1]. CROWN picks alpha adaptively
(1 if u > -l else 0); alpha-CROWN passes optimised slopes. Stable neurons are exact.

beta-CROWN's split constraints enter here too: a domain of branch and bound that fixes neuron j
to `z_j >= 0` or `z_j <= 0` passes `beta` = (multipliers >= 0, signs). The Lagrangian term
`beta_j * sign_j * z_j` (sign +1 for `z <= 0`, -1 for `z >= 0`; both constraints read
`sign_j * z_j <= 0`) is added to the lower A-matrix on the ReLU's input and subtracted from the
upper one, so every bound stays valid on the inputs that satisfy the splits.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

from .base import BackwardResult, BoundOp, Capabilities, per_row_sum
from . import patches_relu
from .row_pieces import windowed_elementwise
from .windowed_slopes import windowed_with_slopes


def relaxation(lower: torch.Tensor, upper: torch.Tensor):
    """Upper slope/intercept, adaptive lower slope and the unstable mask, each shaped like the bounds."""
    active = lower >= 0
    unstable = (lower < 0) & (upper > 0)
    denom = (upper - lower).clamp(min=1e-12)
    up_slope = torch.where(unstable, upper / denom, active.to(lower.dtype))
    up_intercept = torch.where(unstable, -lower * upper / denom, torch.zeros_like(lower))
    adaptive = torch.where(unstable, (upper > -lower).to(lower.dtype), active.to(lower.dtype))
    return up_slope, up_intercept, adaptive, unstable, active


# Per-node constants of the relaxation, memoised while the intermediate bounds stay fixed (beta-CROWN's
# steps: one sweep per step over the same bounds). A stack of memos per thread; empty: nothing is memoised.
_LOCAL = threading.local()
_MEMO_ENTRIES = 64                      # a memo holding more is cleared (new bound tensors each sweep)


@contextmanager
def fixed_bounds_memo():
    """Inside: `ReluOp.backward` computes its relaxation once per (lower, upper) pair of tensors and
    reuses it while neither changed (the same objects, the same in-place version, no gradient)."""
    memos = _memos()
    memos.append({})
    try:
        yield
    finally:
        memos.pop()


def _memos() -> list:
    if not hasattr(_LOCAL, "memos"):
        _LOCAL.memos = []
    return _LOCAL.memos


def _step_constants(lower: torch.Tensor, upper: torch.Tensor):
    """The relaxation laid out for the A-matrices' row dim K: (up_slope, up_intercept, adaptive,
    unstable, active, active as the bounds' dtype), each [B, 1, *S]."""
    up_slope, up_intercept, adaptive, unstable, active = relaxation(lower, upper)
    active = active.unsqueeze(1)
    return (up_slope.unsqueeze(1), up_intercept.unsqueeze(1), adaptive.unsqueeze(1), unstable.unsqueeze(1),
            active, active.to(lower.dtype))


def step_constants(lower: torch.Tensor, upper: torch.Tensor, owner=None):
    """`_step_constants`, memoised inside `fixed_bounds_memo` (bounds that need no gradient only).
    `owner` (the op): one entry per op, replaced when its bounds change, so the memo holds at most
    one relaxation per node however many different bounds pass (windows, placed copies)."""
    memos = _memos()
    if not memos or lower.requires_grad or upper.requires_grad:
        return _step_constants(lower, upper)
    memo = memos[-1]
    key = id(owner) if owner is not None else (id(lower), id(upper))
    hit = memo.get(key)
    # The entry holds the tensors themselves, so their ids cannot be reused while it is kept.
    if hit is not None and hit[0] is lower and hit[1] is upper and hit[2] == (lower._version, upper._version):
        return hit[3]
    if hit is None and len(memo) >= _MEMO_ENTRIES:
        memo.clear()
    out = _step_constants(lower, upper)
    memo[key] = (lower, upper, (lower._version, upper._version), out)
    return out


class ReluOp(BoundOp):
    kind = "relu"
    caps = Capabilities(elementwise=True)
    needs_input_bounds = True
    is_affine = False
    has_alpha = True
    # Its relaxation is exact on a neuron whose sign is known: only unstable inputs need CROWN.
    exact_when_sign_known = True
    # Branch and bound may split its neurons (beta-CROWN).
    splittable = True

    def init_alpha(self, lower, upper):
        """CROWN's adaptive lower slopes, [2 (lA, uA sides), B, *S]."""
        adaptive = relaxation(lower, upper)[2]
        return adaptive.unsqueeze(0).expand(2, *adaptive.shape)

    def forward(self, x):
        return torch.relu(x)

    def ibp(self, interval):
        lo, hi = interval
        return lo.clamp(min=0), hi.clamp(min=0)

    # backward_patches takes slopes and splits too (the sweep passes them only to such ops).
    patches_slopes = True

    def backward_patches(self, lA, uA, input_bounds, params=None, alpha=None, beta=None):
        """The step on each row's window of the bounds (and of its slopes / splits, if any)."""
        if alpha is None and beta is None:
            if type(self).backward is ReluOp.backward and patches_relu.applies(lA, uA, *input_bounds[0]):
                up_slope, up_intercept, adaptive, _, _ = relaxation(*input_bounds[0])   # once per node
                return patches_relu.relu_patches_step(lA, uA, adaptive, up_slope, up_intercept)
            return windowed_elementwise(self, lA, uA, input_bounds)
        return windowed_with_slopes(self, lA, uA, input_bounds, alpha, beta)

    def backward(self, lA, uA, input_bounds, alpha=None, beta=None):
        """`alpha` (optional): a pair of lower slopes (for lA, for uA), each `[B, K, *S]`, already
        in [0, 1]; they are used for unstable neurons only. `beta` (optional): (multipliers
        `[B, K, *S]` >= 0, signs `[B, *S]` in {-1, 0, +1}) of the split constraints."""
        # Bounds are [B, *S]; the A-matrices carry the extra row dim K.
        up_slope, up_intercept, adaptive, unstable, active, active_f = step_constants(*input_bounds[0], owner=self)

        def lower_slope(which):
            if alpha is None or alpha[which] is None:
                return adaptive
            return torch.where(unstable, alpha[which], _as(active, active_f, alpha[which].dtype))

        def optimised(which):
            return alpha is not None and alpha[which] is not None and alpha[which].requires_grad \
                and torch.is_grad_enabled()

        def side(A, which):
            """(new A, bias) of one side: which = 0 for lA (lower bound), 1 for uA (upper)."""
            if A is None:
                return None, 0.0
            if optimised(which):
                # Autograd keeps A and the slopes only (see AlphaRelaxedA); the bias as before.
                on_upper = A.clamp(max=0) if which == 0 else A.clamp(min=0)
                new_A = AlphaRelaxedA.apply(A, alpha[which], unstable, _as(active, active_f, alpha[which].dtype),
                                            up_slope, which == 0)
                return new_A, per_row_sum(on_upper * up_intercept)
            return lean_side(A, which == 0, lower_slope(which), up_slope, up_intercept)

        (new_lA, lbias), (new_uA, ubias) = side(lA, 0), side(uA, 1)
        if beta is not None:
            new_lA, new_uA = add_split_terms(new_lA, new_uA, *beta)
        return BackwardResult([(new_lA, new_uA)], lbias, ubias)


def _as(active, active_f, dtype):
    """The active mask as `dtype` (the memoised copy when the dtypes agree)."""
    return active_f if active_f.dtype == dtype else active.to(dtype)


def lean_side(A, lower_side: bool, slope, up_slope, up_intercept):
    """One side's (new A, bias) without autograd, with at most one A-sized temporary next to
    the result: A+ s + A- u (lower side; A- s + A+ u upper) is A * where(A takes s, s, u),
    built as the `where` and multiplied by A in place; the bias, (A- or A+) . intercept, is a
    matmul of the clamped A (freed before the `where`). One term of the two-term form is
    exactly 0 at every entry, so the values are those of the two-term form."""
    bias = _row_dot(A.clamp(max=0) if lower_side else A.clamp(min=0), up_intercept)
    takes_slope = A >= 0 if lower_side else A <= 0
    new_A = torch.where(takes_slope, slope, up_slope)
    del takes_slope
    if torch.is_grad_enabled() and (A.requires_grad or new_A.requires_grad):
        return new_A * A, bias          # autograd needs the `where` (beta-CROWN's split terms)
    return new_A.mul_(A), bias


def _row_dot(A, t):
    """per_row_sum(A * t) for A [B, K, *S] and t [B or 1, 1, *S], without an A-sized product."""
    if A.dim() <= 2:
        return per_row_sum(A * t)
    flat = A.flatten(2)
    vec = t.expand(A.shape[0], 1, *A.shape[2:]).flatten(2).transpose(1, 2)
    return flat.matmul(vec).squeeze(-1)


def add_split_terms(lA, uA, multipliers, signs):
    """A-matrices on the split neurons' pre-activations, with `beta * sign` added (lower side) or
    subtracted (upper side): for x meeting `sign * z <= 0`, `lA . z + beta sign z <= lA . z`."""
    term = multipliers * signs.unsqueeze(1)
    return (None if lA is None else lA + term), (None if uA is None else uA - term)


class AlphaRelaxedA(torch.autograd.Function):
    """One side of the relaxed ReLU step with optimised slopes, A -> A+ s + A- u (lower side) or
    A- s + A+ u (upper side), s = alpha on unstable neurons (0/1 on stable ones), u = upper slope.

    Same values as the plain expression in `ReluOp.backward`, but autograd keeps only A and the
    slopes: the plain expression keeps about three A-sized tensors per step (A+, the masked
    slopes, A), which are most of alpha-CROWN's memory on wide layers. The rest is recomputed.
    """

    @staticmethod
    def forward(ctx, A, alpha, unstable, active, up_slope, alpha_on_positive: bool):
        # (`active`: a mask, bool or already alpha's dtype; `.to` then returns it as it is.)
        slope = torch.where(unstable, alpha, active.to(alpha.dtype))
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        out = pos * slope + neg * up_slope if alpha_on_positive else neg * slope + pos * up_slope
        ctx.save_for_backward(A, alpha, unstable, active, up_slope)
        ctx.alpha_on_positive = alpha_on_positive
        return out

    @staticmethod
    def backward(ctx, grad):
        A, alpha, unstable, active, up_slope = ctx.saved_tensors
        slope = torch.where(unstable, alpha, active.to(alpha.dtype))
        # clamp's gradient passes where min <= x <= max, so both halves see x = 0.
        alpha_side = A >= 0 if ctx.alpha_on_positive else A <= 0
        grad_A = grad_alpha = None
        if ctx.needs_input_grad[0]:
            upper_side = A <= 0 if ctx.alpha_on_positive else A >= 0
            grad_A = torch.where(alpha_side, grad * slope, 0.0) + torch.where(upper_side, grad * up_slope, 0.0)
        if ctx.needs_input_grad[1]:
            part = A.clamp(min=0) if ctx.alpha_on_positive else A.clamp(max=0)
            grad_alpha = torch.where(unstable, grad * part, 0.0)
            if grad_alpha.shape != alpha.shape:
                grad_alpha = grad_alpha.sum_to_size(alpha.shape)
        return grad_A, grad_alpha, None, None, None, None
