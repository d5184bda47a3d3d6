"""The verdict pipeline for one instance (network + VNN-LIB property).

    result = verify_instance(model, prop, onnx_path, timeout=120)
    result.verdict            # 'sat' | 'unsat' | 'unknown' | 'timeout' | 'error'
    result.counterexample     # (x, y) float64 arrays for 'sat' (y as computed by onnxruntime)

Steps:

1. Attack: PGD with random restarts, one batch element per (region, disjunct) pair, each
   minimising its own margin `max_rows(C y - d)` (a disjunct is reached when that is <= 0).
2. A candidate becomes `sat` only after onnxruntime, running the *original* ONNX file, confirms
   that the (float32) input lies in the box and its output violates the property. If
   onnxruntime disagrees, the candidate is dropped and the pipeline goes on.
3. Incomplete verification, method after method (default CROWN, then alpha-CROWN), on the pairs
   still open. A disjunct is infeasible when some row's lower bound of `C y - d` is > 0;
   `unsat` needs every disjunct of every region proved. After each method, the box vertex that
   minimises each open row's *linear* lower bound is tried as a counterexample (bound-guided
   attack: it finds violations where PGD from random starts stalls on flat regions).
4. If bounds cannot decide, more PGD rounds (other seeds, doubling restarts, also started from
   the bound-guided vertices), using at most `extra_budget` of the time left.

Soundness: `unsat` only from bounds; `sat` only with an onnxruntime-confirmed counterexample;
timeouts and exceptions give `timeout` / `error`, never `unsat`. The clock is checked between
phases, between attack rounds, inside PGD (through the network function) and after each
alpha-CROWN step, so the call returns shortly after `timeout` seconds.

Batching for bounds: one batch element per *region* (its box), its rows the stacked rows of all
its open disjuncts (padded with ignored zero rows to the widest region). Rows are independent in
CROWN, so this gives each disjunct the bounds a per-pair batch would give, while the
intermediate bounds (the expensive part) are computed once per box instead of once per pair.
`bound_batching="pair"` gives one element per (region, disjunct) instead (alpha-CROWN then
optimises intermediate slopes per disjunct: sometimes tighter, always costlier).
"""
from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputSpecError, TimeLimitReached, VerifierError

__all__ = ["verify_instance", "VerifyResult", "DisjunctStatus", "AttackOptions", "VERDICTS"]

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass
class AttackOptions:
    restarts: int = 20          # random starts per (region, disjunct) pair, first round
    steps: int = 100            # PGD steps per round
    extra_rounds: int = 4       # rounds after the bounds failed (restarts doubled each time)
    extra_budget: float = 0.25  # ... using at most this fraction of the time left
    max_samples: int = 4096     # pairs x restarts per PGD batch (memory cap; pairs are chunked)
    seed: int = 0


@dataclass
class DisjunctStatus:
    region: int
    disjunct: int
    n_rows: int
    status: str = "open"                 # 'open' | 'proved' (infeasible) | 'violated'
    proved_by: str | None = None
    lower: list | None = None            # best lower bounds of the rows of C y - d
    attack_margin: float | None = None   # best max_rows(C y - d) the attack reached (torch)

    def as_dict(self):
        return dict(self.__dict__)


@dataclass
class VerifyResult:
    verdict: str
    counterexample: tuple | None          # (x [n_in], y [n_out]) float64, y from onnxruntime
    seconds: float
    details: list = field(default_factory=list)     # DisjunctStatus per (region, disjunct)
    bounds: dict = field(default_factory=dict)      # method -> {seconds, proved, open, ...}
    phases: dict = field(default_factory=dict)      # phase -> seconds
    decided_by: str | None = None                   # 'attack' | method name | 'spec'
    message: str | None = None                      # for 'error' / 'timeout'
    traceback: str | None = None                    # for unexpected (non-user) errors
    confirmed_by: str | None = None                 # 'onnxruntime' (or 'torch' without ONNX)

    def as_dict(self):
        out = {k: v for k, v in self.__dict__.items() if k not in ("counterexample", "details")}
        out["details"] = [d.as_dict() for d in self.details]
        if self.counterexample is not None:
            out["counterexample"] = {"x": self.counterexample[0].tolist(), "y": self.counterexample[1].tolist()}
        return out


_Timeout = TimeLimitReached       # raised by the clock; never escapes verify_instance


class _NoClock:
    """For attacks inside branch and bound, whose workers stop together at their sync."""

    def check(self):
        pass


