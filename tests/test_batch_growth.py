"""Branch and bound's batch grown from rounds' measured bytes (`bab/batch_growth.py`).

The first batch comes from a pessimistic estimate (TinyYOLO: 94 MiB a child estimated, 52 MiB
measured); on a CUDA device each full round's peak bytes set the next batch. Checked with a
simulated allocator on the CPU: the batch grows at most 2x a round, up to what the headroom holds;
never above a batch that ran out of memory; a round that was not full says nothing; where it is
off (CPU, fixed batch, lockstep, input splitting, the option) the batch stays; and in a whole
search the verdict holds (unsat proved, a false property never unsat)."""
from __future__ import annotations

import math

import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions
from dtensor_verify.bab.batch_growth import BatchGrowth, growth_for
from dtensor_verify.specs import parse_vnnlib
from dtensor_verify.verify import verify_instance
from model_zoo import random_mlp

CPU = torch.device("cpu")


class FakeMemory:
    """An allocator that the test drives: `use(n)` allocates n bytes on top of `base`."""

    def __init__(self, base=1000, headroom=100_000):
        self.base, self.room, self.peak_now = base, headroom, base

    def use(self, n):
        self.peak_now = max(self.peak_now, self.base + n)

    def growth(self, cap=2048):
        def reset(device):
            self.peak_now = self.base
        return BatchGrowth(CPU, cap, peak=lambda d: (self.peak_now, self.base),
                           headroom=lambda d, base: self.room, reset=reset)


def test_a_full_round_doubles_the_batch_at_most_and_stops_at_the_headroom():
    mem = FakeMemory(headroom=100_000)
    g = mem.growth()
    batch, seen = 4, []
    for _ in range(8):
        g.start()
        mem.use(2 * batch * 1000)            # 1000 bytes a child
        batch = g.after(batch, 2 * batch)
        seen.append(batch)
    # 0.8 x 100000 / 1000 = 80 children -> 40 parents
    assert seen[:3] == [8, 16, 32] and seen[3:] == [40] * 5, seen
    assert g.grown == 4


def test_never_above_a_batch_that_ran_out_of_memory_and_never_shrinks():
    mem = FakeMemory(headroom=10_000_000)
    g = mem.growth()
    g.out_of_memory(12)
    batch = 8
    for _ in range(4):
        g.start()
        mem.use(2 * batch * 10)
        batch = g.after(batch, 2 * batch)
    assert batch == 12
    mem.room = 0                              # no headroom left: the batch stays (OOM retry shrinks)
    g.start()
    mem.use(2 * batch * 10)
    assert g.after(batch, 2 * batch) == 12


def test_a_round_that_was_not_full_says_nothing():
    mem = FakeMemory()
    g = mem.growth()
    g.start()
    mem.use(10)
    assert g.after(16, 5) == 16 and g.grown == 0


def test_the_cap_holds():
    mem = FakeMemory(headroom=10**12)
    g = mem.growth(cap=100)
    batch = 64
    g.start()
    mem.use(2 * batch)
    assert g.after(batch, 2 * batch) == 100


def test_off_where_the_batch_is_not_about_memory_or_must_stay():
    cuda = torch.device("cuda", 0)
    assert growth_for(BabOptions(), CPU, False, "relu") is None
    assert growth_for(BabOptions(batch_size=8), cuda, False, "relu") is None
    assert growth_for(BabOptions(grow_batch=False), cuda, False, "relu") is None
    assert growth_for(BabOptions(), cuda, True, "relu") is None
    assert growth_for(BabOptions(), cuda, False, "input") is None
    g = growth_for(BabOptions(max_batch=77), cuda, False, "relu")
    assert isinstance(g, BatchGrowth) and g.cap == 77


