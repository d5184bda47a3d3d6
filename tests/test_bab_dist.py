"""Branch and bound on several processes (CPU gloo): every plan and mesh gives the verdicts of one
process, domains move between workers, and all ranks stop together."""
from __future__ import annotations

import math

import pytest
import torch

from dist_utils import run_distributed
from model_zoo import random_mlp

# A 2-D input network whose threshold properties on Y_0 need branch and bound (see test_bab.py).
# Two outputs: tp shards the last layer's rows (a one-output layer is refused under tp: DTensor
# cannot view away a sharded dim of size 1).
SEED = 11
START = "forkserver"       # ranks forked from a server that imported torch once (dist_utils)
WIDTHS = [2, 24, 24, 2]


def _threshold(t: float) -> str:
    return ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
            "(declare-const Y_1 Real)\n"
            "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
            f"(assert (<= Y_0 {t!r}))\n")


def _thresholds():
    """(certainly below the minimum, above the grid's minimum) for the SEED network."""
    import dtensor_verify as dv

    net, shape = random_mlp(WIDTHS, seed=SEED)
    model = dv.load(net, input_shape=shape)
    g = torch.linspace(-1, 1, 401)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        gmin = float(model.forward(torch.stack([xx.flatten(), yy.flatten()], 1))[:, 0].min())
    L = 1.0
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            L *= float(torch.linalg.matrix_norm(m.weight.detach(), ord=2))   # bounds Y_0's too
    return gmin - L * (2 / 400) * math.sqrt(2) / 2 - 1e-3, gmin + 1e-3


def _decide_under_plans(rank, world, configs, props, split="relu"):
    import dtensor_verify as dv
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.specs import parse_vnnlib
    from dtensor_verify.verify import verify_instance
    from placements import apply_plan, mesh_from_process_group

    torch.set_num_threads(1)
    out = []
    for plan, mesh in configs:
        net, shape = random_mlp(WIDTHS, seed=SEED)
        model = dv.load(net, input_shape=shape)
        apply_plan(model, plan, mesh_from_process_group(mesh))
        for text in props:
            prop = parse_vnnlib(text, n_inputs=2, n_outputs=2)
            res = verify_instance(model, prop, None, timeout=60, bab_options=BabOptions(batch_size=32, split=split))
            bab = res.bounds.get("bab", {})
            out.append((plan, mesh, res.verdict, res.decided_by, res.message, bab.get("workers"),
                        bab.get("domains_visited_all_workers")))
    return out


def _check(results, world):
    by_rank = [r for r in results]
    for rank_rows in by_rank[1:]:
        assert [row[:4] for row in rank_rows] == [row[:4] for row in by_rank[0]], by_rank
    for plan, mesh, verdict, decided_by, message, workers, visited in by_rank[0]:
        assert verdict in ("unsat", "sat"), (plan, mesh, verdict, message)
    rows = by_rank[0]
    for i in range(0, len(rows), 2):
        unsat_row, sat_row = rows[i], rows[i + 1]
        assert unsat_row[2] == "unsat" and unsat_row[3] == "bab", unsat_row
        assert sat_row[2] == "sat", sat_row
        assert unsat_row[5] >= 1 and unsat_row[6] > 0, unsat_row


def test_bab_on_two_ranks_every_plan(tmp_path):
    low, high = _thresholds()
    # fsdp and spec on the mnist network: test_mnist_256x2_all_verdicts_distributed.
    configs = [("fsdp-prefetch", None), ("tp", None), ("0=fsdp;*=spec", None), ("replicate", "2x1")]
    res = run_distributed(_decide_under_plans, 2, tmp_path, configs, [_threshold(low), _threshold(high)],
                          timeout_s=240, start_method=START)
    _check(res, 2)
    workers = {(row[0], row[1]): row[5] for row in res[0][::2]}
    assert workers[("tp", None)] == 1           # tp: both ranks bound the same domains
    assert workers[("fsdp-prefetch", None)] == 2    # every other plan: each rank has its own queue
    assert workers[("0=fsdp;*=spec", None)] == 2
    assert workers[("replicate", "2x1")] == 2


