"""Known sums over a group of entries as a bound rule: softmax's outputs sum to 1, LayerNorm's
normalised values to 0 (ops/decompose.py and ops/layernorm.py append the marker ops below).

`softmax_sum_one(y, dim)` is the identity. Its box rule uses what every softmax output satisfies,
y_i in [0, 1] and sum_i y_i = 1 over `dim`:

    lower_i' = max(lower_i, 1 - sum_{j != i} upper_j),   upper_i' = min(upper_i, 1 - sum_{j != i} lower_j)

(each output's own CROWN bounds know nothing of the others'). It asks for its input's bounds
(`needs_input_bounds`), so the refinement starts from CROWN bounds of the softmax, and the box it
gives is what the next nonlinear op (attention's MatMul) reads. Float rounding: the identity holds
to a few ulps in floating point, so the refinement gives up `n * 8 * eps` (a sound margin for any
n entries summed in the working dtype).

CROWN step (`GroupShiftOp.backward`): a row `A . y` is written `(A - lam) . y + lam * total` per
group (exact, since the entries sum to `total`), less a rounding margin. Any `lam` is sound; CROWN
takes the median `m` of the row's coefficients weighted by the entries' widths (it minimises
`sum_j |A_j - lam| width_j`, the relaxation error that the later nonlinear steps multiply).
The shift is a parameter of alpha-/beta-CROWN (`has_alpha`): one gate `g` in [0, 1] per row, group
and side, `lam = g * m`, starting at g = 1 (the median); g = 0 is the plain identity step, so both
are points of the family. `best_of_shifts` (CROWN) and `best_of_gates` (beta-CROWN's start) keep
the tighter of the shifted and the plain bound per row. With `OPTIMISE_SHIFT` the gates are
optimised with the slopes, by sign steps (`SHIFT_RULE`, methods/sign_steps.py: a per-gate
bisection towards the kink) or by Adam; by default they stay where they start during the
iterations, and alpha-CROWN ends with a line search over one gate per row on the output sweep
(`search_gates`, `SEARCH_SHIFT`): for fixed slopes a row's bound is concave in that gate, the best
bound seen is kept, so it is never looser than the held gates (docs/SOFTMAX.md). A free position
`lam = m + s`, also tried, made alpha-CROWN looser still: the bound is concave and piecewise
linear in lam with its kinks at the coefficients, so Adam's fixed-size steps oscillate around the
optimum.
"""
from __future__ import annotations

import math
import time

import torch

from .. import deadline
from .base import BackwardResult, BoundOp, Capabilities, per_row_sum
from .registry import register

# True: alpha-CROWN / beta-CROWN optimise the shift's gates during their iterations (SHIFT_RULE).
# False (the default): the gates stay where they start (1 in alpha-CROWN: the weighted median; per
# row the better of shifted and plain at beta-CROWN's start), and alpha-CROWN ends with a line
# search over them (SEARCH_SHIFT). Measured (docs/SOFTMAX.md; scripts/bench_softmax.py), ViT
# pgd_2_3_16, 10 iterations, mean width: held 1.35677, Adam 1.389 (an earlier run), sign steps
# 1.35683, held + the line search 1.34217.
OPTIMISE_SHIFT = False
# How optimised gates move: "sign" (methods/sign_steps.py: per-gate steps of at most GATE_STEP,
# halved when the gradient's sign turns, i.e. a bisection towards the kink) or "adam" (with the
# slopes' learning rate: the first scheme measured).
SHIFT_RULE = "sign"
GATE_STEP = 0.5


def split_gates(graph, named, lr: float):
    """(gates, others, gate_lr, rule) of `named` ((node name, parameter) pairs): the group-shift
    ops' gates apart when they are optimised (OPTIMISE_SHIFT), with their step size and rule."""
    if not OPTIMISE_SHIFT:
        return [], [p for _, p in named], lr, "adam"
    gates = [p for r, p in named if isinstance(graph[r].op, GroupShiftOp)]
    others = [p for r, p in named if not isinstance(graph[r].op, GroupShiftOp)]
    return gates, others, (GATE_STEP if SHIFT_RULE == "sign" else lr), SHIFT_RULE


