"""CROWN's intermediate bounds computed once per box (issue 21).

The verdict pipeline's CROWN stage computes every intermediate node's CROWN bounds of each
region's box; alpha-CROWN's start, one stage later on the pairs CROWN left open, used to compute
the same bounds again (on the ViT ibp_3_3_8: 24 wide sweeps, the costliest part of CROWN). The
CROWN stage now keeps them per region (pre-activation nodes and the output: what alpha-CROWN's
sweeps read) and the alpha-CROWN stage starts from them when every box of its batch has them.

Only in one process, on the model's own layout (ranks that deal boxes or rows between them keep
computing their own), with the CROWN options the CROWN stage used, and while the kept bounds stay
under `MAX_BYTES` (many-region properties: the rest are computed as before).
"""
from __future__ import annotations

import dataclasses

import torch

from ..methods.crown import CrownOptions

MAX_BYTES = 256 << 20


def _applies(model, layout) -> bool:
    return model.layout.world_size == 1 and layout is model.layout


def _kept_nodes(graph) -> list[str]:
    return list(graph.preactivation_nodes()) + [graph.output_name]


def keep(inst, regions: list, intermediate: dict | None, layout) -> None:
    """Record CROWN's bounds (node -> (lower, upper) [B, *S], batch element b = regions[b])."""
    model = inst.model
    if intermediate is None or not _applies(model, layout):
        return
    names = [n for n in _kept_nodes(model.graph) if n in intermediate]
    per_region = sum(2 * intermediate[n][0][0].numel() * intermediate[n][0].element_size() for n in names)
    for b, region in enumerate(regions):
        if (len(inst.crown_bounds) + 1) * per_region > MAX_BYTES:
            return
        inst.crown_bounds[region] = {n: (intermediate[n][0][b].detach(), intermediate[n][1][b].detach())
                                     for n in names}


def given(inst, regions: list, crown_options: CrownOptions, layout) -> dict | None:
    """The kept bounds of these regions' boxes stacked as a batch, or None (some region has none,
    or alpha-CROWN's CROWN options differ from the CROWN stage's defaults)."""
    model = inst.model
    if not _applies(model, layout) or not regions or any(r not in inst.crown_bounds for r in regions):
        return None
    if dataclasses.replace(crown_options, max_rows=None) != CrownOptions():
        return None
    first = inst.crown_bounds[regions[0]]
    return {n: (torch.stack([inst.crown_bounds[r][n][0] for r in regions]),
                torch.stack([inst.crown_bounds[r][n][1] for r in regions])) for n in first}
