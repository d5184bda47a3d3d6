"""`tp` for branch and bound on CPU with small layers is refused by the plan checker (issue 18,
item 7): one line saying why and naming the plan that works (placements/bab_check.py; the
measurement behind it: scripts/bench_tp_bab.py, docs/TRUST.md)."""
from __future__ import annotations

import pytest

import dtensor_verify as dv
import milp_oracle as mo
from dtensor_verify.cli import main
from dtensor_verify.errors import PlanError
from placements.apply import apply_plan_from_cli, resolve_policies
from placements.bab_check import ALLOW_ENV, TP_BAB_MIN_NEURONS_CPU, tp_bab_refusal
from placements.plan import parse_plan


@pytest.fixture()
def small_net(tmp_path):
    inst = mo.instance(5, n_in=3, hidden=(8, 8))
    return mo.write(inst, tmp_path)


def _refusal(graph, plan, device="cpu", shard=2, world=2):
    styles = resolve_policies(graph, parse_plan(plan), shard)
    return tp_bab_refusal(graph, styles, device, shard, world)


def test_refused_on_cpu_for_small_tp_layers(small_net, monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    graph = dv.load(small_net[0]).graph
    why = _refusal(graph, "tp")
    assert why is not None and "\n" not in why
    assert "branch and bound on CPU" in why and f"under {TP_BAB_MIN_NEURONS_CPU}" in why
    assert "--plan replicate --mesh 2x1" in why and "--no-bab" in why
    assert "--mesh 4x1" in _refusal(graph, "linear_mm0=tp;*=fsdp", world=4)      # any plan that gives a layer tp


def test_not_refused_where_it_does_not_apply(small_net, monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    graph = dv.load(small_net[0]).graph
    assert _refusal(graph, "fsdp") is None and _refusal(graph, "spec") is None
    assert _refusal(graph, "tp", device="cuda") is None          # NCCL: not what was measured
    assert _refusal(graph, "tp", shard=1, world=2) is None       # --mesh 2x1: nothing is sharded
    monkeypatch.setenv(ALLOW_ENV, "allow")
    assert _refusal(graph, "tp") is None


def test_wide_tp_layers_are_not_refused(monkeypatch, tmp_path):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    import numpy as np
    rng = np.random.default_rng(0)
    layers = mo.random_net(rng, 2, [TP_BAB_MIN_NEURONS_CPU], 2)
    inst = mo.Instance(0, layers, np.zeros(2), np.ones(2), np.array([1.0, -1.0]), 0.0, "unknown", 0.0, 0.0, 0.0)
    graph = dv.load(mo.write(inst, tmp_path)[0]).graph
    assert _refusal(graph, "tp") is None


def test_plan_checker_refuses_before_any_process_group(small_net, monkeypatch):
    """What the CLI calls on every rank: the refusal comes before the mesh is set up, and only
    when the run may branch and bound."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = dv.load(small_net[0])
    with pytest.raises(PlanError, match="replicate --mesh 2x1"):
        apply_plan_from_cli(model, "tp", log=False, bab=True)


def test_cli_run_says_it_in_one_line(small_net, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    onnx_path, spec = small_net
    res = tmp_path / "res.txt"
    rc = main(["--threads", "1", "run", "--onnx", onnx_path, "--vnnlib", spec, "--results", str(res),
               "--timeout", "30", "--plan", "tp", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'tp' for branch and bound on CPU" in lines[0], err
    assert res.read_text().split("\n")[0] == "error"


def _one_error(rc, out, err):
    """Chapter 5 of VNN-LIB 2.0: an error is one line on stderr, nothing on stdout, status 2."""
    assert rc == 2 and out == "" and "Traceback" not in err, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dtensor-verify: error: "), err
    assert "'tp' for branch and bound on CPU" in lines[0] and "--plan replicate --mesh 2x1" in lines[0], err


def _verify(capsys, query, onnx_path, *extra):
    rc = main(["--threads", "1", "verify", query, "--network", f"N={onnx_path}", "--device", "cpu",
               "--timeout", "30", "--plan", "tp", "--quiet", *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _query2(tmp_path, n_in: int, n_out: int):
    """A VNN-LIB 2.0 query over the oracle's net: the box x in [-1, 1], the unsat-looking Y[0] <= -1e9."""
    box = "".join(f"(assert (>= X[{i}] -1.0)) (assert (<= X[{i}] 1.0)) " for i in range(n_in))
    p = tmp_path / "q2.vnnlib"
    p.write_text(f"(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [{n_in}]) "
                 f"(declare-output Y float32 [{n_out}]))\n{box}\n(assert (<= Y[0] -1000000000.0))\n")
    return str(p)


def test_vnnlib2_verify_refuses_tp_bab_like_run(small_net, monkeypatch, capsys, tmp_path):
    """The chapter-5 command line (`verify`) applies the same rule, for 1.0 and 2.0 queries."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    onnx_path, spec = small_net
    _one_error(*_verify(capsys, spec, onnx_path))
    model = dv.load(onnx_path)
    _one_error(*_verify(capsys, _query2(tmp_path, model.n_inputs, model.n_outputs), onnx_path))


def test_vnnlib2_verify_no_bab_is_not_refused(small_net, monkeypatch):
    """--no-bab (bounds only) is not concerned: the plan is applied with bab=False."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    from dtensor_verify import cli, solver_cli

    seen = []
    monkeypatch.setattr(cli, "_apply_plan", lambda *a, **k: seen.append(k["bab"]) or (_ for _ in ()).throw(
        PlanError("stop here")))
    for no_bab in (False, True):
        args = type("A", (), {"cli": cli, "plan": "tp", "quiet": True, "mesh": None, "no_bab": no_bab,
                              "deadline": 1e18})()
        with pytest.raises(PlanError):
            solver_cli._run(args, None, None)
    assert seen == [True, False]