def softmax_sum_one(y, dim: int):
    """The identity (a marker: `y` is a softmax over `dim`)."""
    return y


def group_box(lower, upper, dims: tuple, total: float, vmin: float, vmax: float, scale: float = 1.0):
    """[lower, upper] of entries in [vmin, vmax] summing to `total` over `dims`, tightened."""
    lo, up = lower.clamp(vmin, vmax), upper.clamp(vmin, vmax)
    n = math.prod(lo.shape[d] for d in dims)
    slack = n * 8 * torch.finfo(lo.dtype).eps * scale
    lo_new = total - (up.sum(dims, keepdim=True) - up) - slack
    up_new = total - (lo.sum(dims, keepdim=True) - lo) + slack
    lo_out, up_out = torch.maximum(lo, lo_new), torch.minimum(up, up_new)
    return lo_out, torch.maximum(up_out, lo_out)


def sum_one_box(lower, upper, dim: int):
    """The box [lower, upper] of a softmax over `dim`, tightened by y in [0, 1] and sum y = 1."""
    return group_box(lower, upper, (dim,), 1.0, 0.0, 1.0)


def grouped(t, first: int, last: int):
    """`t` with its dims first..last (contiguous) merged into one, at `first`."""
    return t.reshape(*t.shape[:first], -1, *t.shape[last + 1:])


class GroupShiftOp(BoundOp):
    """The identity on a node whose entries over `dims` (contiguous, of the full tensor: batch is
    dim 0) sum to `total` and lie in [vmin, vmax]. Subclasses set the three."""
    kind = "group_shift"
    caps = Capabilities()                 # reads the whole group: not elementwise
    needs_input_bounds = True
    is_affine = False
    n_alpha = 2                           # the gate of the lA side's and of the uA side's shift
    total = 1.0

    def __init__(self, name: str, dims):
        super().__init__(name)
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        self.dims = tuple(sorted(dims))
        self.shift = True            # False: the plain identity step (see `best_of_shifts`)

    # The gates are parameters even when not optimised (OPTIMISE_SHIFT False: held where they
    # start): beta-CROWN's start picks them per row (`best_of_gates`).
    has_alpha = True

    def value_range(self, n: int) -> tuple[float, float]:
        return 0.0, 1.0

    def group_size(self, shape) -> int:
        """Entries per group (`shape`: the full tensor's, batch first)."""
        return math.prod(shape[d] for d in self.dims)

    def forward(self, y):
        return y

    def ibp(self, interval):
        n = self.group_size(interval[0].shape)
        vmin, vmax = self.value_range(n)
        return group_box(interval[0], interval[1], self.dims, self.total, vmin, vmax, max(1.0, vmax))

    def init_alpha(self, lower, upper):
        """Gates 1 (the weighted median), [2, B, *S with each group one entry]."""
        shape = grouped(lower, self.dims[0], self.dims[-1]).shape
        one = lower.new_ones(shape[:self.dims[0]] + (1,) + shape[self.dims[0] + 1:])
        return torch.stack([one, one])

    def backward(self, lA, uA, input_bounds, alpha=None):
        if not self.shift:
            return BackwardResult([(lA, uA)])
        bounds = input_bounds[0] if input_bounds else None
        width = None
        if bounds is not None:
            width = grouped((bounds[1] - bounds[0]).clamp(min=0.0).nan_to_num(0.0, 1.0, 0.0),
                            self.dims[0], self.dims[-1])
        biases, out = [], []
        for side, A in enumerate((lA, uA)):
            gate = None if alpha is None else alpha[side]        # (beta-CROWN: lA side's only)
            new_A, bias = self._shift(A, width, gate, lower=(side == 0))
            out.append(new_A)
            biases.append(bias)
        return BackwardResult([tuple(out)], lbias=biases[0], ubias=biases[1])

    def _shift(self, A, width, gate, lower: bool):
        if A is None:
            return None, 0.0
        first, last = self.dims[0] + 1, self.dims[-1] + 1          # A: the row dim K after the batch
        Ag = grouped(A, first, last)
        n = Ag.shape[first]
        lam = weighted_median(Ag, width, first)
        if gate is not None:
            lam = (gate if OPTIMISE_SHIFT else gate.detach()) * lam
        vmax = max(1.0, abs(self.value_range(n)[0]), abs(self.value_range(n)[1]))
        slack = lam.abs() * (n * 8 * torch.finfo(A.dtype).eps * vmax)
        bias = per_row_sum(lam * self.total - slack) if lower else per_row_sum(lam * self.total + slack)
        return (Ag - lam).reshape(A.shape), bias


