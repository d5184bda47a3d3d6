"""Exact decisions on leaf domains of branch and bound, by linear programming.

A leaf domain has no unstable ReLU left: every neuron is split or stable, so on the domain the
network is affine in the input. Its exact worst margin is then a linear program over the input
box (HiGHS through `scipy.optimize.linprog`, on the CPU):

    minimise t  over  u in [-1, 1]^n (x = centre + radius * u), t
    subject to  s_r (C_r y(x) - d_r) <= t            every real row r of the domain's disjunct
                s_i phase_i(x)       <= t            every ReLU neuron: -z_i(x) for an active one,
                                                     z_i(x) for an inactive one (split or stable)

with each row scaled to unit size (s > 0: signs are all that matter). The affine maps y(x), z(x)
come from the network in float64 with every ReLU replaced by its phase (0 or 1), evaluated at
the box centre and one step along each input. All phase constraints (stable ones too) make the
LP exact: a point satisfying them gets the assumed phases layer by layer, so the affine maps are
the network there. Then

* t* > 0: no input of the domain satisfies the disjunct. Proved only when a Lagrangian (dual)
  bound, recomputed from HiGHS's multipliers in float64 and independent of its tolerances, is
  above `PROOF_MARGIN`;
* t* <= 0 (or borderline): the minimiser is a candidate counterexample, confirmed by
  onnxruntime like every other candidate (the caller's `try_points`).

A domain left neither proved nor confirmed stays undecided, with the reason said.
Several domains share one linprog call (a block-diagonal LP: the blocks are independent).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

PROOF_MARGIN = 1e-9         # the dual bound (rows scaled to unit size) must exceed this
MAX_INPUTS = 1024           # larger inputs: one forward pass per input per domain is too much
LP_BLOCK = 32               # domains per linprog call
MAX_ENUMERATED = 3          # a domain with at most this many unstable neurons: one LP per phase pattern
MAX_WEIGHT_BYTES = 256 << 20    # the float64 copy of the weights (gathered whole on every rank)
_AFFINE_KINDS = {"linear", "conv2d", "add", "sub", "affine", "identity", "reshape", "relu"}


@dataclass
class LeafOutcome:
    proved: torch.Tensor        # [n] bool
    counterexample: object      # what `confirm` confirmed among the LP minimisers, or None
    undecided: int              # neither proved nor confirmed
    reason: str | None          # why the undecided ones are


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A parameter as one float64 CPU tensor (a DTensor gathered: a collective)."""
    full = getattr(t, "full_tensor", None)
    t = full() if callable(full) else t
    return t.detach().to("cpu", torch.float64)


