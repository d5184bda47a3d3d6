"""A small MSCN-like set network (nn4sys mscn_128d's shape, tiny): two sets of elements, each
element [features..., mask]; an MLP per element, the outputs times the mask, summed and divided by
the mask's sum (an average over the present elements), both averages concatenated, an MLP and a
sigmoid. Boxes move one or two feature values and keep every mask fixed, as nn4sys' properties."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import dtensor_verify as dv

ELEMS, FEATS, WIDTH = 3, 3, 16          # per set: ELEMS elements of FEATS features and a mask


class SetNet(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        def lin(i, o):
            layer = nn.Linear(i, o)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(o, i, generator=g) / i ** 0.5)
                layer.bias.copy_(torch.randn(o, generator=g) * 0.1)
            return layer
        self.a1, self.a2 = lin(FEATS, WIDTH), lin(WIDTH, WIDTH)
        self.b1, self.b2 = lin(FEATS, WIDTH), lin(WIDTH, WIDTH)
        self.o1, self.o2 = lin(2 * WIDTH, WIDTH), lin(WIDTH, 1)

    def _set(self, x, l1, l2):
        feats, mask = x[:, :, :FEATS], x[:, :, FEATS:]
        h = torch.relu(l2(torch.relu(l1(feats)))) * mask
        return h.sum(1) / mask.sum(1)

    def forward(self, x):                # x [B, 2 * ELEMS, FEATS + 1]
        a = self._set(x[:, :ELEMS], self.a1, self.a2)
        b = self._set(x[:, ELEMS:], self.b1, self.b2)
        return torch.sigmoid(self.o2(torch.relu(self.o1(torch.cat([a, b], 1)))))


SHAPE = (2 * ELEMS, FEATS + 1)


def load(seed: int = 0):
    return dv.load(SetNet(seed).eval(), input_shape=SHAPE)


def boxes(n: int, seed: int = 0, moving=((0, FEATS - 1),), width: float = 0.3):
    """n boxes [n, *SHAPE]: random fixed features, masks with the first element of each set
    present (others at random), the `moving` (element, feature) entries widened by `width`."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, *SHAPE))
    mask = (rng.uniform(size=(n, 2 * ELEMS)) < 0.5).astype(float)
    mask[:, 0] = mask[:, ELEMS] = 1.0
    x[:, :, FEATS] = mask
    lo, hi = x.copy(), x.copy()
    for e, f in moving:
        hi[:, e, f] = lo[:, e, f] + width
    return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
