"""Small LayerNorm networks for the LayerNorm / softmax-shift tests and scripts/bench_layernorm.py:
a Linear -> LayerNorm -> Linear net (as nn.LayerNorm and as the written-out chain) and a
transformer block (LayerNorm, single-head attention with softmax, residuals, ReLU MLP)."""
from __future__ import annotations

import torch
from torch import nn


class LinNorm(nn.Module):
    """Linear -> [tokens, width] -> LayerNorm (module or written out) -> Linear."""

    def __init__(self, tokens=4, width=6, manual=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.c = nn.Linear(4, tokens * width), nn.Linear(tokens * width, 3)
        self.ln = nn.LayerNorm(width)
        with torch.no_grad():
            self.ln.weight.copy_(1 + 0.5 * torch.randn(width))
            self.ln.bias.copy_(0.3 * torch.randn(width))
        self.tokens, self.width, self.manual = tokens, width, manual

    def norm(self, h):
        if not self.manual:
            return self.ln(h)
        c = h - h.mean(-1, keepdim=True)
        return c / torch.sqrt((c ** 2).mean(-1, keepdim=True) + self.ln.eps) * self.ln.weight + self.ln.bias

    def forward(self, x):
        return self.c(self.norm(self.a(x).reshape(-1, self.tokens, self.width)).flatten(1))


class Block(nn.Module):
    """A pre-norm transformer block on [tokens, width] inputs, then a Linear head."""

    def __init__(self, tokens=3, width=4, hidden=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.head = nn.Linear(tokens * width, 3)
        self.scale = width ** -0.5

    def forward(self, x):                      # x [B, tokens, width]
        h = self.ln1(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) * self.scale, dim=-1)
        x = x + self.o(att @ self.v(h))
        x = x + self.fc2(torch.relu(self.fc1(self.ln2(x))))
        return self.head(x.flatten(1))


def export(net, in_shape, path, opset: int) -> str:
    """The net as ONNX (TorchScript exporter: opset < 17 writes LayerNorm out as ReduceMean, Sub,
    Pow, ReduceMean, Add, Sqrt, Div, Mul, Add; 17 as LayerNormalization)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.zeros(1, *in_shape), str(path), opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["y"])
    return str(path)
