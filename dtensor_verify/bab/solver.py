"""Branch and bound with beta-CROWN: pick -> split -> bound -> prune -> add, on a clock.

Each round a worker takes its worst open domains (smallest margin first), splits each on the
neuron its branching heuristic chose, bounds all children in one batch with beta-CROWN (slopes
and multipliers warm-started from the parent), drops the children whose bound proves them,
tries the vertex that minimises each open child's linear bound as a counterexample, chooses
the next split of the rest and stores them (while the frontier leaves room in the batches, a wide
round splits each parent on its few best neurons at once: `wide.py`). Workers (dp groups of
ranks, see `comm.py`) agree every round on whether to stop: a confirmed counterexample anywhere,
no open domain anywhere, a domain that cannot be split any more, or the clock.

Domains carry their kind of split (`split_kinds.py`): ReLU, general (an activation neuron's interval
cut in two, `general_split.py`) or, with few perturbed inputs (`split='auto'`), input splits (halves
of the parent's sub-box, whose intermediate bounds are recomputed on the half box).

Soundness: a domain leaves the store only when its bound proves it (`margin > 0`, the bound of
`C y - d` on some row of its disjunct is positive on every input of the domain); "proved" is
reported only when no worker holds an open domain and none was given up.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import torch

from ..methods.beta_crown import BetaOptions, BetaResult, beta_crown
from . import input_bab
from .branching import choose, choose_ranked, context_for, mixed
from .batch_growth import growth_for
from .budget import auto_batch_size, free_memory_bytes, out_of_memory, release_cached_memory
from .comm import LocalComm
from .domain_codec import codec_for
from .domains import NO_DECISION, Domains, DomainStore
from .options import BabOptions  # noqa: F401 (the solver's options; re-exported)
from .parents import pop_parents
from .exact_hooks import decide_leaves, prepare_exact, settle_few_unstable
from .children import children_of, shares_children
from .general_refresh import refresh_children
from .problem import BabProblem, BabResult, BabStats, PhaseTimer
from .store_limit import store_limit
from .vertex_attack import attack_vertices
from .wide import max_width_for, parents_for, width_for, with_more

# (x [m, *S], pair [m], y [m, n_out]) -> a confirmed counterexample among the points, or None
ConfirmFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]
# (x [m, *S], pair [m]) -> a confirmed counterexample of a short PGD from the points, or None
PgdFn = Callable[[torch.Tensor, torch.Tensor], object]


class BabSolver:
    """One worker's branch and bound. Under a layout whose ranks share each bounding step
    (`lockstep`: FSDP gathers, streamed shards and early-stop votes are collectives), every rank
    runs every step of every round, with an empty batch when it has nothing to do."""

    def __init__(self, problem: BabProblem, opts: BabOptions, time_left: Callable[[], float], confirm: ConfirmFn,
                 log=None, comm=None, pgd: PgdFn | None = None):
        self.problem = problem
        self.opts = opts
        self.time_left = time_left              # seconds left (this rank's clock; no collective)
        self.confirm = confirm                  # checks candidate points; returns what it confirmed
        self.pgd = pgd                          # a short PGD from promising points; the same
        self.seeds = None                       # the most promising open domains' vertices, their pairs
        self.log = log or (lambda msg: None)
        self.comm = comm or LocalComm()
        # PGD seeds per worker: the workers share one process's number (the attacks are spread, not
        # repeated: each worker's share of the most promising domains)
        self.pgd_points = max(1, -(-opts.pgd_points // self.comm.workers))
        self.lockstep = problem.layout.world_size > 1
        self.store = DomainStore()
        self.stats = BabStats()
        self.exhausted = 0                      # open domains with no neuron left to split
        self.exhausted_reason: str | None = None    # ... and why they are left open
        self.exact = None                       # the LP oracle of leaf domains (bab/exact.py)
        self.counterexample = None              # what `confirm` / `pgd` confirmed on this worker
        self.template: Domains | None = None    # an empty batch of the right shapes
        self._step_seconds = 0.0                # recent duration of one beta-CROWN step
        self.mode = input_bab.mode_of(problem, opts)       # 'relu' | 'input': the kind of split
        self.batch = auto_batch_size(problem, opts, problem.d.device, free_memory_bytes, self.mode)
        # measured rounds (CUDA); not where a round may hold other workers' children (no OOM retry there)
        self.growth = growth_for(opts, problem.d.device, self.lockstep or shares_children(self), self.mode)
        self.stats.first_batch = self.batch
        self.max_open = opts.max_domains or 0   # set from memory when solving starts
        self.limit = None                       # ... and why (store_limit.StoreLimit)
        self._late = False                      # a round stored its domains unbranched (out of time)
        self.loops = 0                          # rounds of the search: the same count on every worker
        self._round_seconds = 0.0               # input splitting: the last round (its sweeps can't stop early)
        self._child_seconds, self._room = None, None   # ... its seconds per child; children this round
        self.branching = opts.input_branching if self.mode == "input" else mixed(opts.branching, problem)
        candidates = opts.input_candidates if self.mode == "input" else opts.candidates
        self.ctx = context_for(problem, self._bound_once, candidates)
        self.max_width = max_width_for(opts, problem, self.mode, self.branching)    # wide rounds (wide.py)
        self.width, self._open_all = 1, 0       # this round's split width; open domains, all workers
        self._received = False                  # this round's children include another worker's
        self._wide_batch = self.batch           # every rank's smallest batch (solve): one width everywhere

    @property
    def found(self) -> bool:
        return self.counterexample is not None

    # -- bounding --------------------------------------------------------------------------
    def _out_of_time(self) -> bool:
        """True once the time left would not cover the rest of a round: a couple of optimisation
        steps (measured) for the bookkeeping after the last one, so the run ends by its limit."""
        # Sticky once a round stored unbranched domains: the next sync must stop the run.
        return self._late or self.time_left() <= max(0.1, 2.0 * self._step_seconds, self._round_seconds)

    def _bound(self, domains: Domains, iterations: int) -> BetaResult:
        p = self.problem
        opts = BetaOptions(**{**self.opts.beta.__dict__, "iterations": iterations})
        last = [time.perf_counter()]

        def on_step(it, score):
            now = time.perf_counter()
            self._step_seconds = max(0.5 * self._step_seconds, now - last[0])
            last[0] = now
            # Out of time: stop optimising (every rank agrees inside the loop); the round ends
            # and the next sync stops every worker together.
            return self._out_of_time()

        return beta_crown(p.graph, p.bounds_of(domains), p.C[domains.pair], p.d[domains.pair],
                          p.row_mask[domains.pair], domains.alphas, domains.betas, domains.signs, p.layout,
                          opts, on_step=on_step)

    def _bound_once(self, domains: Domains, refresh: bool = False, decision: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Lower bounds of children, no optimisation (branching's trial splits). `refresh`: their
        boxes' intermediate bounds recomputed (input splits); `decision`: the splits that made them
        (general splits: the layers behind each cut bounded again first, as the round's children
        are; an empty child's bound is +inf)."""
        with torch.no_grad():
            if refresh:
                domains.bounds = input_bab.refreshed(self.problem, domains, self.lockstep)
            if decision is not None and self.problem.general:
                refresh_children(self.problem, domains, decision, self.lockstep)
                return torch.maximum(self._bound(domains, 0).lower, domains.lower)
            return self._bound(domains, 0).lower

    def _proved_cheaply(self, kids: Domains) -> torch.Tensor:
        """[m] bool: children of a wide round's level that one sweep (no optimisation) proves; the
        others keep that bound as their floor (a sound bound of their region)."""
        with PhaseTimer(self.stats, "bounding"):
            kids.lower = torch.maximum(self._bound_once(kids), kids.lower)
        return self.problem.margins(kids.lower, kids.pair) > 0

    # -- one round's steps -----------------------------------------------------------------
    def _settle(self, kids: Domains, result, parent_lower: torch.Tensor | None):
        """Children's bounds in, proved ones out, the rest branched and stored."""
        p = self.problem
        if self.mode == "input":
            kids = input_bab.with_boxes(p, kids)       # a domain without a box has its pair's
        lower = result.lower if parent_lower is None else torch.maximum(result.lower, parent_lower)
        kids.lower = lower
        kids.alphas, kids.betas = result.alphas, result.betas
        margins = p.margins(lower, kids.pair)
        proved = margins > 0
        self.stats.proved += int(proved.sum())
        open_idx = (~proved).nonzero().flatten()
        rest = kids.index(open_idx)
        lA_in = result.lA.get(p.graph.input_name)
        if self.mode == "input" and self.opts.input_clip and result.iterations == 0 and lA_in is not None:
            rest.box = input_bab.clip_boxes(p, rest, lA_in[open_idx], result.lower[open_idx])
        with PhaseTimer(self.stats, "attack"):
            found = attack_vertices(self, rest, None if lA_in is None else lA_in[open_idx])
            self.counterexample = self.counterexample or found or None
            # Under lockstep every rank takes the PGD step (its forward passes are collectives).
            if self.mode == "input" and (self.lockstep or not self.found) \
                    and self.loops % self.opts.input_attack_every == 0:
                found = input_bab.attack_boxes(p, rest, self.pgd_points, self.confirm, self.lockstep)
                self.counterexample = self.counterexample or found or None
        if self.found and not self.lockstep:
            return
        if open_idx.numel() == 0 and not self.lockstep:
            return
        margins = margins[open_idx]
        late = self._out_of_time()
        if self.lockstep:
            late = p.layout.all_true(late)
        if late:
            # Out of time: the run stops at the next sync. Keep the open domains (unbranched)
            # so that they count as open: dropping them would read as proved.
            self._late = True
            self.store.push(rest, margins)
            return
        if not self.lockstep or p.layout.splits_domains:      # each rank its own domains: exact LPs
            rest, margins, open_idx = settle_few_unstable(self, rest, margins, open_idx)
            if not self.lockstep and (self.found or len(rest) == 0):
                return
        lA = {r: a[open_idx] for r, a in result.lA.items() if r in p.scored}
        if self.growth is not None:
            self.growth.branching()
        with PhaseTimer(self.stats, "branching"):
            if self.max_width > 1:      # the best few, for wide rounds
                ranked = choose_ranked(self.branching, rest, lA, self.ctx, self.max_width)
                rest.decision, rest.more = ranked[:, 0].contiguous(), ranked[:, 1:].contiguous()
            else:
                rest.decision = choose(self.branching, rest, lA, self.ctx)
        if self.growth is not None:
            self.growth.branched(len(rest))
        stuck = rest.decision[:, 0] == NO_DECISION
        if bool(stuck.any()):
            # Every neuron of these domains is fixed, yet the bound does not prove them (beta's
            # optimisation stopped short of the exact bound): the network is linear there.
            decide_leaves(self, rest.index(stuck))
            rest, margins = rest.index(~stuck), margins[~stuck]
        self.store.push(rest, margins)

    def _prepare_exact(self):
        prepare_exact(self)

    def add_roots(self, roots: Domains):
        """Bound the roots (their slopes come from alpha-CROWN), then branch them."""
        with PhaseTimer(self.stats, "bounding"):
            result = self._bound(roots, self.opts.root_iterations)
        self.stats.iterations += result.iterations
        self._settle(roots, result, roots.lower)

    def _store_limit(self, per_domain: int, held: int = 0) -> int:
        """Open domains this worker may keep (`store_limit.py`: max_domains, or what memory holds,
        never less than a floor from the device's total memory); every worker agrees on the
        smallest, so all stop in the same round. `held`: domains stored now (asked again when full)."""
        self.limit = store_limit(per_domain, self.opts.store_fraction, self.batch * 4, self.problem.d.device,
                                 self.opts.max_domains, held, self.opts.host_fraction)
        if self.limit.host:         # a GPU's store: the device's part, the rest in host memory
            self.store.keep, self.store.host = self.limit.domains, torch.device("cpu")
        return self.comm.agree_min(self.limit.total)

    def round(self):
        # Worst first, unless the queue is over half full: then the most promising domains (input
        # splitting: the deepest, input_bab.pop_crowded), likeliest to be proved and leave the queue.
        crowded = len(self.store) > self.max_open // 2
        # Wide rounds: the frontier over all workers against their children per round (wide.py).
        capacity = (self.opts.wide_capacity or 2 * min(self.batch, self._wide_batch)) * self.comm.workers
        self.width = width_for(self._open_all, capacity, self.max_width)
        k = parents_for(self.batch, self.width)
        if self.mode == "input":
            self._room = input_bab.room_this_round(self.batch, self._child_seconds, self.time_left())
            k = max(1, min(k, self._room // 2))
        parents, margins = pop_parents(self, k, crowded)
        if parents is None:
            if not self.lockstep and not shares_children(self):
                return
            parents = self.template
        t, before = time.perf_counter(), self.stats.bounded
        self._received = False
        if self.growth is not None:
            self.growth.start()
        try:
            self._bound_children(parents)
            if self.growth is not None:
                self.batch = self.growth.after(self.batch, self.stats.bounded - before)
            if self.mode == "input" or self.problem.general:     # (general: refreshed layers)
                # Never lowered: the reserve must not shrink between a round that stored its domains
                # unbranched (out of time) and the sync that stops the run.
                self._round_seconds = max(self._round_seconds, time.perf_counter() - t)
                if self.stats.bounded > before:     # (not a round that only waited for others' children)
                    self._child_seconds = (time.perf_counter() - t) / (self.stats.bounded - before)
        except Exception as exc:
            # One worker alone (no collective inside a round) can take a smaller batch: the
            # parents go back to the queue unchanged, so no domain is lost (a lost domain would
            # read as proved). Under a sharded layout the ranks would fall out of step: error.
            kids = len(parents) << self.width       # (at most: wide rounds, wide.py)
            # Children received from another worker (`balance`) have no parent here to go back.
            if self.lockstep or self._received or not out_of_memory(exc) or kids <= 2:
                raise
            self.store.push(parents, margins)
            self.batch = max(1, kids // 4)          # half the children (a narrower width follows)
            if self.growth is not None:
                self.growth.out_of_memory(self.batch)
            self.stats.memory_retries += 1
            release_cached_memory(parents.pair.device)
            self.log(f"bab: out of memory on {kids} children; batch now {self.batch} parents")

    def _bound_children(self, parents: Domains):
        p = self.problem
        kids = children_of(self, parents)
        if shares_children(self):
            with PhaseTimer(self.stats, "sync"):
                mine = len(kids)
                kids = self.comm.balance(kids, self.store.codec if self.store.shared_codec else None)
                self._received = len(kids) > mine
            if len(kids) == 0 and not self.lockstep:
                return
        if len(kids):
            self.stats.batch_sizes.append(len(kids))
            self.stats.max_depth = max(self.stats.max_depth, int(kids.depth.max()))
        steps = self.opts.input_iterations if self.mode == "input" else self.opts.beta.iterations
        with PhaseTimer(self.stats, "bounding"):
            result = self._bound(kids, steps)
        if self.growth is not None:
            self.growth.bounded(len(kids))
        self.stats.iterations += result.iterations
        self.stats.bounded += len(kids)
        self._settle(kids, result, kids.lower)

    # -- the loop --------------------------------------------------------------------------
    def solve(self, roots: Domains) -> BabResult:
        """Decide the roots. Every worker calls this with the same roots; the comm says which
        worker starts with them (the others get theirs by rebalancing)."""
        if self.mode == "input":
            roots = input_bab.with_boxes(self.problem, roots)
        roots = with_more(roots, self.max_width - 1)
        self.template = roots.index(torch.zeros(0, dtype=torch.long, device=roots.pair.device))
        if self.opts.derive_bounds:
            self.store.codec = codec_for(self.problem, self.mode, roots)
            # Domains travel between workers packed only where every worker's codec is the same.
            fp = self.store.codec.fingerprint()
            least, most = self.comm.agree_min(fp), -self.comm.agree_min(-fp)     # (both, on every rank)
            self.store.shared_codec = fp != 0 and least == most == fp
        stored = self.store.codec.pack(roots) if self.store.codec is not None else roots
        self.max_open = self._store_limit(max(1, stored.nbytes() // max(1, len(roots))))
        self._wide_batch = self.comm.agree_min(self.batch)     # (lockstep ranks take each level together)
        if self.lockstep:
            self._prepare_exact()           # may gather sharded weights: every rank, here
        bar = None
        try:
            if self.comm.owns_roots:
                self.add_roots(roots)
            elif self.lockstep:
                self.add_roots(self.template)
            if self.opts.progress and self.comm.is_leader:
                from tqdm import tqdm
                bar = tqdm(desc="bab", unit="dom", file=sys.stderr, dynamic_ncols=True, leave=False)
            loops = 0
            while True:
                done = self._agree(bar, loops)
                if done is not None:
                    return done
                loops += 1
                self.loops = loops      # (stats.rounds counts this worker's rounds with domains only)
                with PhaseTimer(self.stats, "sync"):
                    self.comm.rebalance(self.store, self.batch)
                self.round()
                if self.pgd is not None and loops % self.opts.pgd_every == 0:
                    self._pgd_step()
        finally:
            if bar is not None:
                bar.close()

    def _agree(self, bar, loops: int) -> BabResult | None:
        """Every worker's state, reduced; the result when the search stops (on every rank alike)."""
        with PhaseTimer(self.stats, "sync"):
            state = self.comm.sync(len(self.store), self.store.worst_margin(), self.found, self.exhausted,
                                   self.stats.bounded, self._out_of_time())
        self.stats.global_margin = state.worst_margin
        self._open_all = state.open
        self.stats.visited_all = state.visited
        if bar is not None:
            bar.n = state.visited
            bar.set_postfix_str(f"open {state.open} worst {state.worst_margin:.4g}", refresh=True)
        if state.found:
            return self._result("sat")
        if state.open == 0 and state.exhausted:
            return self._result("unknown", self.exhausted_reason or
                                f"{state.exhausted} fully split domain(s) left undecided")
        if state.open == 0:
            return self._result("proved")
        if state.time_up:
            return self._result("timeout")
        if state.too_many(self.max_open) and self.limit is not None:    # every worker asks memory again
            self.max_open = max(self.max_open, self._store_limit(self.limit.per_domain, self.store.on_device()))
        if state.too_many(self.max_open):
            return self._result("unknown", self.limit.reason(self.max_open) if self.limit else "too many open domains")
        if self.opts.max_rounds is not None and loops >= self.opts.max_rounds:
            return self._result("unknown", f"stopped after {loops} rounds")   # the same on every rank
        return None

    def _pgd_step(self):
        """Every rank takes this step in the same rounds (PGD's forward passes are collectives
        under some layouts), with its own seeds or none (no points, shaped like the input)."""
        with PhaseTimer(self.stats, "attack"):
            seeds = self.seeds if self.seeds is not None else (self.problem.box_lower[:0], self.template.pair)
            self.counterexample = self.counterexample or self.pgd(*seeds) or None

    def stopped_inside_round(self) -> BabResult:
        """The result when the clock stopped a round from inside (one process, `deadline.py`):
        `timeout` with the counts so far, or `sat` where a counterexample was already confirmed.
        The round's parents were taken and not stored again, so `open_domains` is a floor."""
        return self._result("sat") if self.found else self._result("timeout", "time limit reached inside a round")

    def _result(self, status: str, why: str | None = None) -> BabResult:
        st = self.stats
        st.ended, st.cpu_ended = time.perf_counter(), time.process_time()
        st.open_domains, st.exhausted, st.batch_per_worker = len(self.store), self.exhausted, self.batch
        st.batch_grown = self.growth.grown if self.growth is not None else 0
        st.spilled, st.spills, st.refills = self.store.spilled(), self.store.spills, self.store.refills
        st.open_domain_limit, st.workers, st.reason = self.max_open, self.comm.workers, why
        if self.exact is not None:
            st.exact_lp = self.exact.summary()
        st.split = self.mode
        return BabResult(status, st, self.counterexample)