def test_a_search_grows_its_batch_stays_below_the_memory_limit_and_keeps_its_verdict(monkeypatch):
    """A whole ReLU search with the simulated allocator: 1000 bytes a child bounded, room for 80
    children (40 parents), and a round of more than 40 children runs out of memory. The batch grows
    from 2, the round that overshoots is redone with half, the batch never goes back above that,
    and the verdicts hold."""
    from dtensor_verify.bab import solver as solver_module
    from test_bab import _grid_min, _lipschitz, _threshold_property

    mem = FakeMemory(headroom=100_000)
    real = solver_module.BabSolver._bound
    seen = []

    def measured(self, domains, iterations):
        seen.append(len(domains))
        if len(domains) > 40:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        mem.use(1000 * len(domains))
        return real(self, domains, iterations)

    monkeypatch.setattr(solver_module.BabSolver, "_bound", measured)
    monkeypatch.setattr(solver_module, "growth_for", lambda opts, device, lockstep, mode: mem.growth())
    net, shape = random_mlp([2, 24, 24, 1], seed=10)
    model = dv.load(net, input_shape=shape)
    gmin, _ = _grid_min(model)
    certain = gmin - _lipschitz(net) * (2.0 / 400) * math.sqrt(2) / 2 - 1e-3
    opts = BabOptions(batch_size=2, split="relu", split_width=1)
    prop = parse_vnnlib(_threshold_property(certain), n_inputs=2, n_outputs=1)
    res = verify_instance(model, prop, None, timeout=60, attack=False, bab_options=opts)
    assert res.verdict == "unsat", (res.verdict, res.message)
    stats = res.bounds["bab"]
    assert stats["first_batch"] == 2 and stats["batch_grown"] >= 2, stats
    assert stats["batch_size"] > 4, stats                       # children of a grown round
    if stats["memory_retries"]:
        assert stats["batch_per_worker"] <= 12, stats             # 50 children -> 12 parents, kept
    assert max(seen) <= 2 * 2 * 40                                 # at most one overshoot of 2x

    false = parse_vnnlib(_threshold_property(gmin + 1e-3), n_inputs=2, n_outputs=1)
    res = verify_instance(model, false, None, timeout=20, attack=False, bab_options=opts)
    assert res.verdict in ("sat", "unknown", "timeout"), res.verdict


def test_the_command_line_turns_it_off():
    import argparse

    from dtensor_verify.cli_common import add_bab_arguments, bab_options

    p = argparse.ArgumentParser()
    add_bab_arguments(p)
    assert bab_options(p.parse_args([])).grow_batch is True
    assert bab_options(p.parse_args(["--bab-grow", "off"])).grow_batch is False


def test_no_growth_where_an_out_of_memory_round_cannot_be_retried(monkeypatch):
    """dp workers that share their children (a received child has no parent here to push back: an
    OOM there is an error) and lockstep ranks keep their first batch: the solver asks `growth_for`
    with no_retry set."""
    from dtensor_verify.bab import BabSolver
    from dtensor_verify.bab import solver as solver_module
    from dtensor_verify.bab.comm import LocalComm
    from test_bab import root_problem

    asked = []
    monkeypatch.setattr(solver_module, "growth_for",
                        lambda opts, device, no_retry, mode: asked.append(no_retry) or None)

    class TwoWorkers(LocalComm):
        workers = 2

    net, shape = random_mlp([4, 16, 16, 2], seed=1)
    model = dv.load(net, input_shape=shape)
    problem, _ = root_problem(model, -torch.ones(1, 4), torch.ones(1, 4), torch.tensor([[[1.0, -1.0]]]),
                              torch.zeros(1, 1))
    BabSolver(problem, BabOptions(), lambda: 1e9, lambda *a: None)
    BabSolver(problem, BabOptions(), lambda: 1e9, lambda *a: None, comm=TwoWorkers())
    BabSolver(problem, BabOptions(balance_children=False), lambda: 1e9, lambda *a: None, comm=TwoWorkers())
    assert asked == [False, True, False]


def test_branching_is_sized_as_if_every_child_were_open():
    """A round where most children were proved measures branching on few of them; the next round's
    children may all be open (TinyYOLO on a shared H100: processes at 1.3-2.6x their share). Here
    bounding takes 100 bytes a child and branching 2000 bytes per open child, on 2 of 32: sized per
    child at 2000, 0.8 x 100000 holds 40 children (20 parents), not the 2x of one peak's average."""
    mem = FakeMemory(headroom=100_000)
    g = mem.growth()
    batch = 16
    g.start()
    mem.use(2 * batch * 100)
    g.bounded(2 * batch)
    g.branching()
    mem.use(2 * 2000)
    g.branched(2)
    assert g.after(batch, 2 * batch) == 20
    # what is still held when branching begins counts per child too
    mem2 = FakeMemory(headroom=100_000)
    g2 = mem2.growth()
    g2.start()
    mem2.use(2 * batch * 100)
    g2.bounded(2 * batch)
    assert g2.after(batch, 2 * batch) == 32        # bounding alone: 100 bytes a child, doubles
