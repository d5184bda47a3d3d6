"""Which sharded-at-rest layers stay gathered for a whole search, and the weight collectives
counted (issue 18: 3,619 FSDP all-gathers in one branch and bound on a 4-layer net).

`fsdp`, `fsdp-prefetch` and `spec` keep each layer's weight Shard(0) at rest and gather it around
every bounding step. A *search* runs thousands of steps on the same weights: an alpha- or
beta-CROWN optimisation loop (`methods/optimize.maximise`), a whole branch and bound
(`Layout.domain_batches`), an attack (`Layout.network_function`). For its duration the layout
holds some layers gathered (`PlacedLayout.holding`): their steps then use the whole weight
with no collective, bitwise the same weight as a per-step gather.

The policy (`choose`): every layer whose style gathers at rest is a candidate at its full size
(`numel * element_size` of its parameters, the bytes a gather adds on a rank); they are taken
smallest first while their sum fits the budget, and the rest keep gathering per step. Smallest
first because every sweep gathers every layer it visits once, so a held small layer saves as
many collectives as a held large one, and small layers' gathers are all latency. So:

* the whole model fits: every layer held for the search, no weight collective inside it
  (`mode` "search");
* some fit: the small layers held, the large ones (where FSDP's memory saving is) per step
  ("partial");
* none fits: per step, as before ("step"). FSDP exists to bound peak memory; a model whose
  weights are large next to the device keeps that bound.

The budget (`hold_budget`): `DTENSOR_VERIFY_HOLD_BYTES` if set (0: never hold, the behaviour
before; for measurements), else min(256 MiB, 1/32 of the device's memory: a GPU's total memory,
the host's physical memory on CPU). The ranks of a shard group take the smallest budget among
them (one all-reduce, at the first search), so they hold the same layers and their remaining
per-step gathers stay in step.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import torch

HOLD_CAP_BYTES = 256 * 2**20        # never more than this held for a search
HOLD_DEVICE_SHARE = 32              # nor more than 1/32 of the device's memory
HOLD_ENV = "DTENSOR_VERIFY_HOLD_BYTES"

# Weight collectives issued by the styles in this process (rank), by kind:
#   "step": a layer's all-gather (FSDP unshard) around one bounding step,
#   "prefetch": the same, started one step early (fsdp-prefetch),
#   "regather": autograd's backward re-gathering a saved weight (alpha / beta steps),
#   "hold": a layer gathered once for a whole search,
#   "broadcast": one rank's weight shard streamed to the others (spec, per step and shard).
GATHERS: Counter = Counter()


def count(kind: str, n: int = 1) -> None:
    GATHERS[kind] += n


def gather_counts() -> dict:
    """The counts so far (every kind, zeros included) and `all_gathers`, the FSDP all-gathers."""
    out = {k: GATHERS.get(k, 0) for k in ("step", "prefetch", "regather", "hold", "broadcast")}
    out["all_gathers"] = out["step"] + out["prefetch"] + out["regather"] + out["hold"]
    return out


@dataclass(frozen=True)
class HoldChoice:
    """The layers one search holds gathered, in graph order (the order their gathers are issued
    on every rank), and the sizes behind the choice."""
    layers: tuple[str, ...]
    held_bytes: int
    candidate_bytes: int         # every layer that could have been held (not held already)
    budget_bytes: int

    @property
    def mode(self) -> str:
        if self.candidate_bytes == 0 or self.held_bytes == self.candidate_bytes:
            return "search"
        return "partial" if self.layers else "step"

    def as_dict(self) -> dict:
        return {"mode": self.mode, "layers": len(self.layers), "held_bytes": self.held_bytes,
                "candidate_bytes": self.candidate_bytes, "budget_bytes": self.budget_bytes}


def choose(sizes: list[tuple[str, int]], budget: int) -> HoldChoice:
    """Smallest first while the sum fits `budget`; `sizes`: (layer, bytes) in graph order."""
    chosen, used = set(), 0
    for name, size in sorted(sizes, key=lambda s: s[1]):
        if used + size > budget:
            break
        chosen.add(name)
        used += size
    return HoldChoice(tuple(n for n, _ in sizes if n in chosen), used, sum(s for _, s in sizes), max(budget, 0))


def layer_bytes(module) -> int:
    """Bytes of `module`'s own parameters gathered whole (a DTensor's numel is its global one)."""
    return sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))


def device_memory_bytes(device) -> int:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * HOLD_CAP_BYTES * HOLD_DEVICE_SHARE


def hold_budget(device, env=None) -> int:
    """This rank's budget in bytes (see the module docstring); a malformed override is refused
    in one line naming the variable."""
    from dtensor_verify.errors import VerifierError

    raw = (os.environ if env is None else env).get(HOLD_ENV, "").strip()
    if raw:
        try:
            value = int(float(raw))
        except ValueError:
            raise VerifierError(f"{HOLD_ENV}='{raw[:40]}' is not a number of bytes") from None
        return max(value, 0)
    return min(HOLD_CAP_BYTES, device_memory_bytes(device) // HOLD_DEVICE_SHARE)
