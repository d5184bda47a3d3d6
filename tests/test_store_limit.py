"""The open-domain store's limit (`bab/store_limit.py`): a momentary low free memory does not cut
it below the process's share of the device, it is asked again when the store fills, and the
`unknown` it may still end in says the limit, a domain's bytes and where the number came from."""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions
from dtensor_verify.bab import store_limit as sl
from dtensor_verify.specs import parse_vnnlib
from dtensor_verify.verify import verify_instance
from model_zoo import random_mlp

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def test_low_free_memory_is_floored_by_the_share_of_the_device(monkeypatch):
    monkeypatch.setattr(sl, "free_memory_bytes", lambda device: 24 << 20)       # 24 MiB free now
    monkeypatch.setattr(sl, "total_memory_bytes", lambda device: 5 << 30)       # 5 GiB share
    limit = sl.store_limit(100_000, 0.2, 64, CPU, None)
    assert limit.domains == int((5 << 30) * 0.2) // 100_000
    assert "share of the device" in limit.source
    assert sl.store_limit(100_000, 0.2, 64, CPU, 500).domains == 500             # the user's cap
    assert sl.store_limit(100_000, 0.2, 64, CPU, 10).domains == 64               # never below 4 batches


def test_a_full_store_counts_its_own_bytes_as_free(monkeypatch):
    monkeypatch.setattr(sl, "free_memory_bytes", lambda device: 100_000)
    monkeypatch.setattr(sl, "total_memory_bytes", lambda device: 100_000)
    assert sl.store_limit(1000, 0.2, 4, CPU, None).domains == 20
    grown = sl.store_limit(1000, 0.2, 4, CPU, None, held=1000)
    assert grown.domains == 220 and "free memory" in grown.source


def _instance():
    net, shape = random_mlp([20, 64, 64, 64, 64, 2], seed=4)
    model = dv.load(net, input_shape=shape)
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(20))
    text += "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(assert (<= Y_0 Y_1))\n"
    return model, parse_vnnlib(text, n_inputs=20, n_outputs=2)


def test_store_asked_again_when_full_instead_of_unknown(monkeypatch):
    """4 MB free when branch and bound starts (a limit of ~155 domains, test_bab's instance ends
    `unknown` there), 4 GB once the store is full: the search goes on."""
    calls = []

    def free(device):
        calls.append(1)
        return 4_000_000 if len(calls) == 1 else 4_000_000_000

    monkeypatch.setattr(sl, "free_memory_bytes", free)
    monkeypatch.setattr(sl, "total_memory_bytes", lambda device: 4_000_000)
    model, prop = _instance()
    # A fixed number of rounds (not the clock, which a loaded machine stretches): 40 rounds of 8
    # parents pass the ~155 domains of the first limit (whole domains: derived ones are smaller,
    # test_bab's queue-limit test has both).
    res = verify_instance(model, prop, None, timeout=120, attack=False,
                          bab_options=BabOptions(batch_size=8, max_rounds=40, derive_bounds=False))
    stats = res.bounds["bab"]
    assert "too many open domains" not in res.message, res.message
    assert len(calls) >= 2, ("the limit was not asked again", stats)
    assert stats["open_domain_limit"] > 1000, stats
    assert res.verdict == "unsat" or "stopped after 40 rounds" in res.message, (res.verdict, res.message)


def test_unknown_for_the_store_says_why(monkeypatch):
    monkeypatch.setattr(sl, "free_memory_bytes", lambda device: 4_000_000)
    monkeypatch.setattr(sl, "total_memory_bytes", lambda device: 4_000_000)
    model, prop = _instance()
    res = verify_instance(model, prop, None, timeout=30, attack=False,
                          bab_options=BabOptions(batch_size=8, derive_bounds=False))
    assert res.verdict == "unknown", res.verdict
    assert "too many open domains (limit" in res.message and "bytes each" in res.message, res.message
    assert "free memory" in res.message, res.message
