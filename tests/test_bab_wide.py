"""Wide rounds of ReLU branch and bound (bab/wide.py): a parent split on its w best neurons at
once. The 2^w children cover the parent exactly, beta-CROWN's bounds hold on each child's region,
the width follows capacity / frontier only, and verdicts equal the MILP oracle's on one process
and on 2 gloo ranks, with wide rounds on and off."""
from __future__ import annotations

import itertools

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions
from dtensor_verify.bab.branching import BranchingContext, babsr, choose_ranked, fsb
from dtensor_verify.bab.domains import NO_DECISION
from dtensor_verify.bab.wide import parents_for, split_wide, width_for, with_more
from dtensor_verify.methods.beta_crown import BetaOptions, beta_crown
from dist_utils import run_distributed
from model_zoo import random_mlp
from test_bab import root_problem, satisfies

pytestmark = pytest.mark.usefixtures("one_thread")


def test_width_depends_on_capacity_and_frontier_only():
    assert width_for(1, 4096, 4) == 4
    assert width_for(192, 4096, 4) == 4            # 192 x 16 = 3072 children fit 4096
    assert width_for(300, 4096, 4) == 3            # 300 x 16 > 4096, 300 x 8 fits
    assert width_for(2048, 4096, 4) == 1           # a full batch: one split, as before
    assert width_for(10 ** 6, 4096, 4) == 1
    assert width_for(1, 4096, 1) == 1              # off
    assert width_for(96, 2048, 4) == width_for(192, 4096, 4)    # 2 workers, half each: the same rule
    assert parents_for(2048, 1) == 2048 and parents_for(2048, 3) == 512 and parents_for(1, 4) == 1


def _problem(seed):
    net, shape = random_mlp([5, 20, 20, 20, 3], seed=seed)
    model = dv.load(net, input_shape=shape)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = -torch.ones(1, 5), torch.ones(1, 5)
    C, d = torch.randn(1, 2, 3, generator=gen), torch.zeros(1, 2)
    problem, roots = root_problem(model, lo, hi, C, d)
    return model, problem, roots, (lo, hi, C, d), gen


