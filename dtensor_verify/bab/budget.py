"""How much branch and bound may hold: batch size and queue length from the free memory."""
from __future__ import annotations

import torch

from ..device_share import free_memory_bytes, sharing as _sharing  # noqa: F401 (re-exported)


def bytes_per_domain(problem) -> int:
    """Rough bytes one child needs while it is bounded: its slopes, multipliers, bounds and the
    A-matrices of one sweep with autograd (about six per node: values, saved tensors, Adam)."""
    K = problem.C.shape[1]
    elems = sum(node.numel for node in problem.graph.nodes)
    relu_elems = sum(problem.graph[r].numel for r in problem.relus)
    relu_elems += 2 * sum(problem.graph[g].numel for g in getattr(problem, "general_ops", ()))   # 2 params each
    return 4 * (6 * K * elems + 4 * K * relu_elems + 4 * relu_elems) + 256


def input_bytes_per_domain(problem) -> int:
    """Rough bytes one sub-box needs while it is bounded (no autograd with CROWN): its domain,
    plus the A-matrices of the intermediate bounds recomputed on its box (a node's rows against
    an earlier node's columns, a few alive at once)."""
    widest = max((node.numel for node in problem.graph.nodes), default=1)
    return bytes_per_domain(problem) + 4 * 8 * widest * widest


def input_batch_size(problem, opts, device, free_bytes=free_memory_bytes) -> int:
    """Parents per round when splitting inputs: what `opts.memory_fraction` of the free memory
    holds for their 2 children each, at most `opts.input_max_batch` (`opts.input_cpu_batch` on a
    CPU, where a round's time grows with the batch and a smaller one picks the worst boxes more
    often). A 5-input acasxu network (6 x 50 ReLUs): ~100 KB per child (measured on a CPU: 750 MB
    more peak RSS for 8192 children than for 512), so the cap's 32768 children take ~3 GB."""
    cap = opts.input_cpu_batch if device.type == "cpu" else opts.input_max_batch
    budget = free_bytes(device) * opts.memory_fraction
    return int(max(1, min(cap, budget // (2 * input_bytes_per_domain(problem)))))


def auto_batch_size(problem, opts, device, free_bytes=free_memory_bytes, mode: str = "relu") -> int:
    """Parents per round: `opts.batch_size`, or what `opts.memory_fraction` of the free memory
    holds (`mode` 'input': `input_batch_size`)."""
    if opts.batch_size is not None:
        return max(1, opts.batch_size)
    if mode == "input":
        return input_batch_size(problem, opts, device, free_bytes)
    budget = free_bytes(device) * opts.memory_fraction
    # Children are 2x the parents; fsb bounds `candidates` x 2 more (without autograd, ~1/3).
    per_parent = bytes_per_domain(problem) * (2 + 2 * opts.candidates / 3)
    return int(max(1, min(opts.max_batch, budget // per_parent)))


def out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def release_cached_memory(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
