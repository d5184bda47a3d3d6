"""A process's part of a shared GPU (`device_share.free_memory_bytes`): at most 1/N of the device's
total, and no more than is free now (with its own cached blocks). Before, the memory free *now*
was divided by N, so a process that asked after the others had taken their share got 1/N of the
rest: branch and bound on TinyYOLO ran batches of 1-3 parents with 8 processes on an H200."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from dtensor_verify import device_share

GB = 1 << 30
CUDA = SimpleNamespace(type="cuda")


def _device(monkeypatch, free, total, reserved=0, allocated=0, share=8):
    monkeypatch.delenv("DTENSOR_VERIFY_DEVICE_BYTES", raising=False)
    monkeypatch.setenv("DTENSOR_VERIFY_SHARE_DEVICE", str(share))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)


def test_the_first_to_ask_gets_its_share_of_the_total_not_all_that_is_free(monkeypatch):
    # 8 processes: each one's CUDA context (1 GiB) comes off the card before it is divided
    _device(monkeypatch, free=140 * GB, total=144 * GB)
    assert device_share.free_memory_bytes(CUDA) == 17 * GB


def test_the_last_to_ask_still_gets_its_share_when_it_is_free(monkeypatch):
    # seven processes hold their 17 GB each (and a context): 18 GB are left, its share is 17
    _device(monkeypatch, free=18 * GB, total=144 * GB)
    assert device_share.free_memory_bytes(CUDA) == 17 * GB


def test_the_shares_and_contexts_fit_on_the_card(monkeypatch):
    """12 processes on an 80 GB card: twelve shares and twelve contexts no more than the card
    (before: twelve shares were the whole card, and the contexts ran it out of memory)."""
    total = 80 * GB
    _device(monkeypatch, free=total, total=total, share=12)
    share = device_share.free_memory_bytes(CUDA)
    assert 12 * (share + device_share.CONTEXT_BYTES) <= total
    assert share >= total // 12 - 2 * GB


def test_never_more_than_is_free_with_its_own_cached_blocks(monkeypatch):
    _device(monkeypatch, free=3 * GB, total=144 * GB, reserved=6 * GB, allocated=4 * GB)
    assert device_share.free_memory_bytes(CUDA) == 5 * GB


def test_one_process_takes_what_is_free(monkeypatch):
    _device(monkeypatch, free=70 * GB, total=80 * GB, reserved=2 * GB, allocated=1 * GB, share=1)
    assert device_share.free_memory_bytes(CUDA) == 71 * GB


def test_the_fake_device_bytes_of_dry_runs_are_still_divided(monkeypatch):
    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", str(16 * GB))
    monkeypatch.setenv("DTENSOR_VERIFY_SHARE_DEVICE", "4")
    assert device_share.free_memory_bytes(CUDA) == 4 * GB


def test_what_a_process_holds_comes_out_of_its_share(monkeypatch):
    """`held` (branch and bound's batch growth: what was allocated when a round began) counts
    against the share, never below zero; what is free now still caps it."""
    _device(monkeypatch, free=140 * GB, total=144 * GB)
    assert device_share.free_memory_bytes(CUDA, held=5 * GB) == 12 * GB
    assert device_share.free_memory_bytes(CUDA, held=20 * GB) == 0
    _device(monkeypatch, free=3 * GB, total=144 * GB)
    assert device_share.free_memory_bytes(CUDA, held=5 * GB) == 3 * GB
