"""This process's part of the device memory: what branch and bound's batches and alpha-CROWN's
working set are sized to.

`DTENSOR_VERIFY_SHARE_DEVICE=N`: N processes share the device without knowing of each other
(e.g. bench/gpu/input_bab_gpu.sh's 8 benchmark processes on one GPU); each takes at most 1/N of the
device's memory, and no more than is free. `DTENSOR_VERIFY_DEVICE_BYTES=B` (tests, dry runs on a CPU): take B bytes as the free
memory of the device instead of asking it, before the division.
"""
from __future__ import annotations

import os

import torch


def sharing() -> int:
    """Processes that share this device (DTENSOR_VERIFY_SHARE_DEVICE, default 1)."""
    try:
        return max(1, int(os.environ.get("DTENSOR_VERIFY_SHARE_DEVICE", "1")))
    except ValueError:
        return 1


def _fake_bytes() -> int | None:
    try:
        value = int(os.environ["DTENSOR_VERIFY_DEVICE_BYTES"])
    except (KeyError, ValueError):
        return None
    return value if value > 0 else None


CONTEXT_BYTES = 1 << 30    # a CUDA process's memory outside PyTorch's allocator (context, cuBLAS)


def card_share(total: int) -> int:
    """One process's part of a card of `total` bytes shared by `sharing()` processes: each one's
    CUDA context (about 0.9 GiB, outside the allocator) comes off first. Dividing the whole card
    left nothing for the contexts: 12 processes sized to 1/12 of an H100 ran it out of memory."""
    n = sharing()
    if n == 1:
        return total
    return max(0, total - n * CONTEXT_BYTES) // n


def free_memory_bytes(device, held: int = 0) -> int:
    """Free memory for this rank: CUDA's free bytes plus what PyTorch's caching allocator holds
    unused (blocks kept from earlier instances of a benchmark), at most this process's share of
    the device's total (`sharing`) less `held` (bytes this process has allocated and counts
    against its share, e.g. branch and bound's measured rounds, bab/batch_growth.py); or
    MemAvailable shared by the ranks on the host.

    The share caps the total, not what is free now: the other processes' allocations are already
    out of the free bytes, so dividing those by N again starved whoever asked last (a 2-parent
    branch-and-bound batch on TinyYOLO and a 1-parent one on nn4sys mscn_128d with 16 and 8
    processes on one GPU, where an 18 GB share holds about 18; docs/BENCHMARKS.md, session 7)."""
    fake = _fake_bytes()
    if fake is not None:
        return max(0, fake // sharing() - held)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return max(0, min(int(free + max(cached, 0)), card_share(int(total)) - held))
    return _host_bytes("MemAvailable")


def total_memory_bytes(device) -> int:
    """This process's share of the device's *total* memory (DTENSOR_VERIFY_DEVICE_BYTES when set):
    a size that does not move with what other processes hold at the moment."""
    fake = _fake_bytes()
    if fake is not None:
        return fake // sharing()
    if device.type == "cuda":
        return card_share(int(torch.cuda.get_device_properties(device).total_memory))
    return _host_bytes("MemTotal")


def host_memory_bytes() -> int:
    """This process's share of the host's available memory (where a GPU's branch and bound spills
    the open domains its device part cannot hold)."""
    return _host_bytes("MemAvailable")


def _host_bytes(key: str) -> int:
    """/proc/meminfo's `key`, shared by the ranks on the host and the processes sharing it."""
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if ":" in line}
        value = info.get(key, 4 << 30)
    except OSError:
        value = 4 << 30
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return value // max(local, 1) // sharing()
