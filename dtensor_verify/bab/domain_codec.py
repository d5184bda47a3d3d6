"""How the open-domain store keeps its domains: without what follows from their splits.

In ReLU branch and bound a domain's intermediate bounds are its pair's root bounds with each
split neuron clamped (`z >= 0`: its lower bound raised to 0; `z <= 0`: its upper bound lowered
to 0): beta-CROWN keeps intermediate bounds fixed (`methods/beta_crown.py`) and `domains.split`
only clamps. A neuron stable at the root stays stable in every domain: it is never split, its
sign stays 0, its multiplier 0 (`beta * sign`: no gradient) and its slope the root's (a stable
neuron's relaxation does not read it: no gradient either). So `DerivedBounds.pack` drops a
domain's bounds and keeps signs (int8), slopes and multipliers only at the neurons unstable in
some root; `unpack` rebuilds everything, bit for bit, as the domain leaves the store (the same
clamps on the same root values; `tests/test_domain_codec.py` checks every pushed domain of real
searches). TinyYOLO (167,648 ReLU neurons, 17,676 unstable at prop_000011's CROWN root): 3.35 MB a
domain with one row, now 0.16 MB (`scripts/bench_domain_store_bytes.py`); on a shared H100
(session 11) the whole domains filled the store, host spill included, after 86-91 s of 300 s.

Only where every bound of a domain follows from its splits: ReLU splitting of a network with no
general split (input splits recompute a sub-box's bounds; general splits cut intervals and
refresh bounds after them). Elsewhere the store keeps domains whole (`Whole`).
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

import torch

from .domains import Domains

SIGN_DTYPE = torch.int8


class Whole:
    """Domains kept as they are."""

    def fingerprint(self) -> int:
        return 0

    def pack(self, domains: Domains) -> Domains:
        return domains

    def unpack(self, domains: Domains) -> Domains:
        return domains


class DerivedBounds:
    """Domains kept without their intermediate bounds (rebuilt from the roots' and the signs), and
    with their signs, slopes and multipliers only at the neurons that can be split."""

    def __init__(self, roots: Domains, pre_of: dict[str, str], n_pairs: int):
        """roots: one root domain per pair (their bounds, slopes and signs as branch and bound
        starts); n_pairs: how many pairs the problem has (`roots.pair` indexes them)."""
        self.pre_of = pre_of
        pairs = roots.pair
        self.root = {name: (_by_pair(lo, pairs, n_pairs), _by_pair(up, pairs, n_pairs))
                     for name, (lo, up) in roots.bounds.items()}
        # The neurons unstable in some root: the only ones a split can fix and the only ones whose
        # slope a bound reads (`ops.relu`: a stable neuron's slope is its 0 / 1; its gradient is
        # zero, so it keeps the root's value) or whose multiplier can leave 0 (`beta * sign`, sign 0
        # unless split). Elsewhere the slope is the root's, the multiplier 0, the sign 0.
        self.index, self.root_alpha = {}, {}
        for relu, pre in pre_of.items():
            lo, up = roots.bounds[pre]
            sign, alpha, beta = roots.signs[relu], roots.alphas.get(relu), roots.betas.get(relu)
            if alpha is None or beta is None or alpha.shape[2:] != sign.shape[1:] or beta.shape != alpha.shape:
                continue                 # (a layout that keeps a part of the slopes: kept whole)
            self.index[relu] = ((lo < 0) & (up > 0)).flatten(1).any(0).nonzero().flatten()
            self.root_alpha[relu] = _by_pair(alpha, pairs, n_pairs)
        signs = list(roots.signs.values())
        self.sign_dtype = signs[0].dtype if signs else torch.float32     # (outside the store)

    def fingerprint(self) -> int:
        """A 62-bit digest of what `unpack` rebuilds from (the roots' bounds and slopes, the kept
        neurons): workers may send each other packed domains only where theirs are all equal."""
        h = hashlib.blake2b(digest_size=8)
        for name in sorted(self.root):
            for t in self.root[name]:
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for relu in sorted(self.index):
            h.update(self.index[relu].cpu().numpy().tobytes())
            h.update(self.root_alpha[relu].detach().cpu().contiguous().numpy().tobytes())
        return int.from_bytes(h.digest(), "little") >> 2

    def pack(self, domains: Domains) -> Domains:
        signs, alphas, betas = dict(domains.signs), dict(domains.alphas), dict(domains.betas)
        for relu, s in signs.items():
            idx = self.index.get(relu)
            if idx is None:
                signs[relu] = s.to(SIGN_DTYPE)
                continue
            signs[relu] = s.flatten(1)[:, idx].to(SIGN_DTYPE)
            alphas[relu] = alphas[relu].flatten(2)[:, :, idx]
            betas[relu] = betas[relu].flatten(2)[:, :, idx]
        return replace(domains, bounds={}, signs=signs, alphas=alphas, betas=betas)

    def unpack(self, domains: Domains) -> Domains:
        pair = domains.pair
        n = len(pair)
        dtype = self.sign_dtype
        bounds = {name: (lo[pair], up[pair]) for name, (lo, up) in self.root.items()}
        signs, alphas, betas = dict(domains.signs), dict(domains.alphas), dict(domains.betas)
        for relu, pre in self.pre_of.items():
            lo, up = bounds[pre]
            idx = self.index.get(relu)
            if idx is None:
                signs[relu] = domains.signs[relu].to(dtype)
            else:
                flat = torch.zeros((n, lo[0].numel()), dtype=dtype, device=lo.device)
                flat[:, idx] = domains.signs[relu].to(dtype)
                signs[relu] = flat.reshape(lo.shape)
                full = self.root_alpha[relu][pair]
                shape = full.shape
                full = full.flatten(2)
                full[:, :, idx] = domains.alphas[relu]
                alphas[relu] = full.reshape(shape)
                zero = torch.zeros_like(full)
                zero[:, :, idx] = domains.betas[relu]
                betas[relu] = zero.reshape(shape)
            s = signs[relu]
            # `domains._split_relus`: -1 is `z >= 0` (lower clamped to 0), +1 `z <= 0` (upper to 0)
            bounds[pre] = (torch.where(s < 0, lo.clamp(min=0.0), lo), torch.where(s > 0, up.clamp(max=0.0), up))
        return replace(domains, bounds=bounds, signs=signs, alphas=alphas, betas=betas)


def _by_pair(t: torch.Tensor, pairs: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """[n_pairs, ...]: row pairs[i] is t[i] (the other rows are never read)."""
    out = t.new_zeros((n_pairs, *t.shape[1:]))
    out[pairs] = t
    return out


def codec_for(problem, mode: str, roots: Domains) -> Whole | DerivedBounds:
    """`DerivedBounds` where every bound of a domain follows from its splits (see the module
    docstring), else `Whole`."""
    pre_nodes = set(problem.pre_of.values())
    if mode != "relu" or problem.general or roots.box is not None or not problem.relus \
            or set(roots.bounds) != pre_nodes or set(roots.signs) != set(problem.relus):
        return Whole()
    return DerivedBounds(roots, problem.pre_of, int(problem.C.shape[0]))
