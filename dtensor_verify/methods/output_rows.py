"""The output rows of a CROWN call: the default spec (every output a row) and the intersection of
CROWN's output bounds with IBP's."""
from __future__ import annotations

import torch


def output_ibp(graph, bounds, C):
    """IBP bounds of the rows `C y` from the output node's box in `bounds` (its IBP box, or better)."""
    lo, hi = (t.reshape(t.shape[0], -1) for t in bounds[graph.output_name])
    mid, rad = ((hi + lo) / 2).unsqueeze(-1), ((hi - lo) / 2).unsqueeze(-1)
    center, dev = C.matmul(mid).squeeze(-1), C.abs().matmul(rad).squeeze(-1)
    return center - dev, center + dev


def tighter_than_ibp(graph, bounds, C, lo, up):
    """CROWN's output bounds intersected with IBP's (both sound; CROWN alone may be looser on a
    network with general activations)."""
    ilo, iup = output_ibp(graph, bounds, C)
    return (None if lo is None else torch.maximum(lo, ilo)), (None if up is None else torch.minimum(up, iup))


def default_spec(graph, batch, dtype, device):
    n_out = graph.output.numel
    return torch.eye(n_out, dtype=dtype, device=device).unsqueeze(0).expand(batch, -1, -1)
