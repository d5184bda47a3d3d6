"""One-hidden-layer ReLU networks as explicit matrices, for the complete search of
`bab/mip_planes.py` (safenlp's 30-128-2 nets: beta-CROWN's ReLU splitting needs 10^5+ domains
there, because the triangle relaxation of the 54 or so concave neurons is loose and splitting
the convex ones is wasted).

`shallow_net(graph)` reads y(x) = W2 relu(W1 x + b1) + S x + b2 off the bound graph in float64:
one forward pass of the unit vectors (the graph's own ops, float64 copies of the weights), then a
check that the matrices reproduce the graph at random points of the box (a network that is not of
this form, e.g. a ReLU feeding another layer of ReLUs, is refused with the reason). `rows_of`
turns each (region, disjunct) pair with one output row `c . y <= d` into a `ShallowRow`
(F = c . y - d; unsafe where F <= 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .exact import _AFFINE_KINDS, _float64_node
from .mip_planes import ShallowRow

MAX_INPUTS = 1024
MAX_HIDDEN = 1024
CHECK_POINTS = 64
CHECK_RTOL = 1e-9


@dataclass
class ShallowNet:
    W1: torch.Tensor          # [m, n]
    b1: torch.Tensor          # [m]
    W2: torch.Tensor          # [n_out, m]
    S: torch.Tensor           # [n_out, n] a direct (skip) affine path, usually 0
    b2: torch.Tensor          # [n_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W1.T + self.b1) @ self.W2.T + x @ self.S.T + self.b2


def why_not_shallow(graph) -> str | None:
    """None when the graph is affine -> one ReLU node -> affine; else the reason."""
    relus = []
    for node in graph.nodes:
        op = node.op
        if op is None:
            continue
        if op.kind == "relu" and getattr(op, "splittable", False):
            relus.append(node.name)
        elif not (op.kind in _AFFINE_KINDS or type(op).__name__ == "ElementwiseAffineOp"):
            return f"node '{node.name}' ({op.kind}) is not affine or ReLU"
    if len(relus) != 1:
        return f"{len(relus)} ReLU nodes (the one-hidden-layer search needs exactly one)"
    return None


class _Runner:
    """The graph in float64 on the CPU, with the ReLU's output replaceable."""

    def __init__(self, graph):
        self.graph = graph
        self.nodes = [_float64_node(n) for n in graph.nodes]
        self.relu = next(n.name for n in graph.nodes if n.op is not None and n.op.kind == "relu")

    def run(self, x: torch.Tensor, hidden: torch.Tensor | None = None) -> dict:
        values = {self.graph.input_name: x}
        for node in self.nodes:
            if node.op is None:
                continue
            if node.name == self.relu and hidden is not None:
                values[node.name] = hidden.reshape(x.shape[0], *values[node.inputs[0]].shape[1:])
            else:
                values[node.name] = node.op.forward(*[values[i] for i in node.inputs])
        return values


def shallow_net(graph, input_shape, lower: torch.Tensor, upper: torch.Tensor) -> ShallowNet | str:
    """The matrices of a one-hidden-layer net, or the reason it is not one (checked on the box
    [lower, upper], [*S])."""
    why = why_not_shallow(graph)
    if why:
        return why
    n = 1
    for s in input_shape:
        n *= int(s)
    if n > MAX_INPUTS:
        return f"{n} inputs (the one-hidden-layer search takes at most {MAX_INPUTS})"
    run = _Runner(graph)
    with torch.no_grad():
        eye = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
        vals = run.run(eye.reshape(n + 1, *input_shape))
        z = vals[graph[run.relu].inputs[0]].reshape(n + 1, -1)
        m = z.shape[1]
        if m > MAX_HIDDEN:
            return f"{m} hidden neurons (the one-hidden-layer search takes at most {MAX_HIDDEN})"
        W1, b1 = (z[1:] - z[:1]).T.contiguous(), z[0].clone()
        h = torch.cat([torch.zeros(1, m, dtype=torch.float64), torch.eye(m, dtype=torch.float64)])
        y_h = run.run(torch.zeros(m + 1, *input_shape, dtype=torch.float64), h)[graph.output_name].reshape(m + 1, -1)
        W2, b2 = (y_h[1:] - y_h[:1]).T.contiguous(), y_h[0].clone()
        x0 = run.run(eye.reshape(n + 1, *input_shape), torch.zeros(n + 1, m, dtype=torch.float64))
        y0 = x0[graph.output_name].reshape(n + 1, -1)
        S = (y0[1:] - y0[:1]).T.contiguous()
        net = ShallowNet(W1, b1, W2, S, b2)
        return _checked(net, run, graph, input_shape, lower, upper)


def _checked(net: ShallowNet, run: _Runner, graph, input_shape, lower, upper) -> ShallowNet | str:
    """The matrices must reproduce the graph (real ReLU) at random points of the box."""
    lo, hi = lower.detach().cpu().double().flatten(), upper.detach().cpu().double().flatten()
    gen = torch.Generator().manual_seed(0)
    x = lo + (hi - lo) * torch.rand(CHECK_POINTS, lo.numel(), generator=gen, dtype=torch.float64)
    x = torch.cat([x, lo.unsqueeze(0), hi.unsqueeze(0)])
    want = run.run(x.reshape(len(x), *input_shape))[graph.output_name].reshape(len(x), -1)
    got = net.forward(x)
    err = float((want - got).abs().max())
    tol = CHECK_RTOL * (1.0 + float(want.abs().max()))
    if not err <= tol:
        return f"the matrices read off the graph differ from it by {err:.3g} (not a one-hidden-layer ReLU net)"
    return net


def rows_of(net: ShallowNet, C: torch.Tensor, d: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> ShallowRow:
    """F(x) = c . y(x) - d on the box of one pair (C [n_out], d scalar; box [*S])."""
    c, dd = C.detach().cpu().double(), float(d)
    return ShallowRow(net.W1, net.b1, c @ net.W2, c @ net.S, float(c @ net.b2) - dd,
                      lower.detach().cpu().double().flatten(), upper.detach().cpu().double().flatten())