def _float64_node(node):
    """A copy of a bound node whose op computes in float64 on the CPU with whole weights; the
    original node, op and module are left as they are."""
    node = copy.copy(node)
    if node.op is None:
        return node
    op = node.op = copy.copy(node.op)
    for k, v in list(vars(op).items()):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            setattr(op, k, _whole(v))
    module = getattr(op, "module", None)
    if module is not None:
        # A plain module with the original's attributes (stride, ...): copy.copy cannot copy an
        # FSDP-wrapped one, and the op only reads its parameters and attributes.
        m = op.module = torch.nn.Module()
        m.__dict__.update({k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")})
        m._parameters = {k: None if v is None else torch.nn.Parameter(_whole(v), requires_grad=False)
                         for k, v in module._parameters.items()}
        m._buffers = {k: None if v is None else _whole(v) for k, v in module._buffers.items()}
    return node


class ExactLeaves:
    """The LP oracle of one BaB problem (built lazily; `disabled` says why it cannot run)."""

    def __init__(self, problem):
        self.problem = problem
        self.nodes = None
        self.disabled = self._why_not()
        self.lps = 0                # LPs solved
        self.proved = 0
        self.seconds = 0.0
        self.enumerated_domains = 0     # domains with a few unstable neurons decided by enumeration

    def _why_not(self) -> str | None:
        p = self.problem
        n_in = int(np.prod(p.box_lower.shape[1:]))
        if n_in > MAX_INPUTS:
            return f"{n_in} inputs (the exact LP is built for at most {MAX_INPUTS})"
        size = 0
        for node in p.graph.nodes:
            op = node.op
            if op is None:
                continue
            affine = op.kind in _AFFINE_KINDS or type(op).__name__ == "ElementwiseAffineOp"
            if not affine:
                return f"node '{node.name}' ({op.kind}) is not piecewise linear"
            module = getattr(op, "module", None)
            if module is not None:
                size += sum(8 * t.numel() for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)))
        if size > MAX_WEIGHT_BYTES:
            return f"{size >> 20} MiB of float64 weights (the exact LP copies at most {MAX_WEIGHT_BYTES >> 20} MiB)"
        return None

    def prepare(self) -> None:
        """Build the float64 copy now. Sharded weights (fsdp / tp / spec) are gathered whole,
        a collective: every rank of a shard group calls this at the same point (the start of
        the search)."""
        if self.disabled is None and self.nodes is None:
            self.nodes = [_float64_node(n) for n in self.problem.graph.nodes]

    # -- the network in float64 with fixed phases ---------------------------------------------
    def _build(self):
        if self.nodes is None:
            if self.problem.layout.world_size > 1:
                raise RuntimeError("the float64 copy must be built at the start (prepare)")
            self.prepare()
        return self.nodes

    def _run(self, x: torch.Tensor, masks: dict | None) -> dict:
        """Values of every node at x [m, *S] (float64, CPU); a ReLU multiplies by its mask
        [m, *S] (0/1) when `masks` is given, else it is the ReLU."""
        values = {self.problem.graph.input_name: x}
        for node in self._build():
            if node.op is None:
                continue
            args = [values[i] for i in node.inputs]
            if node.name in self.problem.pre_of and masks is not None:
                values[node.name] = args[0] * masks[node.name]
            else:
                values[node.name] = node.op.forward(*args)
        return values

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output at x in float64 (real ReLUs)."""
        with torch.no_grad():
            y = self._run(x.detach().to("cpu", torch.float64), None)[self.problem.graph.output_name]
        return y.flatten(1)

    def phases(self, domains, unstable: dict | None = None):
        """relu -> [n, *S] float64 masks (1 active, 0 inactive), and [n] bool: is a leaf.
        `unstable`, when given, is filled with relu -> [n, *S] bool (neither split nor stable)."""
        p = self.problem
        masks, leaf = {}, torch.ones(len(domains), dtype=torch.bool, device="cpu")    # the LPs run on the CPU
        for r in p.relus:
            lo, up = (t.detach().cpu() for t in domains.bounds[p.pre_of[r]])
            s = domains.signs[r].detach().cpu()
            active = (s < 0) | ((s == 0) & (lo >= 0))
            inactive = (s > 0) | ((s == 0) & (up <= 0) & ~active)
            leaf &= (active | inactive).flatten(1).all(1)
            masks[r] = active.to(torch.float64)
            if unstable is not None:
                unstable[r] = ~(active | inactive)
        return masks, leaf

    # -- domains with a few unstable neurons left: every phase pattern is a leaf ---------------
    def few_unstable(self, domains, counts: bool = False) -> torch.Tensor:
        """[n] bool: domains with 1 to MAX_ENUMERATED unstable neurons left (`counts`: [n] long,
        how many, 0 for the others)."""
        unstable = {}
        self.phases(domains, unstable)
        count = sum((u.flatten(1).sum(1) for u in unstable.values()),
                    torch.zeros(len(domains), dtype=torch.long, device="cpu"))     # no ReLU: none unstable
        few = (count >= 1) & (count <= MAX_ENUMERATED)
        return (count * few if counts else few).to(domains.pair.device)

    def enumerated(self, domains):
        """Every phase pattern of each domain's unstable neurons: (owner [m] long, masks
        {relu: [m, *S]}). The patterns' regions cover the domain, each is a leaf."""
        unstable = {}
        masks, _ = self.phases(domains, unstable)
        names = list(masks)
        flat_m = torch.cat([masks[r].flatten(1) for r in names], 1)            # [n, T]
        flat_u = torch.cat([unstable[r].flatten(1) for r in names], 1)
        owners, rows = [], []
        for i in range(len(flat_m)):
            where = flat_u[i].nonzero().flatten()
            for code in range(1 << len(where)):
                row = flat_m[i].clone()
                row[where] = torch.tensor([float((code >> j) & 1) for j in range(len(where))], dtype=torch.float64, device="cpu")
                owners.append(i)
                rows.append(row)
        owner, flat = torch.tensor(owners, dtype=torch.long, device="cpu"), torch.stack(rows)
        out, pos = {}, 0
        for r in names:
            size = masks[r][0].numel()
            out[r] = flat[:, pos:pos + size].reshape(len(owner), *masks[r].shape[1:])
            pos += size
        return owner, out

    def decide_enumerated(self, domains, confirm) -> LeafOutcome:
        """Decide domains with a few unstable neurons left (`few_unstable`): a domain is proved
        when the LP of every phase pattern of its unstable neurons is proved (the patterns'
        regions cover it); a pattern's minimiser is a candidate counterexample as for a leaf."""
        n = len(domains)
        if n == 0:
            return LeafOutcome(torch.zeros(0, dtype=torch.bool, device="cpu"), None, 0, None)
        owner, masks = self.enumerated(domains)
        expanded = domains.index(owner.to(domains.pair.device))
        rows = self.decide(expanded, confirm, masks=masks)
        failed = torch.zeros(n, dtype=torch.bool, device="cpu")
        failed[owner[~rows.proved.cpu()]] = True
        self.enumerated_domains += n
        undecided = int(failed.sum())
        return LeafOutcome((~failed).to(domains.pair.device), rows.counterexample, undecided, rows.reason)

    def affine_maps(self, domains, masks):
        """Per domain: the box centre / radius [n, N], and (G, h) with value = h + G @ u for
        the output [n, n_out, N] and each ReLU's input [n, k, N] (u in [-1, 1]^N)."""
        p = self.problem
        lo, hi = (t.detach().cpu().double().flatten(1) for t in p.box_of(domains))    # its own sub-box, if any
        centre, radius = (lo + hi) / 2, (hi - lo) / 2
        n, N = centre.shape
        pts = centre.unsqueeze(1).repeat(1, N + 1, 1)                          # [n, N+1, N]
        pts[:, 1:] += torch.diag_embed(radius)
        shape = p.box_lower.shape[1:]
        rep = {r: m.unsqueeze(1).expand(n, N + 1, *m.shape[1:]).reshape(n * (N + 1), *m.shape[1:])
               for r, m in masks.items()}
        with torch.no_grad():
            vals = self._run(pts.reshape(n * (N + 1), *shape), rep)

        def split(v):
            v = v.reshape(n, N + 1, -1)
            return (v[:, 1:] - v[:, :1]).transpose(1, 2), v[:, 0]             # G [n, k, N], h [n, k]

        out = split(vals[p.graph.output_name])
        pre = {r: split(vals[p.pre_of[r]]) for r in p.relus}
        return centre, radius, out, pre

    def summary(self) -> dict:
        """The JSON `exact_lp` entry of branch and bound."""
        return {"domains": self.lps, "proved": self.proved, "seconds": self.seconds, "disabled": self.disabled,
                "enumerated_domains": self.enumerated_domains}

    # -- the LPs ----------------------------------------------------------------------------
    def decide(self, domains, confirm, masks: dict | None = None) -> LeafOutcome:
        """Decide the leaf domains `domains` (every neuron split or stable; or every phase given
        by `masks`, see `enumerated`). `confirm(x, pair, y)` checks candidates: a confirmed
        counterexample, or None."""
        import time
        t0 = time.perf_counter()
        n = len(domains)
        proved = torch.zeros(n, dtype=torch.bool, device="cpu")
        if n == 0:
            return LeafOutcome(proved, None, 0, None)
        if masks is None:
            masks, leaf = self.phases(domains)
        else:
            leaf = torch.ones(n, dtype=torch.bool, device="cpu")      # every phase fixed by the given masks
        centre, radius, out, pre = self.affine_maps(domains, masks)
        blocks = [self._block(domains, i, centre, radius, out, pre, masks) for i in range(n)]
        results = []
        for start in range(0, n, LP_BLOCK):
            results.extend(_solve_blocks(blocks[start:start + LP_BLOCK]))
        self.lps += n
        cands, borderline, failed = [], 0, 0
        for i, (status, t_star, bound, u) in enumerate(results):
            if status != 0:
                failed += 1
            elif bool(leaf[i]) and bound > PROOF_MARGIN:
                proved[i] = True
            elif t_star <= PROOF_MARGIN:
                cands.append((i, centre[i] + radius[i] * torch.from_numpy(np.clip(u, -1.0, 1.0))))
            else:
                borderline += 1
        found = None
        if cands:
            idx = [i for i, _ in cands]
            x = torch.stack([c for _, c in cands]).reshape(len(cands), *self.problem.box_lower.shape[1:])
            y = self.output(x)
            dev = self.problem.d.device
            found = confirm(x.to(dev, torch.float32), domains.pair[idx], y.to(dev, torch.float32)) or None
        self.proved += int(proved.sum())
        self.seconds += time.perf_counter() - t0
        undecided = n - int(proved.sum())
        reason = None
        if undecided and found is None:
            reason = _reason(undecided, len(cands), borderline, failed)
        return LeafOutcome(proved.to(domains.pair.device), found, undecided, reason)

    def _block(self, domains, i, centre, radius, out, pre, masks):
        """One domain's LP rows: A [m, N] u - t <= -b, each row scaled to unit size."""
        p = self.problem
        pair = int(domains.pair[i])
        C = p.C[pair].detach().cpu().double()
        d = p.d[pair].detach().cpu().double()
        real = p.row_mask[pair].detach().cpu()
        G, h = out[0][i], out[1][i]                                  # [n_out, N], [n_out]
        rows_A = [(C @ G)[real]]
        rows_b = [(C @ h - d)[real]]
        for r in p.relus:
            Gz, hz = pre[r][0][i], pre[r][1][i]
            sign = 1.0 - 2.0 * masks[r][i].flatten()                 # active: -z <= t, inactive: z <= t
            rows_A.append(sign.unsqueeze(1) * Gz)
            rows_b.append(sign * hz)
        A, b = torch.cat(rows_A).numpy(), torch.cat(rows_b).numpy()
        scale = np.abs(A).sum(1) + np.abs(b)
        scale[scale == 0] = 1.0
        return A / scale[:, None], b / scale