class _Clock:
    def __init__(self, timeout: float, layout):
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + max(float(timeout), 0.0)
        self.layout = layout

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def check(self):
        # Every rank must agree before stopping (collectives must stay in step).
        if self.layout.all_true(time.perf_counter() >= self.deadline):
            raise _Timeout()


# ------------------------------------------------------------------------------------------ pairs

class _Pairs:
    """All (region, disjunct) pairs as padded tensors.

    A disjunct with zero rows (every output unsafe) becomes the single row `0 . y <= 0`: it always
    holds (attack margin 0) and can never be proved (lower bound 0).
    """

    def __init__(self, prop, n_out: int, dtype=torch.float32, device=None):
        self.index = []           # (region, disjunct)
        rows = []
        for r, region in enumerate(prop.regions):
            for j, dj in enumerate(region.disjuncts):
                C = np.asarray(dj.C, dtype=np.float64).reshape(-1, n_out)
                d = np.asarray(dj.d, dtype=np.float64).reshape(-1)
                if C.shape[0] == 0:
                    C, d = np.zeros((1, n_out)), np.zeros(1)
                self.index.append((r, j))
                rows.append((C, d, dj.C.shape[0]))
        self.n_real_rows = [k for _, _, k in rows]
        P = len(rows)
        K = max((c.shape[0] for c, _, _ in rows), default=1)
        # Filled row by row on the CPU, then moved to the model's device in one copy each.
        self.C = torch.zeros(P, K, n_out, dtype=dtype, device="cpu")
        self.d = torch.zeros(P, K, dtype=dtype, device="cpu")
        self.mask = torch.zeros(P, K, dtype=torch.bool, device="cpu")
        for p, (C, d, _) in enumerate(rows):
            k = C.shape[0]
            self.C[p, :k] = torch.from_numpy(C).to(dtype)
            self.d[p, :k] = torch.from_numpy(d).to(dtype)
            self.mask[p, :k] = True
        self.rows_of = [int(m.sum()) for m in self.mask]
        self.C, self.d, self.mask = (t.to(device) for t in (self.C, self.d, self.mask))

    def __len__(self):
        return len(self.index)


def _region_boxes(prop, input_shape, dtype=torch.float32, device=None):
    lo = torch.from_numpy(np.stack([np.asarray(r.lower, dtype=np.float64) for r in prop.regions]))
    hi = torch.from_numpy(np.stack([np.asarray(r.upper, dtype=np.float64) for r in prop.regions]))
    return (lo.to(device, dtype).reshape(-1, *input_shape), hi.to(device, dtype).reshape(-1, *input_shape))


# ----------------------------------------------------------------------------------- confirmation

class _Confirmer:
    """Runs candidates through the original model: onnxruntime on the ONNX file (or, for models
    that never were ONNX, the nn.Module as given to `dv.load`)."""

    def __init__(self, model, onnx_path, log):
        self.model = model
        self.onnx_path = onnx_path
        self.log = log
        self.kind = "onnxruntime" if onnx_path else "torch"
        self.what = None
        self._run = None

    def runner(self):
        from .selfcheck import module_runner, reference_of

        if self._run is None:
            self._run, self.what = reference_of(self.model, self.onnx_path)
            if self._run is None:        # a LoadedModel built by hand: only its own module
                self._run, self.what = module_runner(self.model.module, self.model.input_shape), "the module"
        return self._run

    def __call__(self, x32: np.ndarray) -> np.ndarray:
        return self.runner()(x32)


def _inside_box_f32(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, lo_strict=None, hi_strict=None
                    ) -> np.ndarray | None:
    """A float32 point inside the float64 box [lo, hi] (open on the sides marked strict), as close
    to x as float32 allows; None when some coordinate's range holds no float32 value (a point box
    X = 0.1, say): then no float32 input is a counterexample, and none is claimed."""
    lo = np.asarray(lo, dtype=np.float64).ravel()
    hi = np.asarray(hi, dtype=np.float64).ravel()
    lo_strict = np.zeros(lo.shape, bool) if lo_strict is None else np.asarray(lo_strict, bool).ravel()
    hi_strict = np.zeros(hi.shape, bool) if hi_strict is None else np.asarray(hi_strict, bool).ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.clip(np.asarray(x, dtype=np.float64).ravel(), lo, hi).astype(np.float32)
        # Rounding to float32 may leave the box by one step: step back towards it (twice covers
        # an open side that the first step lands on exactly).
        for _ in range(2):
            v = x32.astype(np.float64)
            below = (v < lo) | (lo_strict & (v == lo))
            x32[below] = np.nextafter(x32[below], np.float32(np.inf))
            v = x32.astype(np.float64)
            above = (v > hi) | (hi_strict & (v == hi))
            x32[above] = np.nextafter(x32[above], np.float32(-np.inf))
        v = x32.astype(np.float64)
        inside = np.where(lo_strict, v > lo, v >= lo) & np.where(hi_strict, v < hi, v <= hi)
    return x32 if bool(inside.all()) else None


