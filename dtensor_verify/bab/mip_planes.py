"""Complete search for one output row of a one-hidden-layer ReLU network over an input box.

    F(x) = k + a . x + sum_j v_j relu(w_j . x + b_j),   x in [lo, hi] (n inputs, m hidden)

The property is proved when F > 0 on the whole box; F(x) <= 0 at an onnxruntime-confirmed x is a
counterexample. A neuron with v_j > 0 adds a *convex* term, one with v_j < 0 a *concave* one.

Bound of a domain (a set of sign decisions on concave neurons), a Lagrangian that is valid for
any value of its parameters and tight at their optimum (the LP over the per-neuron convex hulls):

* convex free neuron: relu(z) >= alpha z, alpha in [0, 1] (exact at the LP optimum: a convex
  term needs no split);
* concave free neuron: relu(w . x + b) <= g . x + beta(g) for *any* plane gradient g, with
  beta(g) = max(max_box(-g . x), b + max_box((w - g) . x)) (the plane is above 0 and above z at
  every vertex of the box, so above relu(z) on it). g = lam * w with lam in [0, 1]^n per input:
  lam constant is the triangle relaxation's chord; the best lam gives the neuron's convex hull
  over the box (Anderson et al. 2020), much tighter when many inputs move;
* split neuron: exact (active: z, inactive: 0) plus mu (+-z), mu >= 0 (the split's halfspace).

F >= L(x) = c . x + e (linear in x) on the domain, so min_box L = c . mid - |c| . rad + e is a
lower bound. The parameters are raised by Adam along the exact supergradient (no autograd): d/ds
of min_box L is the value at its minimising vertex x*. Branching: the free concave neuron with the
largest |v_j| (u_j - l_j). Every domain's x* is a candidate
counterexample. The final bounds of a round are recomputed in float64 with clamped parameters;
a domain is dropped only when that is above a small positive margin.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

PROOF_MARGIN = 1e-9          # relative to the row's scale (float64 sums of that size err ~1e-15)
ROOT_ITERATIONS = 100
CHILD_ITERATIONS = 12
LR = 0.1
OPT_DTYPE = torch.float32   # the parameters and their optimisation (a bound's float64 check decides)


@dataclass
class ShallowRow:
    """One row of a one-hidden-layer net, float64, flattened input: F(x) as above."""
    W: torch.Tensor           # [m, n]
    b: torch.Tensor           # [m]
    v: torch.Tensor           # [m]
    a: torch.Tensor           # [n]
    k: float
    lo: torch.Tensor          # [n]
    hi: torch.Tensor          # [n]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """F at x [B, n] (float64)."""
        return torch.relu(x @ self.W.T + self.b) @ self.v + x @ self.a + self.k


@dataclass
class RowResult:
    status: str               # 'proved' | 'candidate' | 'timeout' | 'unknown'
    domains: int = 0
    rounds: int = 0
    max_depth: int = 0
    best_value: float = math.inf      # the smallest F seen (at the bounds' vertices)
    reason: str | None = None
    candidates: list = field(default_factory=list)    # x [n] with F(x) <= 0, not yet confirmed


@dataclass
class _Split:
    """The row reduced to its unstable neurons: convex (P) and concave (N) ones."""
    WP: torch.Tensor
    bP: torch.Tensor
    vP: torch.Tensor
    WN: torch.Tensor
    bN: torch.Tensor
    vN: torch.Tensor
    a: torch.Tensor           # linear part (stable active neurons folded in)
    k: float
    mid: torch.Tensor
    rad: torch.Tensor
    lam0: torch.Tensor        # [nN] chord slopes
    alpha0: torch.Tensor      # [nP]
    scale: float              # size of the row's terms (for the proof margin)
    score: torch.Tensor       # [nN] branching score |v_j| (u_j - l_j)


def reduce_row(row: ShallowRow) -> _Split:
    mid, rad = (row.lo + row.hi) / 2, (row.hi - row.lo) / 2
    zc, zr = row.W @ mid + row.b, row.W.abs() @ rad
    l, u = zc - zr, zc + zr
    active = (l >= 0) & (row.v != 0)
    unstable = (l < 0) & (u > 0) & (row.v != 0)
    P, N = unstable & (row.v > 0), unstable & (row.v < 0)
    a = row.a + row.v[active] @ row.W[active]
    k = row.k + float(row.v[active] @ row.b[active])
    lam0 = (u[N] / (u[N] - l[N])).clamp(0, 1)
    alpha0 = (u[P] > -l[P]).double()
    scale = 1.0 + abs(k) + float(a.abs() @ (mid.abs() + rad)) + float(row.v.abs() @ (zc.abs() + zr))
    score = (-row.v[N]) * (u[N] - l[N])
    return _Split(row.W[P], row.b[P], row.v[P], row.W[N], row.b[N], row.v[N], a, k, mid, rad, lam0, alpha0, scale,
                  score)


def _cast(s: _Split, dtype) -> _Split:
    """The same row with its tensors in `dtype` (the optimisation runs in float32, the bounds that
    decide are recomputed in float64)."""
    return _Split(**{k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in vars(s).items()})


@dataclass
class _Domains:
    phase: torch.Tensor       # [D, nN] int8: 1 active, -1 inactive, 0 free
    alpha: torch.Tensor       # [D, nP]
    lam: torch.Tensor         # [D, nN, n]
    mu: torch.Tensor          # [D, nN]
    depth: torch.Tensor       # [D]

    def __len__(self):
        return self.phase.shape[0]

    def to(self, dtype) -> "_Domains":
        return _Domains(self.phase, self.alpha.to(dtype), self.lam.to(dtype), self.mu.to(dtype), self.depth)

    def take(self, idx) -> "_Domains":
        return _Domains(self.phase[idx], self.alpha[idx], self.lam[idx], self.mu[idx], self.depth[idx])

    @staticmethod
    def cat(parts) -> "_Domains":
        return _Domains(*(torch.cat([getattr(p, f) for p in parts]) for f in ("phase", "alpha", "lam", "mu", "depth")))


def _planes(s: _Split, lam: torch.Tensor):
    """Plane gradients g [D, nN, n] and offsets beta [D, nN], and which side of the max is used."""
    g = lam * s.WN
    h = s.WN - g
    b1 = (g.abs() * s.rad).sum(-1) - (g * s.mid).sum(-1)
    b2 = s.bN + (h * s.mid).sum(-1) + (h.abs() * s.rad).sum(-1)
    return g, torch.maximum(b1, b2), b1 >= b2


def bound(s: _Split, dom: _Domains, grads: bool = False):
    """Lower bound [D] and minimising vertex x* [D, n]; with `grads`, the supergradients of the
    bound w.r.t. alpha, lam and mu too."""
    free, act, ina = dom.phase == 0, dom.phase > 0, dom.phase < 0
    sP = dom.alpha * s.vP                                                  # [D, nP]
    tN = torch.where(act, s.vN - dom.mu, torch.where(ina, dom.mu, torch.zeros_like(dom.mu)))
    g, beta, side = _planes(s, dom.lam)
    cN = torch.where(free, s.vN, torch.zeros_like(dom.mu))                 # concave free: v_j (plane)
    coef = s.a + sP @ s.WP + tN @ s.WN + torch.einsum("dj,djn->dn", cN, g)
    const = s.k + sP @ s.bP + tN @ s.bN + (cN * beta).sum(-1)
    val = coef @ s.mid - coef.abs() @ s.rad + const
    x = s.mid - torch.sign(coef) * s.rad
    if not grads:
        return val, x
    zP, zN = x @ s.WP.T + s.bP, x @ s.WN.T + s.bN
    d_alpha = s.vP * zP
    d_mu = torch.where(act, -zN, torch.where(ina, zN, torch.zeros_like(zN)))
    d_beta = torch.where(side.unsqueeze(-1), s.WN.abs() * s.rad - s.WN * s.mid, -s.WN * s.mid - s.WN.abs() * s.rad)
    d_lam = cN.unsqueeze(-1) * (s.WN * x.unsqueeze(1) + d_beta)
    return val, x, (d_alpha, d_lam, d_mu)


class _Adam:
    """Adam ascent on (alpha, lam, mu) of one batch, projected onto their sets."""

    def __init__(self, dom: _Domains, lr: float):
        self.dom, self.lr, self.t = dom, lr, 0
        self.m = [torch.zeros_like(p) for p in (dom.alpha, dom.lam, dom.mu)]
        self.v = [torch.zeros_like(p) for p in (dom.alpha, dom.lam, dom.mu)]

    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        params = (self.dom.alpha, self.dom.lam, self.dom.mu)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = self.lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
            p.add_(step * m / (v.sqrt() + 1e-12))
        self.dom.alpha.clamp_(0, 1)
        self.dom.lam.clamp_(0, 1)
        self.dom.mu.clamp_(min=0)


def optimise(s: _Split, dom: _Domains, iterations: int, target: float, deadline: float | None = None) -> None:
    """Raise the bounds of `dom` in place (domains already above `target` stop moving)."""
    opt = _Adam(dom, LR)
    for _ in range(iterations):
        val, _x, grads = bound(s, dom, grads=True)
        done = (val > target).to(val.dtype)
        opt.step([gr * (1 - done).view(-1, *([1] * (gr.dim() - 1))) for gr in grads])
        if deadline is not None and time.perf_counter() > deadline:
            return


def _branch(s: _Split, dom: _Domains) -> torch.Tensor:
    """[D] the concave free neuron to split: the largest |v_j| (u_j - l_j) (its term's range over
    the box); -1 when none is free. Measured on safenlp's hardest three: 2.5k-4.1k domains, against
    5.1k-5.9k for |v_j| times the chord's largest gap and 7.0k-11.3k for the plane's gap above relu
    at the bound's vertex x*."""
    if dom.phase.shape[1] == 0:
        return torch.full((len(dom),), -1, dtype=torch.long, device=dom.phase.device)
    score = torch.where(dom.phase == 0, s.score.to(dom.mu).expand_as(dom.mu), torch.full_like(dom.mu, -1.0))
    best = score.max(1)
    return torch.where(best.values > 0, best.indices, torch.full_like(best.indices, -1))


