"""Per-rank memory meter: baseline (model loaded and placed) and peak (during bounding).

* CUDA: the caching allocator's counters (`memory_allocated`, `max_memory_allocated`).
* CPU: a deterministic count of live tensor bytes. A TorchDispatchMode sees every tensor an
  op creates while bounding; each new storage is counted until its storage object dies
  (PyTorch keeps one Python object per live storage, so the finalizer fires when the memory is
  freed, including tensors only autograd still holds).

Both also break the peak down by kind. The engine marks its phases with `tag(kind)`:
"weights" (FSDP/TP gathers), "A-matrices" (backward sweeps), "bounds", "alphas",
"alpha-optimizer"; the breakdown is the live bytes per kind at the moment of the peak.
"""
from __future__ import annotations

import contextvars
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_KIND = contextvars.ContextVar("dtensor_verify_memory_kind", default="other")
_ACTIVE: list["LiveTensorMeter"] = []


@contextmanager
def tag(kind: str):
    """Attribute the tensors created inside to `kind` (cheap when no meter runs)."""
    token = _KIND.set(kind)
    try:
        yield
    finally:
        _KIND.reset(token)


def track_existing(t: torch.Tensor, kind: str):
    """Count memory that appeared without an op the meter can see (FSDP re-allocates an unsharded
    weight by resizing its storage); its later resize to 0 bytes is noticed too."""
    for meter in _ACTIVE:
        with tag(kind):
            meter._track(t, resizable=True)


def tensor_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.to_local()
    return t.numel() * t.element_size()


def resident_bytes(model) -> dict[str, int]:
    """Bytes this rank holds for the model at rest: parameters (local shards), buffers, op constants."""
    module = model.graph.module
    params = sum(tensor_bytes(p) for p in module.parameters())
    buffers = sum(tensor_bytes(b) for b in module.buffers())
    consts = 0
    for node in model.graph.nodes:
        for name in ("scale", "shift"):
            value = getattr(node.op, name, None) if node.op is not None else None
            if isinstance(value, torch.Tensor):
                consts += tensor_bytes(value)
    return {"weights": params + buffers, "constants": consts}


class LiveTensorMeter(TorchDispatchMode):
    """Counts bytes of storages created inside the mode that are still alive; records the peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[int, str]] = {}
        self.current = 0
        self.peak = 0
        self.by_kind: dict[str, int] = {}
        self.peak_by_kind: dict[str, int] = {}
        self.resizable: dict[int, weakref.ref] = {}

    def _drop_resized(self):
        """FSDP frees an unsharded weight by resizing its storage to 0 bytes, which no op and no
        finalizer reports; look at the (few) weight storages before recording a new peak."""
        for key, ref in list(self.resizable.items()):
            storage = ref()
            if storage is None or storage.nbytes() == 0 or storage.data_ptr() != key:
                self.resizable.pop(key, None)
                self._free(key)

    def _free(self, key: int):
        self.resizable.pop(key, None)
        entry = self.live.pop(key, None)
        if entry is not None:
            n, kind = entry
            self.current -= n
            self.by_kind[kind] -= n

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        return super().__exit__(*exc)

    def _track(self, t: torch.Tensor, resizable: bool = False):
        t = _plain(t)
        if t.device.type == "meta":
            return
        try:
            storage = t.untyped_storage()
            key, n = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            return
        if n == 0 or key in self.live:
            return
        kind = _KIND.get()
        self.live[key] = (n, kind)
        self.current += n
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n
        if kind == "weights" or resizable:
            self.resizable[key] = weakref.ref(storage)
        if self.current > self.peak:
            self._drop_resized()
        if self.current > self.peak:
            self.peak = self.current
            self.peak_by_kind = dict(self.by_kind)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views share their input's storage, and in-place / out= ops write into existing memory:
        # neither allocates (except FSDP refilling a freed unsharded weight, tagged "weights").
        if getattr(func, "is_view", False) or (func._schema.is_mutable and _KIND.get() != "weights"):
            return out
        # Nor does an op that hands back one of its inputs (c10d collectives work in place
        # without saying so in their schema).
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        inputs.discard(None)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _storage_key(t) not in inputs:
                self._track(t)
        return out


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The tensor that owns the memory: a DTensor's local shard, a wrapper's inner tensor."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t._local_tensor
    inner = getattr(t, "elem", None)          # e.g. AsyncCollectiveTensor wraps its result
    return inner if isinstance(inner, torch.Tensor) else t


def _storage_key(t: torch.Tensor):
    try:
        key = _plain(t).untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return key or None


@dataclass
class MemoryReport:
    device: str
    baseline_bytes: int                       # resident after load + placement
    peak_bytes: int                           # baseline + the most bytes live while bounding
    peak_by_kind: dict[str, int] = field(default_factory=dict)
    source: str = ""                          # "cuda-allocator" or "live-tensor-meter"
    seconds: float = 0.0

    def as_dict(self) -> dict:
        gib = 1024 ** 3
        return {"device": self.device, "source": self.source, "baseline_bytes": self.baseline_bytes,
                "peak_bytes": self.peak_bytes, "baseline_gib": self.baseline_bytes / gib,
                "peak_gib": self.peak_bytes / gib, "peak_by_kind_bytes": self.peak_by_kind}


@contextmanager
def measure(model, device: torch.device | None = None):
    """Measure one bounding call: `with measure(model) as rep: model.compute_bounds(...)`."""
    device = device or model.layout.device
    rep = MemoryReport(str(device), 0, 0)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        rep.baseline_bytes = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        rep.source = "cuda-allocator"
        meter = LiveTensorMeter()   # kinds only; the totals come from the allocator
        with meter:
            yield rep
        torch.cuda.synchronize(device)
        rep.peak_bytes = torch.cuda.max_memory_allocated(device)
        rep.peak_by_kind = dict(meter.peak_by_kind)
    else:
        resident = resident_bytes(model)
        rep.baseline_bytes = sum(resident.values())
        rep.source = "live-tensor-meter"
        meter = LiveTensorMeter()
        with meter:
            yield rep
        rep.peak_bytes = rep.baseline_bytes + meter.peak
        rep.peak_by_kind = {"weights (resident)": resident["weights"], **meter.peak_by_kind}
    rep.seconds = time.perf_counter() - t0


def gather_reports(rep: MemoryReport | None, layout) -> list[dict]:
    """Every rank's report (as dicts), on every rank; one process returns a list of one."""
    mine = rep.as_dict() if rep is not None else {}
    if layout.world_size == 1:
        return [mine]
    import torch.distributed as dist

    out: list = [None] * layout.world_size
    dist.all_gather_object(out, mine, group=layout.topology.shard_group)
    return out


def memory_report(model=None, rep: MemoryReport | None = None) -> dict:
    """The `memory` entry of the CLI's JSON: one dict per rank."""
    if model is None:
        return {}
    return {"per_rank": gather_reports(rep, model.layout)}