# ------------------------------------------------------------------------------------------ attack

def _margin(out: torch.Tensor, C: torch.Tensor, d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """max over real rows of (C y - d); out: [R, P, n_out], C: [P, K, n_out] -> [R, P]."""
    rows = torch.einsum("pkn,rpn->rpk", C, out) - d
    return rows.masked_fill(~mask, -math.inf).max(-1).values


def _pgd(fn, lo, hi, margin, steps: int, restarts: int, seed: int, starts=None):
    """Minimise `margin(fn(x))` ([R, P]) per box with sign-gradient steps and a cosine step size.

    lo, hi: [P, *S]. `starts` ([S0, P, *S]) are extra starting points (e.g. bound-guided
    vertices); the first random restart is the box centre. Returns (x_best [P, *S], best [P]).
    """
    gen = torch.Generator(device=lo.device).manual_seed(seed)
    P = lo.shape[0]
    n0 = 0 if starts is None else starts.shape[0]
    R = restarts + n0
    LO = lo.unsqueeze(0).expand(R, *lo.shape)
    HI = hi.unsqueeze(0).expand(R, *hi.shape)
    W = HI - LO
    x = LO + W * torch.rand(LO.shape, generator=gen, device=lo.device, dtype=lo.dtype)
    if restarts > 0:
        x[n0] = (lo + hi) / 2
    if n0:
        x[:n0] = torch.max(torch.min(starts.to(x.dtype), HI[:n0]), LO[:n0])
    best_val = torch.full((P,), math.inf, dtype=lo.dtype, device=lo.device)
    best_x = ((lo + hi) / 2).clone()
    ar = torch.arange(P, device=lo.device)
    for t in range(steps + 1):
        x = x.detach().requires_grad_(t < steps)
        with torch.set_grad_enabled(t < steps):
            val = margin(fn(x.reshape(R * P, *lo.shape[1:])).reshape(R, P, -1))
        with torch.no_grad():
            v, i = val.detach().min(0)
            better = v < best_val
            best_val = torch.where(better, v, best_val)
            best_x[better] = x.detach()[i[better], ar[better]]
        if t == steps:
            break
        grad, = torch.autograd.grad(val.sum(), x)
        eta = 0.25 * (1 + math.cos(math.pi * t / steps)) + 0.01      # 0.51 -> 0.01 of the box width
        with torch.no_grad():
            x = torch.max(torch.min(x - eta * W * grad.sign(), HI), LO)
    return best_x, best_val


def _attack_round(model, pairs: _Pairs, open_idx, lo, hi, clock, opts: AttackOptions, restarts: int,
                  seed: int, starts=None):
    """PGD on the pairs `open_idx` (starts: {pair: [n, *S]}); returns (x_best [p, *S], margin_best [p])."""

    def fn(x):
        clock.check()
        return model.forward(x)

    n0 = 0
    if starts:
        n0 = max((starts[p].shape[0] for p in open_idx if p in starts), default=0)
    chunk = max(1, opts.max_samples // max(restarts + n0, 1))
    xs, vals = [], []
    with model.layout.network_function():      # a placed model may gather its weights once here
        for s in range(0, len(open_idx), chunk):
            idx = open_idx[s:s + chunk]
            C, d, mask = pairs.C[idx], pairs.d[idx], pairs.mask[idx]
            init = None
            if n0:
                # Pairs with fewer starts repeat their box centre.
                init = ((lo[idx] + hi[idx]) / 2).unsqueeze(0).repeat(n0, *([1] * lo[idx].dim()))
                for j, p in enumerate(idx):
                    if p in starts:
                        init[:starts[p].shape[0], j] = starts[p]
            x_best, v_best = _pgd(fn, lo[idx], hi[idx], lambda out, C=C, d=d, mask=mask: _margin(out, C, d, mask),
                                  steps=opts.steps, restarts=restarts, seed=seed, starts=init)
            xs.append(x_best.detach())
            vals.append(v_best.detach().reshape(-1))
    return torch.cat(xs), torch.cat(vals)


# ------------------------------------------------------------------------------------------ bounds

def _bound_groups(pairs: _Pairs, open_idx, batching: str):
    """Batch elements: lists of pair indices sharing one box (a region, or a single pair)."""
    if batching == "pair":
        return [[p] for p in open_idx]
    by_region: dict[int, list[int]] = {}
    for p in open_idx:
        by_region.setdefault(pairs.index[p][0], []).append(p)
    return list(by_region.values())


def _guided_vertices(model, bounds, C, lower, alphas, max_rows: int = 64):
    """Input-box vertices that minimise the *linear* lower bound of each unproved spec row.

    With the intermediate bounds fixed, the lower bound of row k is `A_k . x + c_k` minimised over
    the box; its gradient with respect to the box centre is A_k, and the minimising vertex is
    `lo` where A_k > 0 and `hi` elsewhere. Such vertices often violate the property where PGD
    from random starts stalls on flat regions. Returns {(b, k): x [*S]} for rows with lower <= 0.
    """
    from .methods.crown import output_bound

    graph, layout = model.graph, model.layout
    lo, hi = bounds[graph.input_name]
    todo = [(b, k) for b in range(C.shape[0]) for k in range(C.shape[1]) if lower[b, k] <= 0]
    todo = todo[:max_rows * C.shape[0]]
    if not todo:
        return {}
    center = ((lo + hi) / 2).detach().requires_grad_(True)
    rad = ((hi - lo) / 2).detach()
    shifted = dict(bounds)
    shifted[graph.input_name] = (center - rad, center + rad)
    with torch.enable_grad():
        lb, _ = output_bound(graph, shifted, C, layout, alphas, want_lower=True, want_upper=False)
    out = {}
    ks = sorted({k for _, k in todo})
    for n, k in enumerate(ks):
        A, = torch.autograd.grad(lb[:, k].sum(), center, retain_graph=n + 1 < len(ks))
        vert = torch.where(A > 0, lo, hi).detach()
        for b, kk in todo:
            if kk == k:
                out[(b, k)] = vert[b]
    return out


def _bound_pairs(model, method, pairs: _Pairs, open_idx, region_lo, region_hi, clock, batching,
                 alpha_options, max_batch, guide: bool, max_rows_total=4096):
    """Lower bounds of C y - d for the pairs `open_idx`.

    Returns ({pair: tensor [rows]}, {pair: tensor [n, *S] bound-guided vertices}, info).
    """
    from .methods import AlphaOptions, alpha_crown
    from .methods.crown import intermediate_bounds, output_bound
    from .methods.ibp import ibp_output

    groups = _bound_groups(pairs, open_idx, batching)
    results, vertices = {}, {}
    info = {"iterations": []}
    # Chunk the batch: at most max_batch boxes and about max_rows_total spec rows per call.
    chunks, cur, cur_rows = [], [], 0
    for g in groups:
        k = sum(pairs.rows_of[p] for p in g)
        if cur and (len(cur) >= max_batch or cur_rows + k > max_rows_total):
            chunks.append(cur)
            cur, cur_rows = [], 0
        cur.append(g)
        cur_rows += k
    if cur:
        chunks.append(cur)

    def on_step(it, score):
        clock.check()

    graph, layout = model.graph, model.layout
    guide = guide and method != "ibp" and getattr(layout, "world_size", 1) == 1
    for chunk in chunks:
        clock.check()
        B = len(chunk)
        K = max(sum(pairs.rows_of[p] for p in g) for g in chunk)
        n_out = pairs.C.shape[-1]
        C = torch.zeros(B, K, n_out, device=pairs.C.device)
        d = torch.zeros(B, K, device=pairs.C.device)
        slots = []          # (b, start, pair)
        for b, g in enumerate(chunk):
            pos = 0
            for p in g:
                k = pairs.rows_of[p]
                C[b, pos:pos + k] = pairs.C[p, :k]
                d[b, pos:pos + k] = pairs.d[p, :k]
                slots.append((b, pos, p))
                pos += k
        regions = [pairs.index[g[0]][0] for g in chunk]
        box = model.check_box(region_lo[regions], region_hi[regions])
        alphas = None
        if method == "ibp":
            with torch.no_grad():
                lower, _ = ibp_output(graph, box, C, layout)
        elif method == "crown":
            with torch.no_grad():
                bounds, _ = intermediate_bounds(graph, box, layout, None)
                lower, _ = output_bound(graph, bounds, C, layout, want_lower=True, want_upper=False)
        else:
            opts = alpha_options or AlphaOptions(iterations=100)
            lower, _, extra = alpha_crown(graph, box, C, layout, opts, want_lower=True, want_upper=False,
                                          on_step=on_step)
            info["iterations"].append(extra["iterations"])
            bounds = extra["intermediate"]
            alphas = extra["alphas"].get(graph.output_name)
            if alphas:
                alphas = {name: a.detach() for name, a in alphas.items()}
        lower = layout.local(lower).detach()
        margin_lower = lower - d
        for b, pos, p in slots:
            results[p] = margin_lower[b, pos:pos + pairs.rows_of[p]]
        if method != "ibp":
            # Where branch and bound starts from: each pair's intermediate bounds and (one
            # process: the rows are not split over ranks) its rows' optimised lower slopes.
            pre = graph.preactivation_nodes()
            for b, pos, p in slots:
                k = pairs.rows_of[p]
                root = {"bounds": {n: (bounds[n][0][b].detach(), bounds[n][1][b].detach()) for n in pre},
                        "alphas": None}
                if alphas and getattr(layout, "world_size", 1) == 1:
                    root["alphas"] = {r: a[0, b, pos:pos + k] for r, a in alphas.items()}
                info.setdefault("roots", {})[p] = root
        if guide:
            clock.check()
            # Rows padded in (beyond a box's real rows) have C = 0: skip them.
            real = torch.zeros(B, K, dtype=torch.bool, device=C.device)
            for b, pos, p in slots:
                real[b, pos:pos + pairs.rows_of[p]] = True
            verts = _guided_vertices(model, bounds, C, margin_lower.masked_fill(~real, math.inf), alphas)
            for b, pos, p in slots:
                vs = [verts[(b, k)] for k in range(pos, pos + pairs.rows_of[p]) if (b, k) in verts]
                if vs:
                    vertices[p] = torch.stack(vs)
    return results, vertices, info


# ------------------------------------------------------------------------------------ branch and bound

def _branch_and_bound(model, pairs: _Pairs, details, roots, pair_lo, pair_hi, clock, bab_options, try_candidates,
                      log, res) -> str:
    """Run branch and bound on the open pairs; returns 'proved', 'sat', 'timeout' or 'unknown'."""
    from .bab import BabOptions, BabProblem, BabSolver, make_roots
    from .bab.comm import comm_for

    say = log or (lambda msg: None)
    open_idx = [p for p in range(len(pairs)) if details[p].status == "open"]
    if any(p not in roots or pairs.n_real_rows[p] == 0 for p in open_idx):
        say("bab: skipped (a disjunct has no bound to start from)")
        return "unknown"
    opts = bab_options or BabOptions()
    if opts.split == "relu" and not any(n.op is not None and n.op.needs_input_bounds for n in model.graph.nodes):
        say("bab: skipped (no ReLU to split: the bounds are already those of a linear network)")
        return "unknown"
    layout = model.layout
    if log is not None and getattr(layout, "rank", 0) == 0:
        opts.progress = True
    t = time.perf_counter()
    param = next(iter(model.module.parameters()), None)          # where the weights live (DTensors too)
    device = param.device if param is not None else layout.device
    with layout.domain_batches():
        problem = BabProblem(model.graph, layout, model.forward, pairs.C.to(device), pairs.d.to(device),
                             pairs.mask.to(device), pair_lo.to(device), pair_hi.to(device))
        one_process = getattr(layout, "world_size", 1) == 1
        if not one_process and opts.root_iterations == 0:
            opts.root_iterations = opts.beta.iterations     # slopes of split rows are not at hand
        root_domains = make_roots(problem, open_idx, [roots[p]["bounds"] for p in open_idx],
                                  [torch.tensor(details[p].lower, dtype=pairs.d.dtype, device=device)
                                   for p in open_idx],
                                  [roots[p]["alphas"] for p in open_idx])

        def try_points(x, pair, y):
            margins = _margin(y.unsqueeze(0), pairs.C[pair], pairs.d[pair], pairs.mask[pair])[0]
            return try_candidates(x.detach().cpu(), margins.cpu(), pair.tolist())

        open_now = [p for p in range(len(pairs)) if details[p].status == "open"]
        rounds = [0]

        def pgd_from(x, pair):
            """A short PGD from branch and bound's most promising points. Every open pair gets the
            same number of starts (its seeds, padded with its box centre) on every rank, so the
            forward passes line up where they are collectives; no clock check inside (BaB's sync
            handles time for all workers)."""
            k = opts.pgd_points
            starts = {}
            for p in open_now:
                own = x[pair == p][:k].to(pair_lo.device)
                centre = ((pair_lo[p] + pair_hi[p]) / 2).unsqueeze(0)
                starts[p] = torch.cat([own, centre.expand(k - own.shape[0], *centre.shape[1:])])
            rounds[0] += 1
            x_best, margins = _attack_round(model, pairs, open_now, pair_lo, pair_hi, _NoClock(),
                                            AttackOptions(steps=20), restarts=1, seed=1000 + rounds[0],
                                            starts=starts)
            return try_candidates(x_best.detach().cpu(), margins.detach().cpu(), open_now)

        comm = comm_for(layout)
        solver = BabSolver(problem, opts, clock.left, try_points, log=say, comm=comm, pgd=pgd_from)
        outcome = solver.solve(root_domains)
        if outcome.status == "sat":
            found = (res.counterexample, res.confirmed_by) if res.counterexample is not None else None
            res.counterexample, res.confirmed_by = comm.share_counterexample(found)
            if res.counterexample is None:
                raise RuntimeError("branch and bound reported sat without a confirmed counterexample")
    stats = outcome.stats
    res.bounds["bab"] = stats
    res.phases["bab"] = time.perf_counter() - t
    say(f"bab: {outcome.status}: {stats['domains_visited']} domains bounded, {stats['domains_proved']} proved, "
        f"{stats['open_domains']} open, depth {stats['max_depth']}, batch {stats['batch_size']} "
        f"({stats['seconds']:.2f} s)")
    if outcome.status == "proved":
        for p in open_idx:
            details[p].status, details[p].proved_by = "proved", "bab"
    return outcome.status


# ------------------------------------------------------------------------------------------ main

def verify_instance(model, prop, onnx_path: str | None, timeout: float,
                    methods=("crown", "alpha-crown"), attack: bool = True, log=None,
                    attack_options: AttackOptions | None = None, alpha_options=None,
                    bound_batching: str = "region", max_batch: int = 64, bab: bool = True,
                    bab_options=None) -> VerifyResult:
    """Decide one instance. See the module docstring. `log`: a callable taking a str, or None.
    `bab`: run branch and bound (beta-CROWN) on what the bounds leave open, with the time left
    (`bab_options`: a `bab.BabOptions`).

    `onnx_path` is the original ONNX file (plain or gzipped) that confirms counterexamples with
    onnxruntime; None means the file the model was loaded from, or, for a model built from an
    nn.Module, that module as given (then `confirmed_by` is 'torch').
    """
    from .api import normalize_method
    from .selfcheck import check_on_box
    from .specs import violates

    layout = model.layout
    clock = _Clock(timeout, layout)
    say = (lambda msg: log(msg)) if log is not None else (lambda msg: None)
    res = VerifyResult("unknown", None, 0.0)
    pairs = None
    details: list = []

    def finish(verdict, **kw):
        res.verdict = verdict
        for k, v in kw.items():
            setattr(res, k, v)
        if pairs is not None:
            res.details = details
        res.seconds = clock.elapsed()
        say(f"verdict: {verdict} ({res.seconds:.2f} s)" + (f": {res.message}" if res.message else ""))
        return res

    try:
        methods = tuple(normalize_method(m) for m in methods)
        if bound_batching not in ("region", "pair"):
            raise InputSpecError(f"bound_batching must be 'region' or 'pair', not '{bound_batching}'")
        if prop.n_inputs != model.n_inputs or prop.n_outputs != model.n_outputs:
            raise InputSpecError(
                f"{prop.path or 'property'}: declares {prop.n_inputs} inputs / {prop.n_outputs} outputs, "
                f"the network has {model.n_inputs} / {model.n_outputs}")
        if not prop.regions:
            # Every term of the formula is a false constant: nothing can violate it.
            return finish("unsat", decided_by="spec")
        device = model.device                   # every tensor below lives where the weights do
        pairs = _Pairs(prop, model.n_outputs, device=device)
        details = [DisjunctStatus(r, j, k) for (r, j), k in zip(pairs.index, pairs.n_real_rows)]
        region_lo, region_hi = _region_boxes(prop, model.input_shape, device=device)
        model.check_box(region_lo, region_hi)
        pair_region = torch.tensor([r for r, _ in pairs.index], device=device)
        pair_lo, pair_hi = region_lo[pair_region], region_hi[pair_region]
        from .bab.input_bab import alpha_before
        alpha_options = alpha_before(model, pair_lo, pair_hi, bab, bab_options, alpha_options)
        if onnx_path is None and getattr(model.loaded, "onnx_input_name", None) is not None \
                and os.path.isfile(str(model.loaded.source)):
            onnx_path = str(model.loaded.source)          # loaded from ONNX: confirm with that file
        confirm = _Confirmer(model, onnx_path, say)
        # Before bounding: the bound graph must match the original model on this property's boxes.
        check_on_box(model, region_lo, region_hi, confirm.runner(), confirm.what)
        aopts = attack_options or AttackOptions()
        say(f"{len(prop.regions)} region(s), {len(pairs)} disjunct(s), timeout {timeout:g} s")

        def try_candidates(x_best, margins, idx):
            """Confirm the attack's candidates (margin <= 0), best first. Returns True on sat."""
            order = sorted(range(len(idx)), key=lambda i: float(margins[i]))
            for i in order:
                p = idx[i]
                m = float(margins[i])
                if details[p].attack_margin is None or m < details[p].attack_margin:
                    details[p].attack_margin = m
                if not m <= 0:
                    continue
                r = pairs.index[p][0]
                region = prop.regions[r]
                x32 = _inside_box_f32(x_best[i].double().cpu().numpy(), region.lower, region.upper,
                                      region.lower_strict, region.upper_strict)
                if x32 is None:
                    say(f"candidate for region {r} disjunct {pairs.index[p][1]} dropped: no float32 input "
                        f"lies in the box there")
                    continue
                try:
                    y = confirm(x32)
                except Exception as exc:      # cannot run the original model: never sat
                    say(f"could not confirm the counterexample with {confirm.kind}: {type(exc).__name__}: {exc}")
                    return False
                x = x32.astype(np.float64)
                if violates(prop, x, y):          # as written: strict stays strict, no tolerance
                    details[p].status = "violated"
                    res.counterexample = (x, y)
                    res.confirmed_by = confirm.kind
                    say(f"counterexample for region {r} disjunct {pairs.index[p][1]} "
                        f"(margin {m:.3g}), confirmed by {confirm.kind}")
                    return True
                say(f"candidate for region {r} disjunct {pairs.index[p][1]} (margin {m:.3g}) rejected by "
                    f"{confirm.kind}")
            return False

        guided: dict[int, torch.Tensor] = {}      # pair -> bound-guided vertices [n, *S]
        roots: dict[int, dict] = {}               # pair -> where branch and bound starts from

        def attack_round(restarts, seed, phase, starts=None):
            open_idx = [p for p in range(len(pairs)) if details[p].status == "open"]
            if not open_idx:
                return False
            t = time.perf_counter()
            x_best, margins = _attack_round(model, pairs, open_idx, pair_lo, pair_hi, clock, aopts,
                                            restarts, seed, starts)
            found = try_candidates(x_best, margins, open_idx)
            res.phases[phase] = res.phases.get(phase, 0.0) + time.perf_counter() - t
            n0 = max((v.shape[0] for v in (starts or {}).values()), default=0)
            say(f"{phase}: {restarts} restarts" + (f" + {n0} guided start(s)" if n0 else "")
                + f" x {aopts.steps} steps, best margin {float(margins.min()):.4g} ({time.perf_counter() - t:.2f} s)")
            return found

        def check_vertices(vertices, phase):
            """Margins of the bound-guided vertices, for every open pair of the same region."""
            open_idx = [p for p in range(len(pairs)) if details[p].status == "open"]
            if not vertices or not open_idx:
                return False
            t = time.perf_counter()
            for p, v in vertices.items():
                keep = torch.cat([v, guided[p]]) if p in guided else v
                guided[p] = keep[:8]
            pts = torch.cat([v for v in vertices.values()])
            pts_region = torch.cat([torch.full((v.shape[0],), pairs.index[p][0], device=device)
                                    for p, v in vertices.items()])
            with torch.no_grad():
                y = model.forward(pts)                                            # [N, n_out]
            idx = torch.tensor(open_idx, device=device)
            margins = _margin(y.unsqueeze(1).expand(-1, len(idx), -1), pairs.C[idx], pairs.d[idx],
                              pairs.mask[idx])                                  # [N, p]
            same = pts_region.unsqueeze(1) == pair_region[idx].unsqueeze(0)
            margins = margins.masked_fill(~same, math.inf)
            best, arg = margins.min(0)
            found = try_candidates(pts[arg], best, open_idx)
            res.phases[phase] = res.phases.get(phase, 0.0) + time.perf_counter() - t
            say(f"{phase}: {pts.shape[0]} bound-guided vertices, best margin {float(best.min()):.4g}")
            return found

        # 1. attack -------------------------------------------------------------------------
        if attack:
            clock.check()
            if attack_round(aopts.restarts, aopts.seed, "attack"):
                return finish("sat", decided_by="attack")

        # 3. incomplete verification ----------------------------------------------------------
        for method in methods:
            clock.check()
            open_idx = [p for p in range(len(pairs)) if details[p].status == "open"]
            if not open_idx:
                break
            t = time.perf_counter()
            lowers, vertices, info = _bound_pairs(model, method, pairs, open_idx, region_lo, region_hi, clock,
                                                  bound_batching, alpha_options, max_batch, guide=attack)
            roots.update(info.get("roots", {}))
            proved = 0
            for p, lo in lowers.items():
                k_real = pairs.n_real_rows[p]
                vals = lo[:k_real] if k_real > 0 else lo[:0]
                prev = details[p].lower
                cur = vals.tolist()
                if prev is not None and len(prev) == len(cur):
                    cur = [max(a, b) for a, b in zip(prev, cur)]
                details[p].lower = cur
                if k_real > 0 and max(cur) > 0:
                    details[p].status = "proved"
                    details[p].proved_by = method
                    proved += 1
            dt = time.perf_counter() - t
            n_open = sum(d.status == "open" for d in details)
            entry = {"seconds": dt, "proved": proved, "open": n_open, "pairs": len(open_idx)}
            if info["iterations"]:
                entry["iterations"] = info["iterations"]
            res.bounds[method] = entry
            res.phases[method] = dt
            say(f"{method}: proved {proved} of {len(open_idx)} open disjunct(s), {n_open} left ({dt:.2f} s)")
            if n_open == 0:
                return finish("unsat", decided_by=method)
            if attack:
                vertices = {p: v for p, v in vertices.items() if details[p].status == "open"}
                if check_vertices(vertices, "attack-guided"):
                    return finish("sat", decided_by=f"attack ({method}-guided)")

        # 4. branch and bound on what is still open (one quick attack round first) --------------
        extra_rounds = aopts.extra_rounds if attack else 0
        first_extra = 0
        if bab and any(d.status == "open" for d in details):
            if extra_rounds > 0:
                clock.check()
                if attack_round(aopts.restarts, aopts.seed + 1, "attack-extra", guided):
                    return finish("sat", decided_by="attack")
                first_extra = 1
            outcome = _branch_and_bound(model, pairs, details, roots, pair_lo, pair_hi, clock, bab_options,
                                        try_candidates, log, res)
            if outcome == "sat":
                return finish("sat", decided_by="bab")
            if outcome == "proved":
                return finish("unsat", decided_by="bab")
            if outcome == "timeout":
                raise _Timeout()

        # 5. more attack rounds, from the bound-guided vertices and new random starts -----------
        if extra_rounds > first_extra:
            stop_at = time.perf_counter() + max(clock.left(), 0.0) * aopts.extra_budget
            restarts = aopts.restarts * (2 ** first_extra)
            for k in range(first_extra, extra_rounds):
                clock.check()
                if time.perf_counter() >= stop_at:
                    break
                if attack_round(restarts, aopts.seed + 1 + k, "attack-extra", guided):
                    return finish("sat", decided_by="attack")
                restarts *= 2
        bab_stopped = res.bounds.get("bab", {}).get("reason")
        return finish("unknown", **({"message": f"branch and bound stopped: {bab_stopped}"} if bab_stopped else {}))
    except _Timeout:
        res.message = f"time limit of {timeout:g} s reached"
        return finish("timeout")
    except VerifierError as exc:
        res.message = str(exc)
        return finish("error")
    except Exception as exc:  # a bug: report it as 'error' (never unsat), keep the traceback
        res.message = f"internal error: {type(exc).__name__}: {exc}"
        res.traceback = traceback.format_exc()
        return finish("error")
