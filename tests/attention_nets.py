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