class SoftmaxSumOneOp(GroupShiftOp):
    kind = "softmax_sum_one"

    @property
    def dim(self) -> int:
        return self.dims[0]


POWER = 1.0


def weighted_median(A, width, dim: int):
    """Per row and group, the coefficient lam minimising sum_j |A_j - lam| * width_j
    (A: [B, K, *S], group entries on `dim`; width: [B, *S] or None for equal weights)."""
    w = torch.ones_like(A) if width is None else (width ** POWER).unsqueeze(1).expand_as(A)
    a_sorted, order = A.sort(dim)
    cum = w.gather(dim, order).cumsum(dim)
    half = cum.narrow(dim, cum.shape[dim] - 1, 1) / 2
    pick = (cum < half).sum(dim, keepdim=True).clamp(max=A.shape[dim] - 1)
    return a_sorted.gather(dim, pick)


def shift_rows(A, width, dim: int, lower: bool):
    """`A . y` written as `(A - lam) . y + sum lam` (sum_j y_j = 1 in each group): the shifted
    rows and the bias, [B, K], less a rounding margin (|lam| * n * 8 eps per group)."""
    if A is None:
        return None, 0.0
    return SoftmaxSumOneOp("shift_rows", dim)._shift(A, width, None, lower)


def _shift_ops(graph, name: str):
    """The group-shift ops upstream of node `name`."""
    ops = [n for n in graph.nodes if isinstance(n.op, GroupShiftOp)]
    if ops:                                           # (no graph walk on graphs without them)
        ancestors = graph.ancestors(name)
        ops = [n.op for n in ops if n.name in ancestors]
    return ops


def best_of_shifts(graph, name: str, run):
    """`run()` (a CROWN sweep from node `name`, giving (lower, upper)) with the shifted rows, and
    again with the plain identity step where a group-shift op lies upstream of `name`: the tighter
    of the two per neuron (both sound), so the shift never makes a bound looser."""
    ops = _shift_ops(graph, name)
    if not ops:
        return run()
    lo, up = run()
    for op in ops:
        op.shift = False
    try:
        lo0, up0 = run()
    finally:
        for op in ops:
            op.shift = True
    lo = lo0 if lo is None else (lo if lo0 is None else torch.maximum(lo, lo0))
    up = up0 if up is None else (up if up0 is None else torch.minimum(up, up0))
    return lo, up


def best_of_gates(graph, params: dict, run):
    """beta-CROWN's start: `run()` (lower bounds [B, K] of a sweep whose slopes are `params`,
    node -> [B, 2, K, *S] for other alpha ops; a group-shift op's [:, 0] is its lA-side gate) with
    the shifts as given, and again with every group-shift gate closed (the plain step). Per row, the gates of the tighter run are kept in
    `params` (in place), so the optimisation starts from the better one. Returns the lower bound."""
    names = [r for r in params if isinstance(graph[r].op, GroupShiftOp)]
    lower = run()
    if not names:
        return lower
    saved = {r: params[r].detach().clone() for r in names}
    with torch.no_grad():
        for r in names:
            params[r][:, 0] = 0.0
    plain = run()
    better = plain > lower                            # [B, K]
    with torch.no_grad():
        for r in names:
            keep = better.reshape(*better.shape, *([1] * (saved[r].dim() - 3))).unsqueeze(1)
            params[r].copy_(torch.where(keep, params[r], saved[r]))
    return torch.maximum(lower, plain)


