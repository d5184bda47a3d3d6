"""The stages of the pipeline. Each is small: it reads the instance record, records what it
found there (bounds, margins, a confirmed counterexample) and returns a `Decision` when that
settles the instance, else None. Timeouts are the clock's `TimeLimitReached`.

    Attack          PGD from random starts (and the box centre)
    ManyPairsIbp    IBP first when there are thousands of pairs
    Bound(method)   one incomplete method on the open pairs (+ bound-guided vertices)
    DeferredAttack  the first attack, after the first bound, when there are thousands of pairs
    AttackBeforeBab one more PGD round, from the bound-guided vertices
    BranchAndBound  beta-CROWN branch and bound on what is still open
    FinalAttack     the remaining PGD rounds, within a share of the time left
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from ..bab import BabOptions
from ..errors import TimeLimitReached
from ..methods import AlphaOptions
from .attack_cost import too_costly
from .attacks import attack_open, check_vertices, helper_round
from .bab_stage import branch_and_bound
from .bounds import bound_pairs
from .instance import Instance
from .many_boxes import box_restarts, box_steps, skipped
from .result import Counterexample, Decision


@dataclass
class Attack:
    """The first attack: `restarts` random starts per open pair. With more open pairs than
    `defer_above` (thousands of disjuncts) it waits for the first bound (`DeferredAttack`)."""
    name: str = "attack"

    def run(self, inst: Instance) -> Decision | None:
        inst.clock.check()
        n_open = len(inst.open_pairs())
        if n_open > inst.attack.defer_above:
            inst.attack_deferred = True
            inst.say(f"attack: deferred after the first bound ({n_open} pairs > {inst.attack.defer_above})")
            return None
        if too_costly(inst, n_open):            # the round would eat the time limit (attack_cost)
            inst.attack_deferred = True
            return None
        return _sat(inst, attack_open(inst, inst.attack.restarts, inst.attack.seed, "attack", spread=True), "attack")


@dataclass
class DeferredAttack:
    """The first attack when `Attack` deferred it: only on the pairs the first bound left open,
    its restarts cut so that pairs x restarts stays within `deferred_samples` (a round's cost
    follows the pairs left, not the property's size), and with `input_split` to a few per
    perturbed input (`many_boxes.box_restarts`). Every rank sees the same open pairs."""
    name: str = "attack"
    input_split: bool = False

    def run(self, inst: Instance) -> Decision | None:
        if not inst.attack_deferred:
            return None
        inst.attack_deferred = False
        n_open = len(inst.open_pairs())
        if n_open == 0:
            return None
        inst.clock.check()
        opts = inst.attack
        restarts = max(1, min(opts.restarts, opts.deferred_samples // n_open))
        if not self.input_split:
            return _sat(inst, attack_open(inst, restarts, opts.seed, "attack", spread=True), "attack")
        inst.attack = dataclasses.replace(opts, steps=box_steps(opts.steps))
        try:
            return _sat(inst, attack_open(inst, box_restarts(inst, restarts), opts.seed, "attack", spread=True), "attack")
        finally:
            inst.attack = opts


@dataclass
class Bound:
    """One incomplete method on the open pairs; then (with `guide`) the bound-guided vertices of
    the rows it left unproved are tried as counterexamples."""
    method: str
    batching: str = "region"
    alpha_options: AlphaOptions | None = None
    max_batch: int = 64
    guide: bool = True
    side_attack: bool = False        # the attack-extra round meanwhile on ranks that would wait (dp)
    skip_above: int | None = None    # skipped with more open pairs than this (many_boxes.py)

    def run(self, inst: Instance) -> Decision | None:
        inst.clock.check()
        open_idx = inst.open_pairs()
        if not open_idx:
            return None
        if skipped(inst, self.method, len(open_idx), self.skip_above):
            return None
        t = time.perf_counter()
        side = helper_round(inst, inst.attack.seed + 1) if self.side_attack and inst.attack.extra_rounds > 0 else None
        out = bound_pairs(inst, self.method, open_idx, self.batching, self.alpha_options, self.max_batch,
                          self.guide, side=side)
        inst.roots.update(out.roots)
        if out.side and all(v is not None for v in out.side):
            # AttackBeforeBab's round, run whole by the other dp ranks meanwhile
            inst.extra_rounds_done = 1
            inst.add_phase("attack-extra", max(s for _, s in out.side))
        found = next((v[0] for v in out.side if v is not None and v[0] is not None), None)
        if found is not None:
            return _sat(inst, found, "attack")
        proved = sum(inst.bounded(p, lo[:inst.pairs.n_real_rows[p]].tolist(), self.method)
                     for p, lo in out.lowers.items())
        dt = time.perf_counter() - t
        n_open = len(inst.open_pairs())
        entry = {"seconds": dt, "proved": proved, "open": n_open, "pairs": len(open_idx)}
        if out.iterations:
            entry["iterations"] = out.iterations
        inst.result.bounds[self.method] = entry
        inst.result.phases[self.method] = dt
        inst.say(f"{self.method}: proved {proved} of {len(open_idx)} open disjunct(s), {n_open} left ({dt:.2f} s)")
        if n_open == 0:
            return Decision("unsat", self.method)
        if not self.guide:
            return None
        vertices = {p: v for p, v in out.vertices.items() if inst.details[p].status == "open"}
        return _sat(inst, check_vertices(inst, vertices, "attack-guided"), f"attack ({self.method}-guided)")


@dataclass
class ManyPairsIbp:
    """With more than `min_pairs` open pairs (thousands of disjuncts, e.g. nn4sys lindex), IBP
    first: one forward pass per few thousand boxes. The pairs it proves (sound bounds: `unsat`
    needs every pair proved) are spared the costlier methods and the attack."""
    min_pairs: int = 256
    max_batch: int = 4096

    def run(self, inst: Instance) -> Decision | None:
        if len(inst.open_pairs()) <= self.min_pairs:
            return None
        return Bound("ibp", "region", None, self.max_batch, guide=False).run(inst)


@dataclass
class AttackBeforeBab:
    """One quick attack round, from the bound-guided vertices, before branch and bound."""
    name: str = "attack-extra"
    skip_above: int | None = None    # skipped with more open pairs than this (many_boxes.py)

    def run(self, inst: Instance) -> Decision | None:
        if inst.attack.extra_rounds <= 0 or not inst.open_pairs() or inst.extra_rounds_done:
            return None                  # (done already: during the last bound, `Bound.side_attack`)
        if skipped(inst, self.name, len(inst.open_pairs()), self.skip_above):
            return None
        inst.clock.check()
        found = attack_open(inst, inst.attack.restarts, inst.attack.seed + 1, "attack-extra", inst.guided,
                            spread=True)
        inst.extra_rounds_done = 1
        return _sat(inst, found, "attack")


@dataclass
class BranchAndBound:
    options: BabOptions | None = None
    progress: bool = False           # a progress bar on stderr (rank 0)
    name: str = "bab"

    def run(self, inst: Instance) -> Decision | None:
        if not inst.open_pairs():
            return None
        outcome = branch_and_bound(inst, self.options, self.progress)
        if outcome == "sat":
            return Decision("sat", "bab")
        if outcome == "proved":
            return Decision("unsat", "bab")
        if outcome == "proved-output-constraints":
            return Decision("unsat", "output-constraints")
        if outcome == "timeout":
            raise TimeLimitReached()
        return None


@dataclass
class FinalAttack:
    """The remaining attack rounds (restarts doubled each round), from the bound-guided vertices
    and new random starts, using at most `extra_budget` of the time left."""
    name: str = "attack-extra"

    def run(self, inst: Instance) -> Decision | None:
        opts, first = inst.attack, inst.extra_rounds_done
        stop_at = time.perf_counter() + max(inst.clock.left(), 0.0) * opts.extra_budget
        restarts = opts.restarts * (2 ** first)
        for k in range(first, opts.extra_rounds):
            inst.clock.check()
            if time.perf_counter() >= stop_at:
                break
            found = attack_open(inst, restarts, opts.seed + 1 + k, "attack-extra", inst.guided)
            if found is not None:
                return _sat(inst, found, "attack")
            restarts *= 2
        return None


def _sat(inst: Instance, found: Counterexample | None, decided_by: str) -> Decision | None:
    """`sat` when an attack returned a confirmed counterexample (recorded in the instance)."""
    if found is None:
        return None
    inst.accept(found)
    return Decision("sat", decided_by)
