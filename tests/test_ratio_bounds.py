"""Boxes of averages by normalised weights, `f = V (p / sum p) + b`, by Dinkelbach's sign test
(`methods/ratio_bounds.py`): found in the graph, sound on sampled and attacked points, never looser
than the box they start from, strictly tighter than CROWN without them on a pensieve-shaped branch,
and left alone where the sum can reach 0. The real pensieve_big_parallel_35 is proved by CROWN."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import dtensor_verify as dv
from dtensor_verify.attack import pgd
from dtensor_verify.layout import DEFAULT_LAYOUT
from dtensor_verify.methods.crown import crown, intermediate_bounds
from dtensor_verify.methods.ratio_bounds import find_sites, ratio_sites

pytestmark = pytest.mark.usefixtures("one_thread")
crown_mod = importlib.import_module("dtensor_verify.methods.crown")


class _Average(nn.Module):
    """Linear -> ReLU -> Linear (-> ReLU) -> x^k -> x / sum x -> Linear(V, b)."""

    def __init__(self, relu_out: bool, power: float, n_in: int = 3, h: int = 8, k: int = 4, bias: float = 3.0):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(n_in, h), nn.Linear(h, k), nn.Linear(k, 2)
        self.relu_out, self.power = relu_out, power
        with torch.no_grad():
            self.b.bias.add_(bias)
            self.c.weight.copy_(torch.tensor([[10.0, 20.0, 80.0, 320.0], [-1.0, 2.0, 0.5, 4.0]]))

    def forward(self, x):
        z = self.b(torch.relu(self.a(x)))
        p = torch.pow(torch.relu(z) if self.relu_out else z, self.power)
        return self.c(p / p.sum(1, keepdim=True))


def _load(tmp_path, net, n_in=3):
    path = tmp_path / "avg.onnx"
    torch.onnx.export(net.eval(), torch.zeros(1, n_in), str(path), dynamo=False)
    return dv.load(str(path))


def _boxes(n: int, n_in: int, seed: int, width: float = 0.6):
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, n_in, generator=gen) * 2 - 1
    radius = torch.rand(n, n_in, generator=gen) * width / 2
    return centre - radius, centre + radius


def _plain_bounds(graph, box, monkeypatch):
    """Intermediate bounds with the ratio sites switched off (CROWN as before)."""
    with monkeypatch.context() as m:
        m.setattr(crown_mod, "ratio_sites", lambda *a, **k: {})
        bounds, _ = intermediate_bounds(graph, box)
    return bounds


@pytest.mark.parametrize("relu_out,power", [(True, 3.0), (False, 2.0)])
def test_ratio_boxes_hold_on_samples_and_attacks_and_never_loosen(tmp_path, monkeypatch, relu_out, power):
    torch.manual_seed(5)
    model = _load(tmp_path, _Average(relu_out, power))
    graph = model.graph
    sites = ratio_sites(graph, DEFAULT_LAYOUT, torch.zeros(1))
    assert list(sites) == [graph.output_name], sites
    lo, hi = _boxes(6, 3, seed=int(power))
    with torch.no_grad():
        tight = intermediate_bounds(graph, (lo, hi))[0][graph.output_name]
        plain = _plain_bounds(graph, (lo, hi), monkeypatch)[graph.output_name]
    assert (tight[0] >= plain[0]).all() and (tight[1] <= plain[1]).all()
    assert (tight[0] > plain[0] + 1e-3).any() and (tight[1] < plain[1] - 1e-3).any(), (tight, plain)
    # Sampled points and PGD towards both ends of each output stay inside the tightened box.
    x = lo + (hi - lo) * torch.rand(4000, *lo.shape)
    with torch.no_grad():
        y = model.forward(x.reshape(-1, 3)).reshape(4000, 6, 2)
    assert (y >= tight[0] - 1e-4).all() and (y <= tight[1] + 1e-4).all()
    for k in range(2):
        for sign in (1.0, -1.0):
            _, best = pgd(model.forward, lo, hi, lambda out: sign * out[..., k], steps=60, restarts=8, seed=k)
            bound = tight[0][:, k] if sign > 0 else -tight[1][:, k]
            assert (best >= bound - 1e-4).all(), (k, sign, best, bound)


def test_no_tightening_where_the_sum_can_reach_zero(tmp_path):
    """x^3 of a pre-activation that changes sign: sum p > 0 is not proved, the box stays IBP's."""
    torch.manual_seed(1)
    model = _load(tmp_path, _Average(relu_out=False, power=3.0, bias=0.0))
    graph = model.graph
    site = find_sites(graph, DEFAULT_LAYOUT, torch.zeros(1))[graph.output_name]
    lo, hi = -torch.ones(2, 3), torch.ones(2, 3)
    with torch.no_grad():
        bounds, _ = intermediate_bounds(graph, (lo, hi))
    assert not (bounds[site.denominator][0] > 0).all()
    from dtensor_verify.methods.ibp import ibp_step
    ref = ibp_step(graph[graph.output_name], bounds, DEFAULT_LAYOUT)
    assert torch.equal(bounds[graph.output_name][0], ref[0]) and torch.equal(bounds[graph.output_name][1], ref[1])