# alpha-CROWN ends with a line search over one gate per row (all its groups' gates alike) on the
# output sweep with the final slopes (`search_gates`): never looser (the best bound is kept).
SEARCH_SHIFT = True
SEARCH_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def searchable(graph, params: dict) -> bool:
    """Are there gates in `params` for `search_gates` (plain tensors, the search on)?"""
    names = [r for r in params if isinstance(graph[r].op, GroupShiftOp)]
    return SEARCH_SHIFT and bool(names) and not any(hasattr(params[r], "placements") for r in names)


def search_gates(graph, params: dict, run, lower, upper):
    """A line search over the shift's gates per row: `run()` gives (lower, upper) [B, K] of the
    output sweep with `params` (node -> [2, B, K, *S], a group-shift op's [0] / [1] the lA / uA
    side's gates). For fixed slopes each row's bound is concave in a common gate g (lam = g m), so
    a grid over [0, 1] and two probes beside its best point bracket the maximum (every rank runs
    the same probes on its own rows). The gates of the
    best point per row and side are left in `params`; returns the tighter of it and (lower, upper)."""
    if not searchable(graph, params):           # (gates as DTensors: not searched, on every rank)
        return lower, upper
    names = [r for r in params if isinstance(graph[r].op, GroupShiftOp)]

    def set_gates(g_lo, g_up):
        with torch.no_grad():
            for r in names:
                shape = (g_lo.shape[0], g_lo.shape[1]) + (1,) * (params[r].dim() - 3)
                params[r][0].copy_(g_lo.reshape(shape).expand_as(params[r][0]))
                params[r][1].copy_(g_up.reshape(shape).expand_as(params[r][1]))

    def probe(g_lo, g_up):
        set_gates(g_lo, g_up)
        with torch.no_grad():
            return run()

    ref = lower if lower is not None else upper
    best = [ref.new_full(ref.shape, -1.0), ref.new_full(ref.shape, -1.0)]      # the gates, per side
    vals = [lower, None if upper is None else -upper]
    step = SEARCH_GRID[1] - SEARCH_GRID[0]
    points = [(ref.new_full(ref.shape, g), ref.new_full(ref.shape, g)) for g in SEARCH_GRID]
    last = 0.0                                  # the last probe's seconds: none begun that would end past the limit
    for it in range(2):
        for g_lo, g_up in points:
            if last and deadline.ends_within(1.5 * last):
                break
            t0 = time.perf_counter()
            lo, up = probe(g_lo, g_up)
            last = time.perf_counter() - t0
            for side, (new, g) in enumerate(((lo, g_lo), (None if up is None else -up, g_up))):
                if new is None:
                    continue
                better = new > vals[side] if vals[side] is not None else torch.ones_like(new, dtype=torch.bool)
                vals[side] = new if vals[side] is None else torch.maximum(vals[side], new)
                best[side] = torch.where(better, g, best[side])
        step /= 2
        centre = [torch.where(b < 0, torch.ones_like(b), b) for b in best]
        points = [tuple((c + d * step).clamp(0.0, 1.0) for c in centre) for d in (-1.0, 1.0)]
    set_gates(*(torch.where(b < 0, torch.ones_like(b), b) for b in best))     # the best gates stay
    return vals[0], None if vals[1] is None else -vals[1]


register("softmax_sum_one", ("Softmax",), lambda c: c.is_function(softmax_sum_one) and c.n_pert == 1,
         lambda c: SoftmaxSumOneOp(c.node.name, c.node.args[1]))
