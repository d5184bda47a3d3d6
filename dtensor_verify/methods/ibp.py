"""Interval bound propagation: one forward sweep of boxes."""
from __future__ import annotations

import torch

from ..layout import DEFAULT_LAYOUT


def ibp(graph, box, layout=DEFAULT_LAYOUT, until: str | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Boxes for every node (up to `until`); `box` = (x_lower, x_upper) of shape [B, *input_shape]."""
    bounds = {graph.input_name: box}
    for node in graph.nodes:
        if node.op is None:
            continue
        bounds[node.name] = ibp_step(node, bounds, layout)
        if node.name == until:
            break
    return bounds


def ibp_step(node, bounds: dict, layout=DEFAULT_LAYOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """The box of one node from the boxes of its inputs (full, plain tensors)."""
    with layout.weights(node) as weights:
        lo, hi = weights.ibp([bounds[i] for i in node.inputs])
    lo, hi = layout.local(lo), layout.local(hi)
    # inf - inf (an unbounded input through a map with mixed signs) is NaN: the sound reading
    # of it is "unbounded", and a NaN would poison every later min/max.
    return (torch.nan_to_num(lo, nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf),
            torch.nan_to_num(hi, nan=torch.inf, posinf=torch.inf, neginf=-torch.inf))


def ibp_output(graph, box, C=None, layout=DEFAULT_LAYOUT):
    """IBP bounds of `C f(x)` (C: [B, K, n_out]; None = identity)."""
    lo, hi = ibp(graph, box, layout)[graph.output_name]
    lo, hi = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)     # also a scalar output
    if C is None:
        return lo, hi
    mid, rad = ((hi + lo) / 2).unsqueeze(-1), ((hi - lo) / 2).unsqueeze(-1)
    center, dev = C.matmul(mid).squeeze(-1), C.abs().matmul(rad).squeeze(-1)
    return torch.nan_to_num(center - dev, nan=-torch.inf), torch.nan_to_num(center + dev, nan=torch.inf)
