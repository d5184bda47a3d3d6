"""The run's clock on an asynchronous device (issue 21): a vit_2023 pgd_2_3_16 row on an H100 shared
by 8 processes ended 11 s past its 100 s limit although the bound methods check the clock at every
op. On a GPU those checks read the time at which Python *launched* the kernels; the queue of work
behind them (up to the launch queue's depth, longer when processes time-share the device) was
still to run. `Clock` now waits for the device about once a second (`deadline.device_wait`).

A fake device stands for the GPU here: each "op" queues 20 ms of work and returns at once; the
launch blocks only when more than 0.6 s of work is queued (the launch queue is full); reading a
result waits for the queue. A loop of ops that checks the clock between them, as a sweep does, must
end within a fraction of a second of its 2 s limit, not a full queue after it.
"""
from __future__ import annotations

import time

import pytest
import torch

from dtensor_verify import deadline
from dtensor_verify.errors import TimeLimitReached
from dtensor_verify.layout import Layout
from dtensor_verify.verify.instance import Clock


class _FakeGpu:
    QUEUE_S = 0.6           # the most work the launch queue holds

    def __init__(self):
        self.done_at = time.perf_counter()      # when the queued work will be finished

    def launch(self, seconds: float):
        now = time.perf_counter()
        self.done_at = max(self.done_at, now) + seconds
        if self.done_at - now > self.QUEUE_S:          # a full queue: the launch waits
            time.sleep(self.done_at - now - self.QUEUE_S)

    def synchronize(self):
        time.sleep(max(0.0, self.done_at - time.perf_counter()))


class _CudaLayout(Layout):
    device = torch.device("cuda", 0)      # only its type is read: nothing runs on it


def _run_ops_until_timeout(clock: Clock, gpu: _FakeGpu) -> float:
    """Ops with a clock check between them (as a sweep's `check_fine`), then the result read;
    returns when the work ended (the device's queue drained)."""
    with pytest.raises(TimeLimitReached):
        for _ in range(10_000):
            gpu.launch(0.02)
            clock.check()
    gpu.synchronize()
    return time.perf_counter()


def test_clock_waits_for_the_device(monkeypatch):
    gpu = _FakeGpu()
    monkeypatch.setattr(deadline, "SYNC_EVERY", 0.2)
    monkeypatch.setattr(deadline, "SYNC_MARGIN", 0.1)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: gpu.synchronize())
    limit = 2.0
    clock = Clock(limit, _CudaLayout())
    assert clock.wait is not None
    end = _run_ops_until_timeout(clock, gpu)
    # The first waits measure a lag of ~0.6 s (a full queue); from 2 x 0.6 + 0.1 s before the limit
    # every check waits, so the queue is empty when the limit comes.
    assert end - clock.t0 < limit + 0.25, end - clock.t0
    assert 0.5 < clock.wait.lag < 1.0


def test_without_waiting_the_work_ends_late():
    """The same loop with a clock that reads the time only (the old clock): the work ends about a
    full queue (0.6 s) after the limit. (What the test above guards against: measured, not assumed.)"""
    gpu = _FakeGpu()
    clock = Clock(2.0, Layout())
    assert clock.wait is None                    # a CPU layout: no device to wait for
    end = _run_ops_until_timeout(clock, gpu)
    assert end - clock.t0 > 2.0 + 0.45


def test_device_wait_is_at_most_every_interval_far_from_the_limit():
    calls = []
    wait = deadline.DeviceWait(lambda: calls.append(time.perf_counter()), every=0.05, margin=0.1)
    t_end = time.perf_counter() + 0.3
    while time.perf_counter() < t_end:
        wait(100.0)
    assert 3 <= len(calls) <= 7
    n = len(calls)
    for _ in range(5):
        wait(0.05)                              # near the limit: every call waits
    assert len(calls) == n + 5
    assert deadline.device_wait(torch.device("cpu")) is None