@pytest.mark.parametrize("configs,workers", [
    ([("replicate", "2x1"), ("fsdp-prefetch", None)], [2, 2]),
    pytest.param([("tp", None)], [1], marks=pytest.mark.slow)], ids=["dp-and-fsdp", "tp-splits-relus"])
def test_input_bab_on_two_ranks(tmp_path, configs, workers):
    """Input splitting (sub-boxes as domains): the verdicts of one process, sub-boxes spread over
    the `dp` workers (fsdp: ranks in lockstep, each its own queue), all ranks stop in the same
    round. (tp: one worker whose ranks share a queue; it splits ReLUs instead, see
    input_bab.mode_of.)"""
    low, high = _thresholds()
    res = run_distributed(_decide_under_plans, 2, tmp_path, configs, [_threshold(low), _threshold(high)], "input",
                          timeout_s=240, start_method=START)
    _check(res, 2)
    assert [row[5] for row in res[0][::2]] == workers


@pytest.mark.slow      # 4 ranks, ~50 s on 2 cores; tp on 2 ranks: test_bab_on_two_ranks_every_plan
def test_bab_on_a_2x2_mesh_with_tp(tmp_path):
    """tp on a 2x2 mesh: each dp group is one worker whose two ranks share a queue; domains move
    between the groups rank by rank. (spec on a 2x2 mesh: test_mnist_256x2_all_verdicts_distributed
    and test_torchrun.py.)"""
    low, high = _thresholds()
    res = run_distributed(_decide_under_plans, 4, tmp_path, [("tp", "2x2")], [_threshold(low), _threshold(high)],
                          timeout_s=240, start_method=START)
    _check(res, 4)
    assert res[0][0][5] == 2


def _mnist_256x2_verdicts(rank, world, plan, mesh, names):
    """Every listed mnist-net_256x2 instance through the whole pipeline on this process group."""
    import dtensor_verify as dv
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance
    from model_zoo import benchmarks_dir
    from placements import apply_plan, mesh_from_process_group

    torch.set_num_threads(1)
    root = benchmarks_dir() / "mnist_fc"
    onnx = str(root / "onnx" / "mnist-net_256x2.onnx.gz")
    model = dv.load(onnx)
    apply_plan(model, plan, mesh_from_process_group(mesh))
    out = {}
    for name in names:
        prop = read_vnnlib(str(root / "vnnlib" / f"{name}.vnnlib.gz"), model.n_inputs, model.n_outputs)
        res = verify_instance(model, prop, onnx, timeout=120)
        out[name] = (res.verdict, res.decided_by, res.message)
    return out


def _expected_256x2():
    import csv

    from model_zoo import benchmarks_dir

    with open(benchmarks_dir() / "mnist_fc" / "expected_256x2.csv", newline="") as fh:
        return {row["vnnlib"].split("/")[-1].removesuffix(".vnnlib"): row["verdict"] for row in csv.DictReader(fh)}


# spec on a 2x2 mesh (4 ranks, ~90 s on 2 cores): -m slow; test_torchrun.py runs spec on 2x2 through the CLI.
@pytest.mark.parametrize("world,plan,mesh", [(2, "fsdp", None), pytest.param(4, "spec", "2x2", marks=pytest.mark.slow)],
                         ids=["fsdp-P2", "spec-2x2"])
def test_mnist_256x2_all_verdicts_distributed(tmp_path, world, plan, mesh):
    """Issue 12's acceptance: the 30 mnist-net_256x2 instances give their known verdicts under
    torchrun-style process groups, as in one process (tests/test_bab.py covers one process)."""
    expected = _expected_256x2()
    names = sorted(expected)
    res = run_distributed(_mnist_256x2_verdicts, world, tmp_path, plan, mesh, names, timeout_s=900,
                          start_method=START)
    for rank_result in res[1:]:
        assert {k: v[0] for k, v in rank_result.items()} == {k: v[0] for k, v in res[0].items()}
    wrong = {k: (v, expected[k]) for k, v in res[0].items() if v[0] != expected[k]}
    assert not wrong, wrong
