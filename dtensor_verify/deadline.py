"""The run's time limit inside long bound computations (issue 21).

A stage checks its instance's clock between the calls it makes, but one call can be long: on the
vit_2023 ibp_3_3_8 model a CROWN pass is 24 intermediate sweeps of up to 14,739 rows each, and one
alpha-CROWN step redoes those sweeps with autograd and then their backward pass. Benchmark rows
ended 73-87 s after a 98.8 s limit there. The bound methods therefore ask the deadline that the
caller set around them, without a clock argument threaded through every function:

    with deadline.checking(clock.check, clock_left, layout):    # verify/bounds.py, per call
        run_method(...)

* `check()` at coarse points (each intermediate node's CROWN pass, each chunk of its rows, each
  start node's sweep of an alpha-CROWN step): every rank of a shard group reaches them in step, so
  the clock's collective (`Clock.check` asks `all_true`) stays in step.
* `check_fine()` at every op of a backward sweep and, through gradient hooks, in an alpha-CROWN
  step's backward pass: only in one process (no collective), where it costs one `perf_counter`.
* `ends_within(s)`: True (on every rank) when the limit is less than `s` seconds away: alpha-CROWN
  does not start a step it cannot finish (it keeps the best bounds so far, all sound).
* `sweep_rows(...)`: on a CPU, in one process, wide sweeps go in row chunks short enough that the
  checks between their ops come often (one op over all 14,739 rows took minutes there).
* `device_wait(device)`: on a GPU the run's clock (`verify.instance.Clock`) waits for the device's
  queued work (once a second, and at every check near the limit) before it reads the time, so a
  check measures the work done, not the kernels launched.

Without a deadline set (the API, branch and bound, tests) every call is a no-op. The limit raises
the clock's `TimeLimitReached`, which the pipeline turns into `timeout`, never a verdict.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Deadline:
    check: Callable[[], None]               # raises TimeLimitReached once the limit passed (agreed by all ranks)
    left: Callable[[], float]               # seconds left on this rank's clock (no collective)
    agree: Callable[[bool], bool]           # all ranks' `and` of a flag (the layout's all_true)
    fine: bool                              # one process: checks at every op are allowed
    short_sweeps: bool = True               # CPU sweeps in row chunks (`sweep_rows`)


_current: ContextVar[Deadline | None] = ContextVar("dtensor_verify_deadline", default=None)


@contextmanager
def checking(check: Callable[[], None], left: Callable[[], float], layout, short_sweeps: bool = True):
    """Bound methods called inside ask `check` (see the module docstring). `short_sweeps`: False
    for no CPU row chunks (`sweep_rows`)."""
    token = _current.set(Deadline(check, left, layout.all_true, layout.world_size == 1, short_sweeps))
    try:
        yield
    finally:
        _current.reset(token)


@contextmanager
def suspended():
    """No deadline inside (a caller that stops on its own terms, e.g. ranks that must meet first)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Deadline | None:
    return _current.get()


def check() -> None:
    """Raise TimeLimitReached once the limit passed; call where every rank of the group calls it."""
    d = _current.get()
    if d is not None:
        d.check()


def check_fine() -> None:
    """As `check`, at points ranks need not reach in step: a no-op under several ranks."""
    d = _current.get()
    if d is not None and d.fine:
        d.check()


def ends_within(seconds: float) -> bool:
    """True on every rank when the limit is at most `seconds` away on every rank (False without a
    deadline); call where every rank calls it."""
    d = _current.get()
    if d is None:
        return False
    return bool(d.agree(d.left() <= seconds))


# On a CPU one op of a wide sweep can take a minute (ibp_3_3_8's attention products over 14,739
# rows at once: [rows, 3, 17, 16, 17] temporaries), longer than the checks between ops allow for.
# With a deadline (one process), a CPU sweep takes at most this many A-matrix elements per node.
CPU_SWEEP_ELEMENTS = 1 << 22


def sweep_rows(widest: int, batch: int, device) -> int | None:
    """Rows per sweep that keep each op of it short on a CPU under a deadline (`widest`: the
    largest node's elements per row and batch element), or None (no cap: a GPU, several ranks,
    no deadline, or a caller that asked for none). The rows are independent: the bounds do not
    depend on how they are chunked."""
    d = _current.get()
    if d is None or not d.fine or not d.short_sweeps or getattr(device, "type", "cpu") != "cpu":
        return None
    return max(1, CPU_SWEEP_ELEMENTS // max(1, widest * batch))


# On a GPU the Python side runs ahead of the kernels it queued (up to the launch queue's depth, and
# longer when several processes time-share the device): a clock read there measures the launches,
# not the work, and a check can pass with seconds of work still queued (a vit_2023 pgd_2_3_16 row on
# an H100 shared by 8 processes ended 11 s past its limit, with a check at every op). The run's clock
# therefore waits for its device (`DeviceWait`): every SYNC_EVERY seconds, which measures how far
# behind the device runs (the wait's length), and at every check once the limit is nearer than twice
# the longest such lag plus SYNC_MARGIN: from there the queue stays short and the run stops within
# about one op of its limit. Far from the limit the cost is one pipeline bubble a second.
SYNC_EVERY = 1.0
SYNC_MARGIN = 0.5


class DeviceWait:
    """`wait(left)`: calls `sync` (wait for the device's queued work) when the last call is `every`
    seconds ago or more, or when `left` (seconds to the limit) is within twice the longest wait
    seen plus `margin`; otherwise nothing."""

    def __init__(self, sync: Callable[[], None], every: float | None = None, margin: float | None = None):
        self.sync = sync
        self.every = SYNC_EVERY if every is None else every
        self.margin = SYNC_MARGIN if margin is None else margin
        self.last = time.perf_counter()
        self.lag = 0.0                  # the longest wait so far: how far the device ran behind

    def __call__(self, left: float) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every or left <= 2.0 * self.lag + self.margin:
            self.sync()
            self.last = time.perf_counter()
            self.lag = max(self.lag, self.last - now)


def device_wait(device) -> DeviceWait | None:
    """A `DeviceWait` for a CUDA device (the run's clock calls it before reading the time), None
    for a CPU (its ops run when called)."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    return DeviceWait(lambda: torch.cuda.synchronize(device))


def fine_hook(d: Deadline | None):
    """A gradient hook that checks `d` (captured: the backward pass may run in another thread),
    or None when `d` allows no fine checks."""
    if d is None or not d.fine:
        return None

    def hook(grad):
        d.check()
        return grad
    return hook