def _solve_blocks(blocks):
    """One linprog for several independent blocks (A_k u_k + b_k <= t_k). Returns per block
    (status, t*, a rigorous lower bound of t*, u*)."""
    from scipy.optimize import linprog
    from scipy.sparse import block_diag, csr_matrix, hstack

    N = blocks[0][0].shape[1]
    k = len(blocks)
    A_u = block_diag([csr_matrix(A) for A, _ in blocks], format="csr")
    A_t = block_diag([csr_matrix(-np.ones((A.shape[0], 1))) for A, _ in blocks], format="csr")
    A_ub = hstack([A_u, A_t], format="csr")
    b_ub = -np.concatenate([b for _, b in blocks])
    c = np.concatenate([np.zeros(k * N), np.ones(k)])
    bounds = [(-1.0, 1.0)] * (k * N) + [(-2.0, 2.0)] * k
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0 or res.x is None:
        return [(res.status or 1, math.nan, -math.inf, None)] * k
    lam = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
    out, pos = [], 0
    for j, (A, b) in enumerate(blocks):
        m = A.shape[0]
        u = res.x[j * N:(j + 1) * N]
        out.append((0, float(res.x[k * N + j]), _dual_bound(A, b, lam[pos:pos + m]), u))
        pos += m
    return out


def _dual_bound(A: np.ndarray, b: np.ndarray, lam: np.ndarray) -> float:
    """A lower bound of min t s.t. A u + b <= t, u in [-1, 1]^N, t in [-2, 2], valid for any
    lam >= 0: t >= sum lam_i (A_i u + b_i) + (1 - sum lam) t on the feasible set. Normalised to
    sum 1; the rest is minimised over the box exactly."""
    total = math.fsum(lam)
    if not total > 0:
        return -math.inf
    lam = lam / total
    g = lam @ A                                                     # [N]
    slack = abs(1.0 - math.fsum(lam))
    bound = math.fsum(lam * b) - math.fsum(np.abs(g)) - 2.0 * slack
    # Float error of the sums above, generously (rows are scaled to unit size).
    return bound - 1e-12 * (len(b) + A.shape[1])


def _reason(undecided: int, candidates: int, borderline: int, failed: int) -> str:
    parts = []
    if candidates:
        parts.append(f"{candidates} whose LP minimiser onnxruntime did not confirm (a margin within "
                     f"float error of 0)")
    if borderline:
        parts.append(f"{borderline} whose exact margin is within {PROOF_MARGIN:g} of 0")
    if failed:
        parts.append(f"{failed} where the LP solver failed")
    return f"{undecided} fully split domain(s) left undecided by the exact LP: " + ", ".join(parts)