def test_not_a_normalisation_is_not_a_site(tmp_path):
    """p / (sum p + 1) and p * sum(p) are not normalisations: no site."""

    class _Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Linear(3, 4), nn.Linear(4, 1)

        def forward(self, x):
            p = torch.relu(self.a(x)) + 1.0
            return self.c(p / (p.sum(1, keepdim=True) + 1.0)) + self.c(p * p.sum(1, keepdim=True))

    model = _load(tmp_path, _Other())
    assert find_sites(model.graph, DEFAULT_LAYOUT, torch.zeros(1)) == {}


def test_pensieve_big_parallel_35_proved_by_crown():
    """The root that alpha-CROWN left at -3.4 (and branch and bound timed out on an H100)."""
    from model_zoo import benchmarks_dir
    from dtensor_verify.specs import read_vnnlib

    bench = benchmarks_dir() / "nn4sys_2023"
    model = dv.load(str(bench / "onnx" / "pensieve_big_parallel.onnx.gz"))
    region = read_vnnlib(str(bench / "vnnlib" / "pensieve_parallel_35.vnnlib.gz")).regions[0]
    lo = torch.as_tensor(region.lower).float().reshape(1, *model.input_shape)
    hi = torch.as_tensor(region.upper).float().reshape(1, *model.input_shape)
    assert set(ratio_sites(model.graph, DEFAULT_LAYOUT, lo)) == {"linear_mat_mul", "linear_mat_mul_1"}
    lower, upper, _ = crown(model.graph, (lo, hi))
    assert float(lower) > 0                                # the property: Y_0 > 0 (Y_0 <= 0 is unsafe)
    x = lo + (hi - lo) * torch.rand(512, *lo.shape[1:])
    with torch.no_grad():
        y = model.forward(x).flatten()
    assert (y >= lower.flatten() - 1e-4).all() and (y <= upper.flatten() + 1e-4).all()


def test_domains_in_chunks_give_the_same_boxes(tmp_path, monkeypatch):
    """A sweep's A-matrices capped at one domain's worth: the boxes are those of one sweep."""
    from dtensor_verify.methods import ratio_bounds

    torch.manual_seed(5)
    model = _load(tmp_path, _Average(True, 3.0))
    lo, hi = _boxes(5, 3, seed=7)
    with torch.no_grad():
        whole = intermediate_bounds(model.graph, (lo, hi))[0][model.graph.output_name]
        monkeypatch.setattr(ratio_bounds, "CHUNK_ELEMS", 1)
        chunked = intermediate_bounds(model.graph, (lo, hi))[0][model.graph.output_name]
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a, b)
