"""A device of a given size, emulated on a CPU: allocations refused before they happen (issue 21).

On a GPU shared by N benchmark processes each process may use its share (`device_share`), and a
stage that asks for more fails with CUDA's "Tried to allocate 38.85 GiB". On a CPU with enough
swap-free memory the same stage either runs (slowly) or is refused by the host, so a test or a
dry run would not see the GPU's failure. `AllocationCap(limit)` is a TorchDispatchMode that,
before each op runs, works out the bytes its new outputs take (the op run on meta tensors: no
data, no compute) and raises `torch.OutOfMemoryError` with CUDA's wording when

* one allocation is more than `limit` bytes, or
* (with `total=True`) the bytes it counts as live (new tensors created inside the mode that are
  still alive, as `memory.LiveTensorMeter` counts them) plus the new ones exceed `limit`.

Tensors that existed before the mode (the model's weights) are not counted. The largest single
allocation seen (`largest`, with the op's name in `largest_op`) and the peak of live bytes
(`peak`) are recorded whether or not anything was refused.

    with AllocationCap(10 << 30) as cap:      # a process's share of an 80 GiB GPU shared by 8
        solver.add_roots(roots)
    print(cap.largest / 2**30, cap.peak / 2**30)
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .memory import LiveTensorMeter

GIB = 1 << 30


def _size(n: int) -> str:
    """CUDA's way of writing a size: GiB from 1 GiB on, else MiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / (1 << 20):.2f} MiB"


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    if isinstance(x, torch.device):
        return torch.device("meta")
    return x


def _signature(x):
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape), x.stride(), x.dtype)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__,) + tuple(_signature(i) for i in x)
    try:
        hash(x)
    except TypeError:
        return repr(x)
    return x


_SEEN: dict = {}        # (op, argument signature) -> bytes: the same ops recur chunk after chunk


def new_bytes(func, args, kwargs) -> int | None:
    """Bytes of the tensors `func(*args, **kwargs)` would allocate (views and in-place results
    allocate none), from a run on meta tensors (remembered per op and argument shapes); None when
    the op has no meta kernel (or is data-dependent): then it is measured after it ran."""
    if getattr(func, "is_view", False) or func._schema.is_mutable:
        return 0
    key = (func, _signature(args), tuple((k, _signature(v)) for k, v in kwargs.items()))
    if key not in _SEEN:
        if len(_SEEN) > 100_000:
            _SEEN.clear()
        _SEEN[key] = _meta_bytes(func, args, kwargs)
    return _SEEN[key]


def _meta_bytes(func, args, kwargs) -> int | None:
    meta_kwargs = {k: (torch.device("meta") if k == "device" else _to_meta(v)) for k, v in kwargs.items()}
    try:
        out = func(*tree_map(_to_meta, args), **meta_kwargs)
    except Exception:           # noqa: BLE001 - no meta kernel, data-dependent shapes, ...
        return None
    returns = func._schema.returns
    total = 0
    for i, t in enumerate(tree_flatten(out)[0]):
        if not isinstance(t, torch.Tensor):
            continue
        if i < len(returns) and returns[i].alias_info is not None:
            continue            # an alias of an input
        total += t.numel() * t.element_size()
    return total


class AllocationCap(LiveTensorMeter):
    """Refuse allocations above `limit` bytes (one, or with `total` all live ones); see the module
    docstring."""

    def __init__(self, limit: int, total: bool = False):
        super().__init__()
        self.limit, self.total = int(limit), total
        self.largest, self.largest_op = 0, ""
        self.refused: str | None = None

    def _refuse(self, need: int, func):
        self.refused = (f"Tried to allocate {_size(need)} in {func} "
                        f"(emulated device of {_size(self.limit)}, {_size(self.current)} live)")
        raise torch.OutOfMemoryError(f"CUDA out of memory (emulated). {self.refused}")

    def _note(self, need: int, func):
        if need > self.largest:
            self.largest, self.largest_op = need, str(func)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        need = new_bytes(func, args, kwargs)
        if need is not None:
            self._note(need, func)
            if need > self.limit or (self.total and self.current + need > self.limit):
                self._refuse(need, func)
        before = self.current
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if need is None:        # measured after the fact: what it added to the live bytes
            self._note(max(0, self.current - before), func)
        return out
