"""A small attention block before a ReLU MLP (softmax and two products: general nodes), shared by
the branch-and-bound memory and refresh-cost tests."""
from __future__ import annotations

import torch
from torch import nn


class AttentionBlock(nn.Module):
    """x [tokens, 4] -> softmax(q k^T / 2) v -> Linear(tokens * 4, 16) -> ReLU -> Linear(16, 3)."""

    def __init__(self, tokens: int):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.fc1, self.fc2 = nn.Linear(tokens * 4, 16), nn.Linear(16, 3)

    def forward(self, x):
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) * 0.5, dim=-1)
        return self.fc2(torch.relu(self.fc1((att @ self.v(x)).flatten(1))))


def ibp_root(model, lo, hi, d: float = 10.0):
    """(BabProblem, roots) for one pair `y0 - y1 <= d` over the box, with IBP's bounds at the root."""
    from dtensor_verify.bab import BabProblem, make_roots
    from dtensor_verify.bab.roots import RootState
    from dtensor_verify.methods.ibp import ibp

    g = model.graph
    with torch.no_grad():
        b = ibp(g, (lo, hi), model.layout)
    C, dd = torch.tensor([[[1.0, -1.0, 0.0]]]), torch.tensor([[d]])
    problem = BabProblem(g, model.layout, model.forward, C, dd, torch.ones(1, 1, dtype=torch.bool), lo, hi)
    state = RootState({n: (b[n][0][0], b[n][1][0]) for n in g.preactivation_nodes()})
    y_lo, y_hi = (t.flatten(1)[0] for t in b[g.output_name])
    lower = (C[0].clamp(min=0) @ y_lo + C[0].clamp(max=0) @ y_hi - dd[0]).reshape(1)
    return problem, make_roots(problem, [0], [state], [lower])