def _children(dom: _Domains, j: torch.Tensor) -> _Domains:
    rows = torch.arange(len(dom), device=j.device)
    kids = []
    for sign in (1, -1):
        phase = dom.phase.clone()
        phase[rows, j] = sign
        kids.append(_Domains(phase, dom.alpha.clone(), dom.lam.clone(), dom.mu.clone(), dom.depth + 1))
    return _Domains.cat(kids)


def _root(s: _Split, n: int) -> _Domains:
    nN, dev = s.WN.shape[0], s.mid.device
    return _Domains(torch.zeros(1, nN, dtype=torch.int8, device=dev), s.alpha0.unsqueeze(0).clone(),
                    s.lam0.view(1, nN, 1).expand(1, nN, n).clone(), torch.zeros(1, nN, dtype=s.mid.dtype, device=dev),
                    torch.zeros(1, dtype=torch.long, device=dev))


class _Stack:
    """Open domains, newest first out (children before their cousins: the queue stays short)."""

    def __init__(self, first: _Domains):
        self.parts, self.size = [first], len(first)

    def pop(self, batch: int) -> _Domains:
        taken, want = [], batch
        while self.parts and want > 0:
            last = self.parts.pop()
            if len(last) > want:
                self.parts.append(last.take(slice(0, len(last) - want)))
                last = last.take(slice(len(last) - want, len(last)))
            taken.append(last)
            want -= len(last)
        out = _Domains.cat(taken)
        self.size -= len(out)
        return out

    def push(self, dom: _Domains) -> None:
        if len(dom):
            self.parts.append(dom)
            self.size += len(dom)


