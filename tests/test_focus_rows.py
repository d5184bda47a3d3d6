"""Branch and bound bounds only the rows of an open disjunct that can prove it (`bab/focus_rows.py`).

A disjunct of several rows is proved where one row's bound is positive; rows whose root bound is far
below the best row's (TinyYOLO: -5.3 to -6.5 against -0.33) cost as much each round and hardly ever
prove. Checked: which rows are kept, that C / d / mask and the root slopes move with them (ReLU
[K, *S] on dim 0, other ops [2, K, *S] on dim 1, anything else left to CROWN's start), that the
verdicts of whole searches hold (unsat proved with fewer rows, a false property never unsat), and
that input splitting keeps every row."""
from __future__ import annotations

import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions
from dtensor_verify.bab.focus_rows import focus, keep_of
from dtensor_verify.bab.roots import RootState
from dtensor_verify.specs import parse_vnnlib
from dtensor_verify.verify import verify_instance
from model_zoo import random_mlp


def test_keep_of_takes_rows_within_the_factor_of_the_best():
    lo = torch.tensor([-6.4, -5.3, -0.33, -6.2, -0.48])
    assert keep_of(lo, 3.0).tolist() == [2, 4]
    assert keep_of(lo, 100.0).tolist() == [0, 1, 2, 3, 4]
    assert keep_of(torch.tensor([-1.0, -2.9, -3.1]), 3.0).tolist() == [0, 1]


def test_focus_moves_rows_and_their_slopes_together():
    P, K, n_out, S = 3, 4, 5, 6
    C = torch.randn(P, K, n_out)
    d = torch.randn(P, K)
    mask = torch.ones(P, K, dtype=torch.bool)
    mask[2, 3] = False                             # pair 2 has 3 real rows
    lowers = [torch.tensor([-9.0, -0.5, -1.0, -8.0]), torch.tensor([-0.2, -0.3, -0.1])]
    relu = torch.arange(4 * S, dtype=torch.float).view(4, S)
    gen = torch.arange(2 * 3 * S, dtype=torch.float).view(2, 3, S)
    roots = [RootState({}, {"r": relu, "other": torch.zeros(7)}),
             RootState({}, {"r": relu[:3], "g": gen})]
    f = focus(C, d, mask, [0, 2], lowers, roots, 3.0, {"r"}, {"g"})
    assert (f.kept, f.rows) == (5, 7)
    assert f.C.shape == (P, 3, n_out)              # the widest kept set: pair 2's 3 rows
    assert torch.equal(f.C[0, :2], C[0, [1, 2]]) and torch.equal(f.d[0, :2], d[0, [1, 2]])
    assert f.mask[0].tolist() == [True, True, False] and f.mask[2].tolist() == [True, True, True]
    assert torch.equal(f.lowers[0], lowers[0][[1, 2]])
    assert torch.equal(f.roots[0].alphas["r"], relu[[1, 2]])
    assert "other" not in f.roots[0].alphas        # not a known alpha op: CROWN's start instead
    assert torch.equal(f.roots[1].alphas["g"], gen)
    assert focus(C, d, mask, [0], [torch.tensor([-1.0, -2.0])], roots[:1], 3.0, {"r"}, {"g"}) is None
    assert focus(C, d, mask, [0], lowers[:1], roots[:1], None, {"r"}, {"g"}) is None


def _grid(net, n=201):
    g = torch.linspace(-1, 1, n)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        return net(torch.stack([xx.flatten(), yy.flatten()], 1))


def _property(t0: float, far: float) -> str:
    """Violated where Y_0 <= t0 and Y_1 <= far and Y_2 <= far: with `far` large the last two rows
    always hold (their bounds are far below 0) and only Y_0's row can prove."""
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(2))
    text += "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
    return text + f"(assert (<= Y_0 {t0!r}))\n(assert (<= Y_1 {far!r}))\n(assert (<= Y_2 {far!r}))\n"


def test_searches_on_the_focused_rows_keep_their_verdicts():
    net, shape = random_mlp([2, 32, 32, 3], seed=3)
    model = dv.load(net, input_shape=shape)
    y = _grid(net)
    ymin = float(y[:, 0].min())
    far = float(y[:, 1:].max()) + 50.0
    lip = 1.0
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            lip *= float(torch.linalg.matrix_norm(m.weight.detach(), ord=2))
    certain = ymin - lip * (2.0 / 200) * 0.71 - 1e-3
    prop = parse_vnnlib(_property(certain, far), n_inputs=2, n_outputs=3)
    runs = {}
    for factor in (3.0, None):
        res = verify_instance(model, prop, None, timeout=60, attack=False,
                              bab_options=BabOptions(split="relu", focus_rows=factor))
        assert res.verdict == "unsat", (factor, res.verdict, res.message)
        runs[factor] = res
    assert runs[3.0].decided_by == runs[None].decided_by == "bab"
    bab = runs[3.0].bounds["bab"]
    assert bab["rows_bounded"] == {"kept": 1, "of": 3}, bab["rows_bounded"]
    assert runs[None].bounds["bab"]["rows_bounded"] is None
    # the far rows no longer pull beta-CROWN's objective (their sum) away from the row that proves
    assert bab["domains_visited"] <= runs[None].bounds["bab"]["domains_visited"]
    # a false property: never unsat with the focused rows
    false = parse_vnnlib(_property(ymin + 0.05, far), n_inputs=2, n_outputs=3)
    res = verify_instance(model, false, None, timeout=20, attack=False,
                          bab_options=BabOptions(split="relu", focus_rows=3.0))
    assert res.verdict in ("sat", "unknown", "timeout"), res.verdict


def test_the_command_line_sets_or_turns_it_off():
    import argparse

    import pytest

    from dtensor_verify.cli_common import CliError, add_bab_arguments, bab_options

    p = argparse.ArgumentParser()
    add_bab_arguments(p)
    assert bab_options(p.parse_args([])).focus_rows == 3.0
    assert bab_options(p.parse_args(["--bab-focus-rows", "off"])).focus_rows is None
    assert bab_options(p.parse_args(["--bab-focus-rows", "5"])).focus_rows == 5.0
    for bad in ("0.5", "x"):
        with pytest.raises(CliError, match="--bab-focus-rows"):
            bab_options(p.parse_args(["--bab-focus-rows", bad]))
