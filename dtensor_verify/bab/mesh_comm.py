"""Branch-and-bound workers spread over ranks (the `dp` collectives).

Who is a worker depends on the layout, never on policy names:

* the layout lets its ranks bound different domains (`layout.splits_domains`: every plan
  without tp): every rank is a worker with its own queue. Ranks of one shard group still run
  each bounding step together (FSDP gathers and streamed shards are collectives), which the
  solver's lockstep mode guarantees; dp groups run independently between syncs.
* otherwise (tp: every rank of a shard group holds a slice of the same domains' A-matrices):
  each dp group is one worker whose ranks hold identical queues; a transfer ships each rank's
  slice of the moved domains to the rank with the same shard index in the receiving group.

Every round every rank calls `sync` (two small all-reduces over all ranks: counts, flags,
worst margin), `rebalance` (an all-gather of queue sizes; domains move only when some
worker would otherwise run short of a full batch) and, once the round's children are made,
`balance` (children move when the workers' counts are unequal). Stopping is decided from the synced state,
so all ranks stop in the same round. A rank that dies makes the next collective fail (or time
out): the pipeline reports `error` / `timeout`, never a verdict.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .sync_state import SyncState
from .domains import Domains


class MeshComm:
    def __init__(self, layout):
        topo = layout.topology             # groups and mesh coordinates: no world group, no rank arithmetic
        self.group = topo.group
        self.rank = topo.rank
        self.world = topo.world
        self.device = layout.device
        if layout.splits_domains or topo.shard == 1:
            self.worker_of = list(range(self.world))          # worker id of each mesh rank
            self.worker = self.rank
            self.member = 0
            self.members = [[r] for r in range(self.world)]
        else:
            # A dp group is one worker; its members in shard order (mesh coordinates).
            self.worker_of = [topo.coords(r)[0] for r in range(self.world)]
            self.worker = topo.dp_rank
            self.member = topo.shard_rank
            self.members = [[topo.rank_at(w, s) for s in range(topo.shard)] for w in range(topo.dp)]
        self.workers = len(self.members)
        self.owns_roots = self.worker == 0
        self.is_leader = topo.is_leader
        self.moved = 0                                         # domains received by rebalancing
        self.moved_children = 0                                # children received by `balance`

    def _counts_once(self) -> bool:
        """Does this rank speak for its worker in sums (one member per worker)?"""
        return self.member == 0

    def sync(self, n_open: int, worst_margin: float, found: bool, exhausted: int, visited: int,
             time_up: bool) -> SyncState:
        own = 1.0 if self._counts_once() else 0.0
        sums = torch.tensor([own * n_open, own * exhausted, own * visited], dtype=torch.float64,
                            device=self.device)
        maxes = torch.tensor([-(worst_margin if n_open else math.inf), float(found), float(time_up), n_open],
                             dtype=torch.float64, device=self.device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=self.group)
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=self.group)
        s, m = sums.tolist(), maxes.tolist()
        return SyncState(open=int(s[0]), worst_margin=-m[0], found=m[1] > 0, exhausted=int(s[1]),
                         visited=int(s[2]), most_open=int(m[3]), time_up=m[2] > 0)

    def _plan(self, counts: list[int], batch: int) -> list[tuple[int, int, int]]:
        """Transfers (donor, receiver, n) that bring every worker up to min(fair share, batch),
        taken from the workers above their fair share. The same on every rank."""
        total = sum(counts)
        fair = [total // self.workers + (1 if w < total % self.workers else 0) for w in range(self.workers)]
        need = [max(0, min(fair[w], batch) - counts[w]) for w in range(self.workers)]
        spare = [max(0, counts[w] - fair[w]) for w in range(self.workers)]
        moves = []
        for r in range(self.workers):
            for d in range(self.workers):
                if need[r] == 0:
                    break
                n = min(need[r], spare[d])
                if n > 0:
                    moves.append((d, r, n))
                    need[r] -= n
                    spare[d] -= n
        return moves

    def agree_min(self, value: int) -> int:
        """The smallest of every rank's `value`, on every rank."""
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())

    def rebalance(self, store, batch: int) -> None:
        counts = torch.zeros(self.world, dtype=torch.int64, device=self.device)
        counts[self.rank] = len(store)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=self.group)          # an all-gather of one number each
        per_rank = counts.tolist()
        per_worker = [per_rank[self.members[w][0]] for w in range(self.workers)]
        moves = self._plan(per_worker, batch)
        if not moves:
            return
        outgoing = {}
        for donor, receiver, n in moves:
            if donor == self.worker:
                domains, margins = store.pop_worst(n, packed=store.shared_codec)   # (fewer bytes to send)
                target = self.members[receiver][self.member]
                outgoing.setdefault(target, []).append((domains.to("cpu"), margins.cpu()))
        gathered = [None] * self.world
        dist.all_gather_object(gathered, outgoing, group=self.group)
        for sent in gathered:
            for domains, margins in (sent or {}).get(self.rank, []):
                store.push(domains.to(self.device), margins.to(self.device), packed=store.shared_codec)
                self.moved += len(domains)

    def balance(self, kids: Domains, codec=None) -> Domains:
        """This round's children spread evenly over the workers (`_plan` with no batch cap): the
        workers above their fair share by more than a tenth of it send their last children to those
        below. Parents are shared out whole by `rebalance`; children are not equal work per parent
        (a wide round's cheap bound prunes a different number of each parent's), and a small
        frontier (the first rounds: one root) leaves workers without parents. Every rank calls it
        every round, with or without children (one all-reduce; domains move only when unequal).
        `codec` (the store's, `domain_codec.py`): children travel packed, as the store keeps them."""
        counts = torch.zeros(self.world, dtype=torch.int64, device=self.device)
        counts[self.rank] = len(kids)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=self.group)
        per_rank = counts.tolist()
        per_worker = [per_rank[self.members[w][0]] for w in range(self.workers)]
        total = sum(per_worker)
        fair = -(-total // self.workers)
        if max(per_worker) - fair <= max(0, fair // 10):
            return kids
        outgoing, keep = {}, len(kids)
        for donor, receiver, n in self._plan(per_worker, total):
            if donor == self.worker:
                part = kids.index(torch.arange(keep - n, keep, device=kids.pair.device))
                keep -= n
                if codec is not None:
                    part = codec.pack(part)
                outgoing.setdefault(self.members[receiver][self.member], []).append(part.to("cpu"))
        gathered = [None] * self.world
        dist.all_gather_object(gathered, outgoing, group=self.group)
        parts = [kids.index(torch.arange(keep, device=kids.pair.device))]
        for sent in gathered:
            for part in (sent or {}).get(self.rank, []):
                part = part.to(self.device)
                parts.append(part if codec is None else codec.unpack(part))
                self.moved_children += len(part)
        return Domains.cat(parts)

    def share_counterexample(self, found_here):
        """The first rank's confirmed counterexample (x, y, who confirmed), on every rank."""
        gathered = [None] * self.world
        dist.all_gather_object(gathered, found_here, group=self.group)
        return next((g for g in gathered if g is not None), (None, None))


__all__ = ["MeshComm", "Domains"]