BATCH_ELEMENTS = 1 << 22    # a round's plane parameters [batch, concave, inputs] (float32: 16 MiB)
OPEN_ELEMENTS = 1 << 27     # all open domains' plane parameters (float32: 512 MiB)


def search_row(row: ShallowRow, deadline: float, confirm, batch: int = 256, max_open: int | None = None) -> RowResult:
    """Decide `F > 0` on the box by branch and bound on the concave neurons. `confirm(x [B, n])`
    checks candidate points (F(x) <= 0 in float64) and returns a confirmed counterexample or None;
    `deadline` is a `time.perf_counter()` value. `batch` (domains a round) and `max_open` are
    capped by the size of the plane parameters (BATCH_ELEMENTS, OPEN_ELEMENTS)."""
    s = reduce_row(row)
    n = row.lo.numel()
    per_domain = max(1, s.WN.shape[0] * n)
    batch = max(1, min(batch, BATCH_ELEMENTS // per_domain))
    max_open = min(max_open or OPEN_ELEMENTS, OPEN_ELEMENTS // per_domain + batch)
    res = RowResult("unknown")
    margin = PROOF_MARGIN * s.scale
    fast = _cast(s, OPT_DTYPE)
    stack, first = _Stack(_root(fast, n)), True
    exhausted = 0
    while stack.size:
        if time.perf_counter() > deadline:
            res.status, res.reason = "timeout", f"{stack.size} domain(s) open at the time limit"
            return res
        if stack.size > max_open:
            res.reason = f"more than {max_open} open domains"
            return res
        dom = stack.pop(batch)
        optimise(fast, dom, ROOT_ITERATIONS if first else CHILD_ITERATIONS, 2 * margin, deadline)
        first = False
        val, x = bound(s, dom.to(s.mid.dtype))
        res.domains += len(dom)
        res.rounds += 1
        res.max_depth = max(res.max_depth, int(dom.depth.max()))
        fx = row.value(x)
        res.best_value = min(res.best_value, float(fx.min()))
        if bool((fx <= 0).any()):
            found = confirm(x[fx <= 0])
            if found is not None:
                res.status, res.candidates = "sat", [found]
                return res
        keep = val <= margin
        if not bool(keep.any()):
            continue
        dom = dom.take(keep)
        j = _branch(fast, dom)
        leaf = j < 0
        if bool(leaf.any()):
            undecided, found = _settle_leaves(s, row, dom.take(leaf).to(s.mid.dtype), margin, deadline, confirm)
            if found is not None:
                res.status, res.candidates = "sat", [found]
                return res
            exhausted += undecided
            dom, j = dom.take(~leaf), j[~leaf]
        stack.push(_children(dom, j))
    if exhausted:
        res.reason = f"{exhausted} fully split domain(s) not proved by their bound"
        return res
    res.status = "proved"
    return res


def _settle_leaves(s: _Split, row: ShallowRow, dom: _Domains, margin: float, deadline: float, confirm):
    """Domains with no concave neuron left: F is convex there. More steps, then the exact LP
    (bab/mip_leaves.py): its minimiser is a candidate, its multipliers the bound's parameters.
    Returns (how many are still not proved, a confirmed counterexample or None)."""
    from .mip_leaves import leaf_lp

    optimise(s, dom, 2 * ROOT_ITERATIONS, 2 * margin, deadline)
    val, _ = bound(s, dom)
    left = 0
    todo = (val <= margin).nonzero().flatten().tolist()
    for k, i in enumerate(todo):
        if time.perf_counter() > deadline:
            return left + len(todo) - k, None
        x, alpha, mu = leaf_lp(s, dom.phase[i])
        if x is not None and float(row.value(x.unsqueeze(0))[0]) <= 0:
            found = confirm(x.unsqueeze(0))
            if found is not None:
                return left, found
        one = dom.take([i])
        one.alpha, one.mu = alpha.unsqueeze(0).to(one.alpha), mu.unsqueeze(0).to(one.mu)
        if not float(bound(s, one)[0][0]) > margin:
            left += 1
    return left, None
