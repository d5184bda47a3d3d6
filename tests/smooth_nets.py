"""Small smooth networks (sigmoid, tanh, sin, GELU, products of activations) with an upper bound
of their Lipschitz constant, and the dense-grid minimum of one output over a box: the ground
truth of general branch and bound's tests (the grid's minimum minus Lipschitz x half the grid's
diagonal is below the true minimum; the grid's minimum is above it)."""
from __future__ import annotations

import torch
from torch import nn

KINDS = ("sigmoid", "tanh", "sin", "gelu", "product", "mixed")
LIP = {"sigmoid": 0.25, "tanh": 1.0, "sin": 1.0, "gelu": 1.13, "relu": 1.0}


class Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


def _act(kind):
    return {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "sin": Sin, "gelu": nn.GELU, "relu": nn.ReLU}[kind]()


class Chain(nn.Module):
    """Linear -> act -> Linear -> act -> Linear (`acts`: the two activations)."""

    def __init__(self, n_in, hidden, acts):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        self.a1, self.a2 = _act(acts[0]), _act(acts[1])
        self.acts = acts

    def forward(self, x):
        return self.l3(self.a2(self.l2(self.a1(self.l1(x)))))

    def lipschitz(self) -> float:
        return _norm(self.l1) * LIP[self.acts[0]] * _norm(self.l2) * LIP[self.acts[1]] * _norm(self.l3)


class Product(nn.Module):
    """y = W3 (tanh(W1 x) * sigmoid(W2 x)): a product of two activations (both in [-1, 1])."""

    def __init__(self, n_in, hidden):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(n_in, hidden), nn.Linear(n_in, hidden), nn.Linear(hidden, 1)

    def forward(self, x):
        return self.l3(torch.tanh(self.l1(x)) * torch.sigmoid(self.l2(x)))

    def lipschitz(self) -> float:
        # d(a b) = b da + a db with |a|, |b| <= 1; |da| <= |W1| |dx|, |db| <= |W2| |dx| / 4
        return _norm(self.l3) * (_norm(self.l1) + _norm(self.l2) / 4)


def _norm(lin) -> float:
    return float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))


def smooth_net(kind: str, n_in: int, seed: int, hidden: int = 6, scale: float = 1.5):
    torch.manual_seed(seed)
    if kind == "product":
        net = Product(n_in, hidden)
    else:
        acts = {"mixed": ("relu", "sigmoid")}.get(kind, (kind, kind))
        net = Chain(n_in, hidden, acts)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(scale)
    return net.eval()


def grid_truth(net, lo: torch.Tensor, hi: torch.Tensor, points: int = 200_000):
    """(grid minimum, a lower bound of the true minimum) of net(x)[0] over the box [lo, hi] (1-D
    tensors), on a regular grid of about `points` points."""
    n = lo.numel()
    per = max(2, int(round(points ** (1.0 / n))))
    axes = [torch.linspace(float(lo[i]), float(hi[i]), per) for i in range(n)]
    pts = torch.stack([g.flatten() for g in torch.meshgrid(*axes, indexing="ij")], 1)
    with torch.no_grad():
        ys = torch.cat([net(chunk)[:, 0] for chunk in pts.split(65536)])
    step = (hi - lo) / (per - 1)
    half_diag = float(step.norm()) / 2
    gmin = float(ys.min())
    return gmin, gmin - net.lipschitz() * half_diag
