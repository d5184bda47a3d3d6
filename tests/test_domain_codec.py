"""The open-domain store keeps ReLU-split domains without their intermediate bounds
(`bab/domain_codec.py`): they are rebuilt from the roots' bounds and the split signs as a domain
leaves the store. Soundness rests on the rebuilt bounds being the stored ones, bit for bit: checked
on every domain pushed during real searches (MLP, CNN, residual network), then the same searches
with and without it must bound the same domains and reach the same verdicts."""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions, BabSolver, DomainStore
from dtensor_verify.bab import domain_codec
from dtensor_verify.bab.domain_codec import DerivedBounds, Whole, codec_for
from dtensor_verify.methods.crown import intermediate_bounds, output_bound
from dtensor_verify.verify import verify_instance
from model_zoo import random_cnn, random_mlp, residual_net
from test_bab import certain_instance, root_problem

pytestmark = pytest.mark.usefixtures("one_thread")


def _near_boundary(model, shape, eps, seed):
    """A box around a random point and the CROWN root of `y_0 - y_1 >= d`, with d close to the
    sampled minimum (so branch and bound has work)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand((1, *shape), generator=gen)
    lo, hi = x0 - eps, x0 + eps
    n_out = model.forward(x0).shape[-1]
    C = torch.zeros(1, 1, n_out)
    C[0, 0, 0], C[0, 0, 1] = 1.0, -1.0
    with torch.no_grad():
        bounds, _ = intermediate_bounds(model.graph, (lo, hi))
        crown, _ = output_bound(model.graph, bounds, C)
        xs = lo + (hi - lo) * torch.rand((4096, *shape), generator=gen)
        sampled = (model.forward(xs) @ C[0].T).min()
    d = (float(crown[0, 0]) + 0.95 * (float(sampled) - float(crown[0, 0]))) * torch.ones(1, 1)
    return root_problem(model, lo, hi, C, d)


def _models():
    net, shape = random_mlp([6, 24, 24, 24, 2], seed=5)
    yield "mlp", dv.load(net, input_shape=shape), shape, 0.3
    net, shape = random_cnn("basic", seed=3)
    yield "cnn", dv.load(net, input_shape=shape), shape, 0.08
    net, shape = residual_net(seed=2)
    yield "residual", dv.load(net, input_shape=shape), shape, 0.08


@pytest.mark.parametrize("which", ["mlp", "cnn", "residual"])
def test_rebuilt_bounds_are_the_stored_ones_on_every_push(monkeypatch, which):
    name, model, shape, eps = next(m for m in _models() if m[0] == which)
    problem, roots = _near_boundary(model, shape, eps, seed=7)
    checked = {"domains": 0, "split": 0}
    real_push = DomainStore.push

    def checking_push(self, domains, margins):
        if len(domains) and isinstance(self.codec, DerivedBounds):
            back = self.codec.unpack(self.codec.pack(domains))
            assert set(back.bounds) == set(domains.bounds)
            for node, (lo, up) in domains.bounds.items():
                assert torch.equal(back.bounds[node][0], lo) and torch.equal(back.bounds[node][1], up), node
            for relu, s in domains.signs.items():
                assert back.signs[relu].dtype == s.dtype and torch.equal(back.signs[relu], s), relu
                assert torch.equal(back.alphas[relu], domains.alphas[relu]), relu
                assert torch.equal(back.betas[relu], domains.betas[relu]), relu
                checked["split"] += int((s != 0).any(dim=tuple(range(1, s.dim()))).sum())
            checked["domains"] += len(domains)
        return real_push(self, domains, margins)

    monkeypatch.setattr(DomainStore, "push", checking_push)
    solver = BabSolver(problem, BabOptions(batch_size=16, split="relu", max_rounds=12), lambda: 60.0,
                       lambda *a: None)
    solver.solve(roots)
    assert isinstance(solver.store.codec, DerivedBounds)
    assert checked["domains"] > 20 and checked["split"] > 10, checked


def test_a_stored_domain_takes_under_half_the_bytes():
    """Without bounds, with int8 signs, and only the neurons unstable at the root.""" 
    net, shape = random_mlp([6, 64, 64, 2], seed=1)
    model = dv.load(net, input_shape=shape)
    problem, roots = _near_boundary(model, shape, 0.3, seed=1)
    codec = codec_for(problem, "relu", roots)
    assert isinstance(codec, DerivedBounds)
    packed = codec.pack(roots)
    assert packed.bounds == {} and all(s.dtype == torch.int8 for s in packed.signs.values())
    for relu in problem.relus:
        lo, up = roots.bounds[problem.pre_of[relu]]
        unstable = int(((lo < 0) & (up > 0)).sum())
        assert packed.signs[relu].shape == (1, unstable) and packed.alphas[relu].shape[-1] == unstable
    assert packed.nbytes() < 0.5 * roots.nbytes(), (packed.nbytes(), roots.nbytes())


def test_spilled_domains_come_back_whole():
    """The host part of the store holds packed domains too; what comes back is rebuilt (here the
    root's bounds are made wide, so that every neuron can be split)."""
    net, shape = random_mlp([3, 8, 8, 2], seed=2)
    model = dv.load(net, input_shape=shape)
    problem, roots = root_problem(model, -torch.ones(1, 3), torch.ones(1, 3), torch.tensor([[[1.0, -1.0]]]),
                                  torch.zeros(1, 1))
    relu = problem.relus[0]
    roots.bounds = {k: (lo.clamp(max=-1.0), up.clamp(min=1.0)) for k, (lo, up) in roots.bounds.items()}
    many = roots.index(torch.zeros(10, dtype=torch.long))
    lo, up = many.bounds[problem.pre_of[relu]]
    many.signs[relu] = many.signs[relu].clone()
    lo, up = lo.clone(), up.clone()
    for i in range(10):             # domain i: neuron i % 8 split, one side or the other
        j, side = i % 8, (-1.0 if i % 2 else 1.0)
        many.signs[relu][i, j] = side
        if side < 0:
            lo[i, j] = lo[i, j].clamp(min=0.0)
        else:
            up[i, j] = up[i, j].clamp(max=0.0)
    many.bounds = {**many.bounds, problem.pre_of[relu]: (lo, up)}
    many.depth = torch.arange(10)
    store = DomainStore(keep=4, host=torch.device("cpu"), codec=codec_for(problem, "relu", roots))
    store.push(many, torch.linspace(-1.0, 1.0, 10))
    assert store.spilled() > 0
    back = []
    while len(store):
        d, _ = store.pop_worst(3)
        back.append(d)
    got = back[0].cat(back)
    order = torch.argsort(got.depth)
    for node, (l0, u0) in many.bounds.items():
        assert torch.equal(got.bounds[node][0][order], l0) and torch.equal(got.bounds[node][1][order], u0)
    assert torch.equal(got.signs[relu][order], many.signs[relu])


def test_same_domains_and_verdicts_with_and_without():
    for seed in (10, 11):
        model, gmin, prop = certain_instance(seed)
        out = {}
        for derive in (False, True):
            res = verify_instance(model, prop, None, timeout=60, attack=False,
                                  bab_options=BabOptions(batch_size=16, split="relu", derive_bounds=derive))
            out[derive] = (res.verdict, res.bounds.get("bab", {}).get("domains_visited"))
        assert out[True] == out[False] and out[True][0] == "unsat", out


def test_whole_where_bounds_do_not_follow_from_splits():
    """Input splitting recomputes a sub-box's bounds; general splits cut intervals: kept whole."""
    model, _, _ = certain_instance(10)
    problem, roots = root_problem(model, -torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 1, 1),
                                  torch.zeros(1, 1))
    assert isinstance(codec_for(problem, "relu", roots), DerivedBounds)
    assert isinstance(codec_for(problem, "input", roots), Whole)
    problem.general = ["some_node"]
    assert isinstance(codec_for(problem, "relu", roots), Whole)
    assert domain_codec.SIGN_DTYPE == torch.int8


def test_the_flag():
    import argparse

    from dtensor_verify.cli_common import add_bab_arguments, bab_options

    p = argparse.ArgumentParser()
    add_bab_arguments(p)
    assert bab_options(p.parse_args([])).derive_bounds is True
    assert bab_options(p.parse_args(["--bab-store", "whole"])).derive_bounds is False
