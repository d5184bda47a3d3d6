"""Deterministic small models for tests.

Every factory seeds torch itself and returns ``(model, input_shape)``: an eval-mode float32
``nn.Module`` and the per-sample input shape (no batch dim).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import torch
from torch import nn


def _finish(model: nn.Module) -> nn.Module:
    return model.to(torch.float32).eval()


def random_mlp(widths: list[int], seed: int = 0, flatten_input_shape: tuple | None = None):
    """Linear/ReLU MLP with layer widths ``widths`` (input first, output last).

    With ``flatten_input_shape`` the model starts with ``nn.Flatten`` and takes that shape
    (its element count must equal ``widths[0]``).
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    if flatten_input_shape is not None:
        n = 1
        for d in flatten_input_shape:
            n *= d
        assert n == widths[0], (flatten_input_shape, widths[0])
        layers.append(nn.Flatten())
        input_shape = tuple(flatten_input_shape)
    else:
        input_shape = (widths[0],)
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return _finish(nn.Sequential(*layers)), input_shape


CNN_KINDS = ("basic", "dilated", "grouped", "bn", "strided_pad")


def random_cnn(kind: str = "basic", seed: int = 0):
    """Small CNNs on ``[C, H, W]`` inputs; ``kind`` in CNN_KINDS."""
    torch.manual_seed(seed)
    if kind == "basic":
        shape = (1, 8, 8)
        feats = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                 nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()]
    elif kind == "dilated":
        shape = (2, 9, 9)
        feats = [nn.Conv2d(2, 4, 3, padding=2, dilation=2), nn.ReLU(),
                 nn.Conv2d(4, 4, 3, stride=2, dilation=2), nn.ReLU()]
    elif kind == "grouped":
        shape = (2, 8, 8)
        feats = [nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.ReLU(),
                 nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU()]
    elif kind == "bn":
        shape = (2, 8, 8)
        bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(4) * 0.3)
            bn.running_var.copy_(torch.rand(4) + 0.5)
            bn.weight.copy_(torch.rand(4) + 0.5)
            bn.bias.copy_(torch.randn(4) * 0.2)
        feats = [nn.Conv2d(2, 4, 3, padding=1), bn, nn.ReLU(),
                 nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU()]
    elif kind == "strided_pad":
        shape = (3, 10, 10)
        feats = [nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.ReLU(),
                 nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()]
    else:
        raise ValueError(f"unknown cnn kind {kind!r}; choose from {CNN_KINDS}")
    body = nn.Sequential(*feats)
    with torch.no_grad():
        n_flat = body(torch.zeros(1, *shape)).numel()
    model = nn.Sequential(*feats, nn.Flatten(), nn.Linear(n_flat, 16), nn.ReLU(),
                          nn.Linear(16, 5))
    return _finish(model), shape


class _ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a1 = nn.Conv2d(4, 4, 3, padding=1)
        self.a2 = nn.Conv2d(4, 4, 3, padding=1)
        self.b1 = nn.Conv2d(4, 4, 1)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * 6 * 6, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        h = self.relu(self.stem(x))
        a = self.a2(self.relu(self.a1(h)))
        b = self.b1(h)
        h = self.relu(a + b)
        return self.fc2(self.relu(self.fc1(self.flatten(h))))


def residual_net(seed: int = 0):
    """Small conv ResNet block: relu(stem) -> relu(branch_a + branch_b) -> fc; input [1, 6, 6]."""
    torch.manual_seed(seed)
    return _finish(_ResidualNet()), (1, 6, 6)


class _NormalizedMLP(nn.Module):
    def __init__(self, mlp: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.mlp = mlp

    def forward(self, x):
        return self.mlp((x - self.mean) / self.std)


def normalized_mlp(seed: int = 0):
    """``mlp((x - mean) / std)`` with constant buffers (traces to sub / truediv); input [6]."""
    mlp, shape = random_mlp([6, 12, 8, 4], seed=seed)
    torch.manual_seed(seed + 1)
    mean = torch.randn(6) * 0.1
    std = torch.rand(6) * 0.5 + 0.5
    return _finish(_NormalizedMLP(mlp, mean, std)), shape


# ---------------------------------------------------------------------------------------------
def benchmarks_dir() -> Path:
    """Path of ../shared/benchmarks relative to the repo; RuntimeError if missing."""
    p = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
    if not p.is_dir():
        raise RuntimeError(f"benchmark data not found at {p} (expected ../shared/benchmarks "
                           "next to the repository; see DESIGN.md 'Testing on CPU')")
    return p


def load_onnx_torch(path: str | Path) -> nn.Module:
    """Load an ``.onnx`` / ``.onnx.gz`` file and convert it with onnx2torch (eval, float32)."""
    import onnx
    import onnx2torch

    path = Path(path)
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return _finish(onnx2torch.convert(onnx.load_model_from_string(data)))


def mnist_256x2():
    """VNN-COMP mnist-net_256x2 via onnx2torch; input shape (784, 1)."""
    return load_onnx_torch(benchmarks_dir() / "mnist_fc/onnx/mnist-net_256x2.onnx.gz"), (784, 1)


def cifar_base_kw():
    """VNN-COMP oval21 cifar_base_kw via onnx2torch; input shape (3, 32, 32)."""
    return load_onnx_torch(benchmarks_dir() / "oval21/onnx/cifar_base_kw.onnx.gz"), (3, 32, 32)


def random_box(input_shape, eps: float, seed: int = 0, batch: int = 1,
               low: float | None = None, high: float | None = None):
    """Random L-inf box ``[c - eps, c + eps]`` with a batch dim; centre ~ U(0, 1).

    Optional ``low``/``high`` clip the box (e.g. 0/1 for image domains).
    """
    g = torch.Generator().manual_seed(seed)
    c = torch.rand((batch, *input_shape), generator=g, dtype=torch.float32)
    xl, xu = c - eps, c + eps
    if low is not None:
        xl = xl.clamp(min=low)
    if high is not None:
        xu = xu.clamp(max=high)
    return xl, xu


def vnnlib_input_box(path: str | Path, input_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Input box ``X_i`` bounds of a (possibly gzipped) VNN-LIB file, shaped ``[1, *input_shape]``.

    Reads only the simple ``(assert (<= X_i v))`` / ``(assert (>= X_i v))`` lines (enough for the
    shared mnist_fc / oval21 properties); for tests, not a VNN-LIB parser.
    """
    import re

    path = Path(path)
    text = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
    n = 1
    for d in input_shape:
        n *= d
    lo = torch.full((n,), float("nan"), dtype=torch.float64)
    hi = torch.full((n,), float("nan"), dtype=torch.float64)
    pat = re.compile(r"\(assert\s+\((<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\)\)")
    for op, i, v in pat.findall(text):
        (hi if op == "<=" else lo)[int(i)] = float(v)
    if torch.isnan(lo).any() or torch.isnan(hi).any():
        raise ValueError(f"{path}: not every X_i in 0..{n - 1} has both bounds")
    return (lo.to(torch.float32).reshape(1, *input_shape),
            hi.to(torch.float32).reshape(1, *input_shape))
