"""The parts the verdict pipeline is built from (issue 17): the stage list, the one margin
formula, the one PGD, the typed hand-offs. Fast: no network file is read."""
from __future__ import annotations

import torch

from dtensor_verify.attack import pgd
from dtensor_verify.margin import best_row, margin, output_margin, spec_rows
from dtensor_verify.verify import PipelineOptions, build_stages
from dtensor_verify.verify.shallow_stage import ShallowSearch
from dtensor_verify.verify.stages import Attack, AttackBeforeBab, Bound, BranchAndBound, FinalAttack, ManyPairsIbp


def test_stage_order():
    names = [type(s).__name__ for s in build_stages(PipelineOptions())]
    assert names == ["Attack", "ManyPairsIbp", "Bound", "DeferredAttack", "Bound", "AttackBeforeBab",
                     "ShallowSearch", "BranchAndBound", "FinalAttack"]
    stages = build_stages(PipelineOptions(methods=("crown",), attack=False, bab=False))
    assert [type(s) for s in stages] == [ManyPairsIbp, Bound] and stages[1].guide is False
    stages = build_stages(PipelineOptions(methods=("crown",), attack=False, bound_batching="pair", max_batch=8))
    assert [type(s) for s in stages] == [ManyPairsIbp, Bound, ShallowSearch, BranchAndBound]
    assert stages[1].batching == "pair"
    assert [type(s) for s in build_stages(PipelineOptions(methods=("ibp",), attack=False, bab=False))] == [Bound]
    assert {Attack, AttackBeforeBab, FinalAttack} <= {type(s) for s in build_stages(PipelineOptions(methods=()))}


def test_margin_is_the_best_real_row():
    C = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])          # P = 1, K = 3 (last row padding)
    d = torch.tensor([[1.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    y = torch.tensor([[[3.0, 1.0]], [[0.5, 1.5]]])                      # [R = 2, P = 1, n_out]
    assert torch.equal(spec_rows(C, y), torch.tensor([[[3.0, 1.0, 0.0]], [[0.5, 1.5, 0.0]]]))
    # rows - d: [2, -1, pad] -> 2 ; [-0.5, -0.5, pad] -> -0.5 (violated: every real row holds)
    assert torch.equal(output_margin(y, C, d, mask), torch.tensor([[2.0], [-0.5]]))
    lower = torch.tensor([[0.0, 2.5, 99.0]])                              # a padded row never proves
    assert float(margin(lower, d, mask)) == 0.5 and int(best_row(lower, d, mask)) == 1


def test_pgd_reports_the_objective_at_its_point_and_uses_its_starts():
    lo, hi = -torch.ones(3, 2), torch.ones(3, 2)

    def fn(x):
        return x.sum(1, keepdim=True)

    x, val = pgd(fn, lo, hi, lambda out: out[..., 0], steps=10, restarts=2, seed=0)
    assert torch.allclose(val, fn(x)[:, 0]) and torch.allclose(val, torch.full((3,), -2.0))
    # A start at the minimiser with no steps: returned as it is.
    starts = -torch.ones(1, 3, 2)
    x, val = pgd(fn, lo, hi, lambda out: out[..., 0], steps=0, restarts=0, seed=0, starts=starts)
    assert torch.equal(x, starts[0]) and torch.equal(val, torch.full((3,), -2.0))
