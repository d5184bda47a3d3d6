"""A GPU's open domains past its part of the queue move to host memory (`DomainStore`'s spill,
`store_limit`'s host part) instead of ending the search `unknown`: TinyYOLO on a shared H100 gave
up with "too many open domains" after 30 s of a 300 s limit. Here the device is the CPU and the
host part is forced on: no domain is lost or handed out twice, the worst margin counts spilled
domains, and the verdicts are the ground truth's (a spilled domain is still open: never unsat early)."""
from __future__ import annotations

import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions, DomainStore
from dtensor_verify.bab import solver as solver_module
from dtensor_verify.bab import store_limit as store_limit_module
from dtensor_verify.specs import parse_vnnlib
from dtensor_verify.verify import verify_instance
from model_zoo import random_mlp
from test_bab import _threshold_property, certain_instance, root_problem


def _store_of(n, keep):
    net, shape = random_mlp([3, 8, 2], seed=2)
    model = dv.load(net, input_shape=shape)
    _, roots = root_problem(model, -torch.ones(1, 3), torch.ones(1, 3), torch.tensor([[[1.0, 0.0]]]),
                            torch.zeros(1, 1))
    store = DomainStore(keep=keep, host=torch.device("cpu"))
    return store, roots.index(torch.zeros(n, dtype=torch.long))


def test_spilled_domains_stay_open_and_come_back_once_each():
    store, many = _store_of(10, keep=4)
    margins = torch.tensor([0.3, -2.0, 1.0, -0.5, 0.0, 2.5, -1.0, 0.7, 1.5, -0.1])
    many.depth = torch.arange(10)                  # a tag: which domain came back
    store.push(many, margins)
    assert store.on_device() == 3 and store.spilled() == 7 and len(store) == 10 and store.spills == 1
    assert store.worst_margin() == -2.0
    worst3, m = store.pop_worst(3)                 # the device kept the worst ones
    assert sorted(m.tolist()) == [-2.0, -1.0, -0.5]
    assert abs(store.worst_margin() + 0.1) < 1e-6  # now among the spilled ones
    seen = worst3.depth.tolist()
    while len(store):
        d, m = store.pop_worst(2)
        seen += d.depth.tolist()
    assert sorted(seen) == list(range(10))         # each exactly once
    assert store.refills >= 1 and store.worst_margin() == float("inf")


def test_pop_best_brings_back_what_the_device_lacks():
    store, many = _store_of(6, keep=2)
    store.push(many, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]))
    assert store.on_device() == 1
    _, m = store.pop_best(3)
    assert len(m) == 3 and len(store) == 3


def _small_device_part(monkeypatch, device_domains: int):
    """The store's device part forced to `device_domains`, with a host part behind it."""
    real = store_limit_module.store_limit

    def limit(per_domain, fraction, at_least, device, max_domains, held=0, host_fraction=0.0):
        got = real(per_domain, fraction, at_least, device, max_domains, held, host_fraction)
        return store_limit_module.StoreLimit(device_domains, got.per_domain, "test", host=100_000)

    monkeypatch.setattr(solver_module, "store_limit", limit)


def test_bab_with_a_tiny_device_part_decides_as_ground_truth_says(monkeypatch):
    _small_device_part(monkeypatch, 8)
    model, gmin, prop = certain_instance()
    res = verify_instance(model, prop, None, timeout=60, attack=False,
                          bab_options=BabOptions(batch_size=2, split="relu", split_width=1))
    assert res.verdict == "unsat", (res.verdict, res.message)
    stats = res.bounds["bab"]
    assert stats["spills"] >= 1 and stats["refills"] >= 1, stats
    assert stats["spilled"] == 0 and stats["open_domains"] == 0

    false = parse_vnnlib(_threshold_property(gmin + 1e-3), n_inputs=2, n_outputs=1)
    res = verify_instance(model, false, None, timeout=20, attack=False,
                          bab_options=BabOptions(batch_size=2, split="relu", split_width=1))
    assert res.verdict in ("sat", "unknown", "timeout"), res.verdict


def test_a_full_device_part_no_longer_ends_the_search(monkeypatch):
    """Where the device part alone would end the run `unknown` (test_bab's queue-limit test), the
    search goes on with its domains in host memory (here until its 30 rounds)."""
    _small_device_part(monkeypatch, 40)
    net, shape = random_mlp([20, 64, 64, 64, 64, 2], seed=4)
    model = dv.load(net, input_shape=shape)
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(20))
    text += "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(assert (<= Y_0 Y_1))\n"
    prop = parse_vnnlib(text, n_inputs=20, n_outputs=2)
    res = verify_instance(model, prop, None, timeout=120, attack=False,
                          bab_options=BabOptions(batch_size=8, max_rounds=30))
    stats = res.bounds["bab"]
    assert res.verdict == "unknown" and "stopped after 30 rounds" in res.message, (res.verdict, res.message)
    assert stats["spills"] >= 1 and stats["open_domains"] > 40 and stats["spilled"] > 0, stats


def test_the_command_line_sets_the_host_part_and_beta_steps():
    import argparse

    import pytest

    from dtensor_verify.cli_common import CliError, add_bab_arguments, bab_options

    p = argparse.ArgumentParser()
    add_bab_arguments(p)
    opts = bab_options(p.parse_args([]))
    assert opts.host_fraction == 0.5 and opts.beta.iterations == 20
    opts = bab_options(p.parse_args(["--bab-host-store", "0", "--bab-iterations", "8", "--bab-lr-alpha", "0.01",
                                     "--bab-lr-beta", "0.1"]))
    assert opts.host_fraction == 0.0 and opts.beta.iterations == 8
    assert opts.beta.lr_alpha == 0.01 and opts.beta.lr_beta == 0.1
    assert bab_options(p.parse_args([])).beta.lr_alpha == 0.1         # (each BabOptions its own BetaOptions)
    for args, flag in ((["--bab-host-store", "2"], "--bab-host-store"), (["--bab-iterations", "-1"], "--bab-iterations"),
                       (["--bab-lr-beta", "0"], "--bab-lr-beta")):
        with pytest.raises(CliError, match=flag):
            bab_options(p.parse_args(args))