def _unstable(problem, dom, count):
    out = []
    for li, relu in enumerate(problem.relus):
        lo, up = dom.bounds[problem.pre_of[relu]]
        out += [(li, int(j)) for j in ((lo < 0) & (up > 0)).flatten(1)[0].nonzero().flatten()]
    return out[:: max(1, len(out) // count)][:count]


@pytest.mark.parametrize("seed", range(3))
def test_wide_children_cover_the_parent_and_bounds_hold(seed):
    model, problem, roots, (lo, hi, C, d), gen = _problem(seed)
    width = 3
    picks = _unstable(problem, roots, width)
    assert len(picks) == width
    roots = with_more(roots, width - 1)
    roots.decision = torch.tensor([picks[0]])
    roots.more = torch.tensor([picks[1:]])
    kids, owner, _ = split_wide(roots, width, problem.relus, problem.pre_of)
    assert len(kids) == 2 ** width and owner.tolist() == [0] * 2 ** width
    assert kids.depth.tolist() == [width] * 2 ** width
    assert bool((kids.more == NO_DECISION).all()) and bool((kids.decision == NO_DECISION).all())
    patterns = {tuple(int(kids.signs[problem.relus[li]][k].flatten()[j]) for li, j in picks) for k in range(len(kids))}
    assert patterns == set(itertools.product((-1, 1), repeat=width))     # every sign pattern, once
    # Every point of the box lies in some child (the children cover the parent).
    x = lo + (hi - lo) * torch.rand(4000, 5, generator=gen)
    inside = torch.stack([satisfies(model, problem, kids.index(torch.tensor([k])), x) for k in range(len(kids))])
    assert bool(inside.any(0).all())
    # beta-CROWN with the w constraints: its bound holds on each child's region.
    n = len(kids)
    res = beta_crown(model.graph, problem.bounds_of(kids), C[kids.pair], d[kids.pair],
                     torch.ones(n, 2, dtype=torch.bool), kids.alphas, kids.betas, kids.signs,
                     opts=BetaOptions(iterations=30))
    with torch.no_grad():
        y = torch.einsum("kn,bn->bk", C[0], model.forward(x))
    for k in range(n):
        ys = y[inside[k]]
        if ys.shape[0]:
            assert bool((ys >= res.lower[k] - 1e-5).all()), (k, float((ys - res.lower[k]).min()))


def test_a_parent_with_fewer_ranked_splits_is_split_on_those():
    model, problem, roots, _, _ = _problem(0)
    picks = _unstable(problem, roots, 2)
    two = roots.index(torch.tensor([0, 0]))
    two = with_more(two, 3)
    two.decision = torch.tensor([picks[0], picks[0]])
    two.more[0, 0] = torch.tensor(picks[1])            # parent 0: 2 splits; parent 1: 1 (rest NO_DECISION)
    kids, owner, _ = split_wide(two, 4, problem.relus, problem.pre_of)
    assert sorted(owner.tolist()) == [0, 0, 0, 0, 1, 1]
    assert sorted(kids.depth.tolist()) == [1, 1, 2, 2, 2, 2]


def test_children_proved_between_levels_leave_the_round():
    """`prune` after the first level takes out the first child of each parent: its sign pattern
    is covered by it (proved), the rest of the parent by the grandchildren of the other."""
    model, problem, roots, _, _ = _problem(2)
    picks = _unstable(problem, roots, 3)
    roots = with_more(roots, 2)
    roots.decision, roots.more = torch.tensor([picks[0]]), torch.tensor([picks[1:]])
    calls = []

    def prune(kids):
        calls.append(len(kids))
        out = torch.zeros(len(kids), dtype=torch.bool)
        if len(calls) == 1:
            out[0] = True               # the `z >= 0` child of the first split
        return out

    kids, owner, pruned = split_wide(roots, 3, problem.relus, problem.pre_of, prune)
    assert calls == [2, 2] and pruned == 1 and len(kids) == 4 and owner.tolist() == [0] * 4
    li, j = picks[0]
    assert bool((kids.signs[problem.relus[li]].flatten(1)[:, j] == 1).all())       # all on `z <= 0`


@pytest.mark.parametrize("name", ["fsb", "babsr"])
def test_ranked_heuristics_lead_with_the_single_choice(name):
    model, problem, roots, _, _ = _problem(1)
    with torch.no_grad():
        res = beta_crown(model.graph, problem.bounds_of(roots), problem.C[roots.pair], problem.d[roots.pair],
                         problem.row_mask[roots.pair], roots.alphas, roots.betas, roots.signs,
                         opts=BetaOptions(iterations=0))

    def bound_once(doms, refresh=False, decision=None):
        return beta_crown(model.graph, problem.bounds_of(doms), problem.C[doms.pair], problem.d[doms.pair],
                          problem.row_mask[doms.pair], doms.alphas, doms.betas, doms.signs,
                          opts=BetaOptions(iterations=0)).lower

    ctx = BranchingContext(problem.relus, problem.pre_of, problem.d, problem.row_mask, bound_once, 3)
    lA = {r: a for r, a in res.lA.items() if r in problem.scored}
    ranked = choose_ranked(name, roots, lA, ctx, 5)
    single = {"fsb": fsb, "babsr": babsr}[name](roots, lA, ctx)
    assert ranked.shape == (1, 5, 2) and torch.equal(ranked[:, 0], single)
    assert len({tuple(r) for r in ranked[0].tolist()}) == 5 and bool((ranked[..., 0] >= 0).all())


SEEDS = [1001, 1004, 1007]          # tests/test_hostile_milp.py's sample: sat and unsat


def _milp_instances(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import hostile_milp as hm
    import milp_oracle as mo

    out = []
    for seed in SEEDS:
        inst, _ = hm.make(seed)
        (tmp_path / str(seed)).mkdir()
        onnx_path, spec = mo.write(inst, tmp_path / str(seed))
        out.append((str(onnx_path), str(spec), inst.expected))
    return out


def _decide(rank, world, instances, widths):
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance
    from placements import apply_plan, mesh_from_process_group

    torch.set_num_threads(1)
    rows = []
    for onnx_path, spec, _ in instances:
        for w in widths:
            model = dv.load(onnx_path)
            if world > 1:
                apply_plan(model, "replicate", mesh_from_process_group("2x1"))
            res = verify_instance(model, read_vnnlib(spec, model.n_inputs, model.n_outputs), onnx_path, 60,
                                  attack=False, bab_options=BabOptions(batch_size=64, split="relu", split_width=w))
            bab = res.bounds.get("bab", {})
            assert bab.get("wide_pruned", 0) <= bab.get("domains_proved", 0) <= bab.get("domains_visited", 0)
            rows.append((res.verdict, bab.get("workers"), bab.get("max_split_width", 1)))
    return rows


def _check(rows, instances, widths, workers):
    it = iter(rows)
    wide = 0
    for _, _, expected in instances:
        for w in widths:
            verdict, got_workers, max_width = next(it)
            assert verdict == expected, (expected, w, verdict)
            assert max_width <= w and (got_workers in (None, workers))
            wide += max_width > 1
    assert wide >= 1        # some run took wide rounds


def test_verdicts_match_the_milp_one_process(tmp_path):
    instances = _milp_instances(tmp_path)
    _check(_decide(0, 1, instances, [1, 4]), instances, [1, 4], 1)


@pytest.mark.distributed
def test_verdicts_match_the_milp_on_two_ranks(tmp_path):
    instances = _milp_instances(tmp_path)
    res = run_distributed(_decide, 2, tmp_path, instances, [4], timeout_s=240, start_method="forkserver")
    assert [r[:2] for r in res[0]] == [r[:2] for r in res[1]]      # (a worker's widths are its own rounds')
    _check([(v, w, max(a, b)) for (v, w, a), (_, _, b) in zip(*res)], instances, [4], 2)
