"""Domains of branch and bound, as batches of tensors.

A domain is a set of ReLU split decisions together with everything needed to bound it again:
its intermediate bounds (split neurons clamped), the split signs, the slopes and multipliers of
its last bound (children start from them), its best lower bound and the neuron to split next.
A `Domains` holds many of them along dim 0 of every tensor, so choosing, splitting and dropping
domains is indexing; no state lives on graph nodes.

Splits come in kinds, told apart by `decision[:, 0]` (see `split_kinds.py`): a ReLU split
(the relu's index, >= 0, and a flat neuron) or an input split (`INPUT_SPLIT` and a flat input
dimension: the domain's own sub-box `box` is halved there) or a general split (a code <=
`general_split.GENERAL_SPLIT` and a flat neuron: its interval is cut in two). Domains of an input-splitting run
carry their box ([n, *S] each side); domains of a ReLU-only run leave it None (their box is
their pair's), which saves its memory.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..margin import margin
from .general_split import split_general

NO_DECISION = -1      # decision[:, 0] of a domain with nothing left to split
INPUT_SPLIT = -2      # decision[:, 0] of a domain whose input box is halved along decision[:, 1]


@dataclass
class Domains:
    pair: torch.Tensor        # [n] long: the (region, disjunct) pair of the property it refines
    lower: torch.Tensor       # [n, K] best lower bounds of C y (the pair's rows; d not subtracted)
    bounds: dict              # pre-activation node -> (lower, upper) [n, *S], split neurons clamped
    signs: dict               # relu node -> [n, *S]: +1 split `z <= 0`, -1 split `z >= 0`, 0 free;
                              # general op (beta_of) -> [n, *S]: 1 where a general split cut its input
    alphas: dict              # relu node -> [n, K, *S] lower slopes of the last bound
    betas: dict               # relu node -> [n, K, *S] split multipliers of the last bound
    depth: torch.Tensor       # [n] long: number of splits
    decision: torch.Tensor    # [n, 2] long: (relu index, flat neuron) or (INPUT_SPLIT, input dim)
    box: tuple | None = None  # (lower, upper) [n, *S]: the domain's input sub-box (None: its pair's)
    more: torch.Tensor | None = None  # [n, M, 2] long: the next-best ReLU splits after `decision`, best
                                      # first (NO_DECISION where none), for wide rounds (`wide.py`);
                                      # None: the run splits one neuron per round

    def __len__(self) -> int:
        return int(self.pair.shape[0])

    def _map(self, fn) -> "Domains":
        def apply(v):
            if v is None:
                return None
            if isinstance(v, dict):
                return {k: apply(x) for k, x in v.items()}
            if isinstance(v, tuple):
                return tuple(apply(x) for x in v)
            return fn(v)
        return Domains(**{f.name: apply(getattr(self, f.name)) for f in fields(self)})

    def index(self, idx) -> "Domains":
        """The domains `idx` (a long index or a bool mask over dim 0)."""
        return self._map(lambda t: t[idx])

    def to(self, device) -> "Domains":
        return self._map(lambda t: t.to(device))

    @staticmethod
    def cat(parts: list["Domains"]) -> "Domains":
        """One batch from several (the same fields, dims after 0 equal)."""
        parts = [p for p in parts if p is not None]
        if len(parts) == 1:
            return parts[0]

        def join(values):
            first = values[0]
            if first is None or any(v is None for v in values):
                assert all(v is None for v in values), "domains with and without their own box"
                return None
            if isinstance(first, dict):
                return {k: join([v[k] for v in values]) for k in first}
            if isinstance(first, tuple):
                return tuple(join([v[i] for v in values]) for i in range(len(first)))
            return torch.cat(values)

        return Domains(**{f.name: join([getattr(p, f.name) for p in parts]) for f in fields(Domains)})

    def margin(self, d: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
        """[n]: the best row's `lower - d`; a domain is proved once it is > 0."""
        return margin(self.lower, d[self.pair], row_mask[self.pair])

    def nbytes(self) -> int:
        total = 0

        def count(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        self._map(count)
        return total


class DomainStore:
    """The open domains of one worker, worst (smallest margin) first out.

    On a GPU the store keeps at most `keep` domains on the device; past that, the domains it would
    take last (the largest margins) move to host memory (`host`) in chunks, and come back, worst
    chunk first, when the device's part runs short of a round's parents. Before, a full store
    ended the run `unknown` ("too many open domains") with most of its time left (TinyYOLO on a
    shared H100: after 30 s of a 300 s limit). Soundness: a spilled domain is still open (it counts
    in `len` and in `worst_margin`), so the run cannot read as proved while any is on the host.
    `domains` / `margins` are the device's part (what `pop_largest`'s key indexes), as `codec`
    packs them (`domain_codec.py`: ReLU splitting keeps no intermediate bounds, they follow from
    the splits); what leaves the store is unpacked."""

    def __init__(self, keep: int | None = None, host: torch.device | None = None, codec=None):
        self.codec = codec                # packs domains coming in, unpacks them going out (None: as they are)
        self.shared_codec = False         # every worker's codec is the same: domains may travel packed
        self.domains: Domains | None = None
        self.margins: torch.Tensor | None = None
        self.keep = keep                  # domains on the device at most (None: no limit)
        self.host = host                  # where the excess goes (None: nowhere, all stay)
        self._spilled: list[tuple[Domains, torch.Tensor, float]] = []   # (domains, margins, min margin)
        self._spilled_n = 0
        self._device = None               # where the device's part lives (its last push)
        self.spills = 0                   # chunks moved to the host
        self.refills = 0                  # chunks brought back

    def __len__(self) -> int:
        return self.on_device() + self._spilled_n

    def on_device(self) -> int:
        return 0 if self.domains is None else len(self.domains)

    def spilled(self) -> int:
        return self._spilled_n

    def _out(self, domains: Domains | None) -> Domains | None:
        return domains if domains is None or self.codec is None else self.codec.unpack(domains)

    def push(self, domains: Domains, margins: torch.Tensor, packed: bool = False):
        """Store `domains` (`packed`: as the codec packs them already, e.g. sent by another worker
        from its store)."""
        if len(domains) == 0:
            return
        if self.codec is not None and not packed:
            domains = self.codec.pack(domains)
        self._device = margins.device
        if self.domains is None:
            self.domains, self.margins = domains, margins
        else:
            self.domains = Domains.cat([self.domains, domains])
            self.margins = torch.cat([self.margins, margins])
        self._spill()

    def _spill(self):
        """Past `keep` on the device: the largest margins down to 3/4 of it go to the host."""
        n = self.on_device()
        if self.host is None or self.keep is None or n <= self.keep:
            return
        out, margins = self._take(torch.topk(self.margins, n - self.keep * 3 // 4, largest=True).indices)
        margins = margins.to(self.host)
        self._spilled.append((out.to(self.host), margins, float(margins.min())))
        self._spilled_n += len(out)
        self.spills += 1

    def refill(self, k: int):
        """Bring spilled chunks back (the one with the worst margin first) until the device holds
        `k` domains or none is left on the host."""
        while self._spilled and self.on_device() < k:
            j = min(range(len(self._spilled)), key=lambda i: self._spilled[i][2])
            domains, margins, _ = self._spilled.pop(j)
            self._spilled_n -= len(domains)
            self.refills += 1
            device = self._device       # (the device's part may be empty: its last pop left None)
            self.domains = domains.to(device) if self.domains is None else Domains.cat(
                [self.domains, domains.to(device)])
            self.margins = margins.to(device) if self.margins is None else torch.cat(
                [self.margins, margins.to(device)])

    def worst_margin(self) -> float:
        worst = float(self.margins.min()) if self.on_device() else float("inf")
        return min([worst] + [m for _, _, m in self._spilled])

    def _take(self, idx, unpack: bool = False) -> tuple[Domains, torch.Tensor]:
        """Remove the device's domains `idx` and return them (and their margins; `unpack`: as the
        codec unpacks them). All-or-nothing: the store changes only once both copies exist (an
        out-of-memory error leaves it whole)."""
        n = self.on_device()
        keep = torch.ones(n, dtype=torch.bool, device=self.margins.device)
        keep[idx] = False
        taken = self.domains.index(idx)
        out = (self._out(taken) if unpack else taken, self.margins[idx])
        if not bool(keep.any()):
            self.domains = self.margins = None
        else:
            self.domains, self.margins = self.domains.index(keep), self.margins[keep]
        return out

    def pop_worst(self, k: int, packed: bool = False) -> tuple[Domains | None, torch.Tensor | None]:
        """Remove and return the `k` domains with the smallest margins (and those margins;
        `packed`: as the store keeps them, for another worker's store)."""
        self.refill(k)
        n = self.on_device()
        if n == 0 or k <= 0:
            return None, None
        if k >= n:
            out = (self.domains if packed else self._out(self.domains), self.margins)   # (before the store lets them go)
            self.domains = self.margins = None
            return out
        return self._take(torch.topk(self.margins, k, largest=False).indices, unpack=not packed)

    def pop_largest(self, key: torch.Tensor, k: int) -> tuple[Domains | None, torch.Tensor | None]:
        """Remove and return the `k` domains of the device's part with the largest `key` [n] (and
        their margins); `refill` first where the caller wants spilled ones among them."""
        n = self.on_device()
        if n == 0 or k <= 0:
            return None, None
        k = min(k, n)
        return self._take(torch.topk(key, k, largest=True).indices, unpack=True)

    def pop_best(self, k: int) -> tuple[Domains | None, torch.Tensor | None]:
        """Remove and return the `k` domains with the largest margins (to hand to another worker:
        the easy end of the queue, so the sender keeps the work it was about to do)."""
        self.refill(k)
        return self.pop_largest(self.margins, k) if self.on_device() else (None, None)


def split(domains: Domains, decision: torch.Tensor, relus: list[str], pre_of: dict[str, str],
          general: list | tuple = (), beta_of: dict | None = None) -> Domains:
    """The two children of each domain on its `decision`. ReLU split (relu index, flat neuron):
    the first n take `z >= 0` (lower bound clamped to 0), the last n `z <= 0` (upper bound
    clamped to 0). Input split (INPUT_SPLIT, dim): the first n take the lower half of the box
    along dim, the last n the upper half (their intermediate bounds are the parent's until the
    solver recomputes them on the smaller box). General split (`general_split.code_of(j)`,
    flat neuron of node general[j]): the first n keep the upper part of its interval, the last n
    the lower part. Children keep their parent's slopes,
    multipliers and lower bound (a floor: a child's domain lies inside its parent's)."""
    n = len(domains)
    both = torch.cat([torch.arange(n, device=domains.pair.device)] * 2)
    kids = domains.index(both)
    kids.depth = kids.depth + 1
    dec = decision[both]
    device = domains.pair.device
    side = torch.cat([torch.full((n,), -1.0, device=device), torch.full((n,), 1.0, device=device)])
    rows = (dec[:, 0] == INPUT_SPLIT).nonzero().flatten()
    if rows.numel():
        kids.box = halve_boxes(kids.box, rows, dec[rows, 1], side[rows] < 0)
    _split_relus(kids, dec, side, relus, pre_of)
    if general:
        split_general(kids, dec, side, general, beta_of)
    kids.decision = torch.full_like(kids.decision, NO_DECISION)
    if kids.more is not None:
        kids.more = torch.full_like(kids.more, NO_DECISION)
    return kids


def halve_boxes(box: tuple, rows: torch.Tensor, dims: torch.Tensor, lower_half: torch.Tensor) -> tuple:
    """Copies of `box` (lower, upper [n, *S]) where row rows[i] keeps the lower (lower_half[i]) or
    upper half of its box along flat dimension dims[i]. The midpoint is shared by both halves, so
    the halves cover the parent exactly."""
    lo, hi = box
    flat_lo, flat_hi = lo.flatten(1).clone(), hi.flatten(1).clone()
    a, b = flat_lo[rows, dims], flat_hi[rows, dims]
    mid = a + (b - a) / 2
    flat_hi[rows, dims] = torch.where(lower_half, mid, b)
    flat_lo[rows, dims] = torch.where(lower_half, a, mid)
    return flat_lo.reshape(lo.shape), flat_hi.reshape(hi.shape)


def _split_relus(kids: Domains, dec: torch.Tensor, side: torch.Tensor, relus: list[str], pre_of: dict):
    """Clamp each child's split neuron (rows whose decision is a ReLU split), in place."""
    for li, relu in enumerate(relus):
        rows = (dec[:, 0] == li).nonzero().flatten()
        if rows.numel() == 0:
            continue
        neuron = dec[rows, 1]
        signs = kids.signs[relu]
        flat = signs.flatten(1)
        flat[rows, neuron] = side[rows].to(flat.dtype)
        kids.signs[relu] = flat.reshape(signs.shape)
        lower, upper = kids.bounds[pre_of[relu]]
        lo, up = lower.flatten(1), upper.flatten(1)
        active = side[rows] < 0
        ra, na = rows[active], neuron[active]
        ri, ni = rows[~active], neuron[~active]
        lo[ra, na] = lo[ra, na].clamp(min=0.0)
        up[ri, ni] = up[ri, ni].clamp(max=0.0)
        kids.bounds[pre_of[relu]] = (lo.reshape(lower.shape), up.reshape(upper.shape))
