"""How many open domains one branch-and-bound worker may keep, and why.

The limit was `store_fraction` of the *free* memory when branch and bound started, divided by one
domain's bytes. On a GPU shared by 16 benchmark processes the free memory at that moment can be a
few MiB (the neighbours' peaks), which gave pensieve_parallel_76 a limit of 55 domains and an
`unknown` after a few rounds, although the process's share of the card was gigabytes.

Now the limit is the larger of
  * `store_fraction` of the free memory now (as before), and
  * a floor: `store_fraction` of this process's share of the device's *total* memory (the card's,
    or the host's MemTotal on a CPU; divided among the processes that share it, `device_share`),
and when the store reaches it, the free memory is asked again (the store's own bytes count as
its own: they were free memory when it started) before the run gives up. The reason of the
`unknown` says the limit, a domain's bytes and where the number came from.

On a GPU that limit is the device's part of the store: past it, domains move to host memory
(`DomainStore`'s spill), up to `host_fraction` of this process's share of the host's available
memory (`device_share.host_memory_bytes`). The run gives up only when both are full.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..device_share import free_memory_bytes, host_memory_bytes, total_memory_bytes


@dataclass
class StoreLimit:
    domains: int            # open domains this worker may hold on its device
    per_domain: int         # bytes one stored domain takes
    source: str             # what the number came from (said in an `unknown`'s reason)
    host: int = 0           # ... and more in host memory (a GPU's store spills there)

    @property
    def total(self) -> int:
        return self.domains + self.host

    def reason(self, agreed: int) -> str:
        """Why the run stops at `agreed` open domains (the workers' smallest limit)."""
        spill = f" + {self.host} in host memory" if self.host else ""
        return (f"too many open domains (limit {agreed} per worker, {self.per_domain} bytes each; this "
                f"worker's limit {self.domains} from {self.source}{spill})")


def store_limit(per_domain: int, fraction: float, at_least: int, device, max_domains: int | None,
                held: int = 0, host_fraction: float = 0.0) -> StoreLimit:
    """The limit (see the module docstring). `held`: domains the store holds on the device now
    (their bytes count as free memory of this worker); `at_least`: a floor in domains (a few
    batches); `max_domains`: the user's cap, if any (of both parts); `host_fraction`: of the host's
    memory for a GPU store's spilled domains (0: none)."""
    per_domain = max(1, int(per_domain))
    free = int((free_memory_bytes(device) + held * per_domain) * fraction) // per_domain
    floor = int(total_memory_bytes(device) * fraction) // per_domain
    if free >= floor:
        limit, source = free, f"{fraction:g} of the free memory"
    else:
        limit, source = floor, f"{fraction:g} of this process's share of the device memory"
    if max_domains is not None and max_domains < limit:
        limit, source = max_domains, "max_domains"
    if limit < at_least:
        limit, source = at_least, "four batches"
    host = 0
    if host_fraction > 0 and device.type == "cuda":
        host = int(host_memory_bytes() * host_fraction) // per_domain
        if max_domains is not None:
            host = max(0, min(host, max_domains - limit))
    return StoreLimit(limit, per_domain, source, host)
