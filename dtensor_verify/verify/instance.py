"""The instance record every stage reads and updates: the property's (region, disjunct) pairs as
padded tensors, their status, the clock, the counterexample checker and the result so far."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..api import BoundedModel
from ..errors import InputSpecError, TimeLimitReached
from ..specs import Property
from .confirm import Confirmer
from .result import AttackOptions, Counterexample, DisjunctStatus, VerifyResult


class NoClock:
    """For attacks inside branch and bound, whose workers stop together at their sync."""

    def check(self):
        pass


class Clock:
    """The instance's time limit. `check` raises `TimeLimitReached` once every rank is past it."""

    def __init__(self, timeout: float, layout):
        from .. import deadline

        self.timeout = float(timeout)
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.deadline = self.t0 + max(float(timeout), 0.0)
        self.layout = layout
        # On a GPU: wait for the queued kernels (once a second, and at every check near the limit)
        # before reading the time (deadline.device_wait): the clock measures work done, not launched.
        self.wait = deadline.device_wait(getattr(layout, "device", None))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def cpu_elapsed(self) -> float:
        return time.process_time() - self.cpu0

    def left(self) -> float:
        if self.wait is not None:
            self.wait(self.deadline - time.perf_counter())
        return self.deadline - time.perf_counter()

    def check(self):
        if self.wait is not None:
            self.wait(self.deadline - time.perf_counter())
        # Every rank must agree before stopping (collectives must stay in step).
        if self.layout.all_true(time.perf_counter() >= self.deadline):
            raise TimeLimitReached()


class Pairs:
    """All (region, disjunct) pairs as padded tensors: C [P, K, n_out], d and mask [P, K].

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
        P, K = len(rows), max((c.shape[0] for c, _, _ in rows), default=1)
        # Filled pair by pair in numpy (120 000 pairs: well under a second; torch slice writes
        # took 10 s), then converted and moved to the model's device in one copy each.
        C_all, d_all = np.zeros((P, K, n_out)), np.zeros((P, K))
        mask = np.zeros((P, K), dtype=bool)
        for p, (C, d, _) in enumerate(rows):
            k = C.shape[0]
            C_all[p, :k], d_all[p, :k], mask[p, :k] = C, d, True
        self.rows_of = [c.shape[0] for c, _, _ in rows]
        self.C = torch.from_numpy(C_all).to(device=device, dtype=dtype)
        self.d = torch.from_numpy(d_all).to(device=device, dtype=dtype)
        self.mask = torch.from_numpy(mask).to(device)

    def __len__(self):
        return len(self.index)


def region_boxes(prop, input_shape, dtype=torch.float32, device=None):
    """The regions' input boxes, (lower, upper) [R, *input_shape]."""
    lo = torch.from_numpy(np.stack([np.asarray(r.lower, dtype=np.float64) for r in prop.regions]))
    hi = torch.from_numpy(np.stack([np.asarray(r.upper, dtype=np.float64) for r in prop.regions]))
    return (lo.to(device, dtype).reshape(-1, *input_shape), hi.to(device, dtype).reshape(-1, *input_shape))


@dataclass
class Instance:
    """One instance on its way to a verdict. Stages read it and record what they found in it."""
    model: BoundedModel                 # placed or not
    prop: Property
    pairs: Pairs
    details: list                       # DisjunctStatus per pair
    region_lo: torch.Tensor             # [R, *S]
    region_hi: torch.Tensor
    pair_region: torch.Tensor           # [P] long
    pair_lo: torch.Tensor               # [P, *S] the box of each pair (its region's)
    pair_hi: torch.Tensor
    clock: Clock
    confirm: Confirmer
    say: Callable[[str], None]          # progress messages
    attack: AttackOptions
    result: VerifyResult
    guided: dict = field(default_factory=dict)     # pair -> bound-guided vertices [n, *S] (best 8)
    roots: dict = field(default_factory=dict)      # pair -> bab.RootState (where BaB starts)
    extra_rounds_done: int = 0                     # attack rounds after the bounds so far
    attack_deferred: bool = False                  # the first attack waits for the first bound
    crown_bounds: dict = field(default_factory=dict)   # region -> CROWN's bounds of its box (crown_reuse.py)

    def open_pairs(self) -> list[int]:
        return [p for p, d in enumerate(self.details) if d.status == "open"]

    def add_phase(self, phase: str, seconds: float) -> None:
        self.result.phases[phase] = self.result.phases.get(phase, 0.0) + seconds

    def note_margins(self, idx, margins) -> None:
        """Keep each pair's best attack margin (max_rows(C y - d) at the best point tried)."""
        for p, m in zip(idx, margins):
            m = float(m)
            if self.details[p].attack_margin is None or m < self.details[p].attack_margin:
                self.details[p].attack_margin = m

    def accept(self, found: Counterexample) -> None:
        """A confirmed counterexample: its pair is violated, the result carries it."""
        self.details[found.pair].status = "violated"
        self.result.counterexample = (found.x, found.y)
        self.result.confirmed_by = found.confirmed_by

    def bounded(self, p: int, lower: list, method: str) -> bool:
        """Record lower bounds of pair p's real rows of C y - d (the best of all methods so far);
        True when they prove it (some row's bound > 0)."""
        prev, d = self.details[p].lower, self.details[p]
        if prev is not None and len(prev) == len(lower):
            lower = [max(a, b) for a, b in zip(prev, lower)]
        d.lower = lower
        if self.pairs.n_real_rows[p] > 0 and max(lower) > 0:
            d.status, d.proved_by = "proved", method
            return True
        return False


def check_dimensions(model, prop) -> None:
    if prop.n_inputs != model.n_inputs or prop.n_outputs != model.n_outputs:
        raise InputSpecError(
            f"{prop.path or 'property'}: declares {prop.n_inputs} inputs / {prop.n_outputs} outputs, "
            f"the network has {model.n_inputs} / {model.n_outputs}")


def open_instance(model, prop, onnx_path, clock: Clock, say, attack: AttackOptions, result: VerifyResult
                  ) -> Instance:
    """Build the record of a property with at least one region (raises a VerifierError on bad
    input, or when the bound graph disagrees with the original model on the property's boxes)."""
    from .. import selfcheck

    device = model.device                   # every tensor below lives where the weights do
    dtype = model.dtype                     # float64 models are verified in float64
    pairs = Pairs(prop, model.n_outputs, dtype=dtype, device=device)
    details = [DisjunctStatus(r, j, k) for (r, j), k in zip(pairs.index, pairs.n_real_rows)]
    result.details = details
    region_lo, region_hi = region_boxes(prop, model.input_shape, dtype=dtype, device=device)
    model.check_box(region_lo, region_hi)
    pair_region = torch.tensor([r for r, _ in pairs.index], device=device)
    if onnx_path is None and model.loaded.onnx_input_name is not None and os.path.isfile(str(model.loaded.source)):
        onnx_path = str(model.loaded.source)          # loaded from ONNX: confirm with that file
    confirm = Confirmer(model, prop, onnx_path, say)
    # Before bounding: the bound graph must match the original model on this property's boxes.
    selfcheck.check_on_box(model, region_lo, region_hi, confirm.runner(), confirm.what)
    say(f"{len(prop.regions)} region(s), {len(pairs)} disjunct(s), timeout {clock.timeout:g} s")
    return Instance(model, prop, pairs, details, region_lo, region_hi, pair_region, region_lo[pair_region],
                    region_hi[pair_region], clock, confirm, say, attack, result)
