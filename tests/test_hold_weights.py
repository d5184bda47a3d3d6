"""Weights held gathered for a whole search (placements/hold.py; issue 18: 3,619 FSDP all-gathers
in one branch and bound). Two gloo ranks (forkserver), one thread each:

* alpha-CROWN under `fsdp-prefetch` and `spec` (`fsdp`: slow) with the budget off (per-step gathers, the
  behaviour before), partial (the smallest layer only) and the default: bounds `torch.equal`
  across the three; the optimisation loop issues no per-step gather of a held layer;
* branch and bound under `fsdp` (`spec` and `fsdp-prefetch`: slow) on a MILP instance, at a fixed
  batch size: the same verdict (the MILP's) and the same search (domains, rounds, proved) with
  the hold on and off, and at least 10x fewer weight all-gathers with it on.

The policy itself (smallest first within the budget, the budget's override) is tested without
ranks.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from dist_utils import run_distributed

START = "forkserver"
ENV = "DTENSOR_VERIFY_HOLD_BYTES"


# -- the policy, one process --------------------------------------------------------------------
def test_choose_takes_smallest_layers_first_within_budget():
    from placements.hold import choose

    sizes = [("a", 400), ("b", 100), ("c", 50), ("d", 1000)]
    c = choose(sizes, 160)
    assert c.layers == ("b", "c") and c.held_bytes == 150 and c.mode == "partial"
    assert choose(sizes, 10**9).mode == "search" and choose(sizes, 10**9).layers == ("a", "b", "c", "d")
    none = choose(sizes, 0)
    assert none.layers == () and none.mode == "step"
    assert choose([], 0).mode == "search"                   # nothing to gather: nothing per step


def test_budget_default_and_override():
    from dtensor_verify.errors import VerifierError
    from placements.hold import HOLD_CAP_BYTES, hold_budget

    assert 0 < hold_budget("cpu", env={}) <= HOLD_CAP_BYTES
    assert hold_budget("cpu", env={ENV: "0"}) == 0
    assert hold_budget("cpu", env={ENV: "1e6"}) == 10**6
    with pytest.raises(VerifierError, match=ENV):
        hold_budget("cpu", env={ENV: "lots"})


# -- alpha-CROWN's loop under two ranks ---------------------------------------------------------
def _alpha_job(rank, world, plans):
    import torch

    import dtensor_verify as dv
    import model_zoo as zoo
    from placements import apply_plan, hold, mesh_from_process_group

    torch.set_num_threads(1)
    net, shape = zoo.random_mlp([6, 24, 20, 16, 3], seed=3)
    box = zoo.random_box(shape, 0.4, seed=2, batch=2)
    smallest = 3 * 16 * 4 + 3 * 4                        # the last Linear's weight and bias (float32)
    mesh = mesh_from_process_group()
    out = {}
    for plan in plans:
        for budget in ("0", str(smallest), None):
            if budget is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = budget
            m = dv.load(copy.deepcopy(net), shape)
            apply_plan(m, plan, mesh)
            before = hold.gather_counts()
            r = m.compute_bounds(*box, "alpha-crown")
            after = hold.gather_counts()
            out[(plan, budget)] = {"lower": r.lower.detach().clone(), "upper": r.upper.detach().clone(),
                                   "counts": {k: after[k] - before[k] for k in after},
                                   "searches": m.layout.hold_stats()["searches"]}
    os.environ.pop(ENV, None)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("plans", [("fsdp-prefetch", "spec"), pytest.param(("fsdp",), marks=pytest.mark.slow)],
                         ids=["prefetch-spec", "fsdp"])
def test_alpha_crown_bounds_equal_with_and_without_holding(tmp_path, plans):
    results = run_distributed(_alpha_job, 2, tmp_path, plans, timeout_s=180, start_method=START)
    for res in results:
        for plan in plans:
            off, part, on = (res[(plan, b)] for b in ("0", "204", None))
            for other in (part, on):
                assert torch_equal(off["lower"], other["lower"]) and torch_equal(off["upper"], other["upper"]), plan
            assert off["counts"]["hold"] == 0 and all(s["mode"] == "step" for s in off["searches"]), off
            assert part["counts"]["hold"] >= 1 and part["searches"][-1]["mode"] == "partial", part
            assert part["searches"][-1]["layers"] == 1, part
            assert on["searches"][-1]["mode"] == "search", on
            assert on["counts"]["regather"] == 0 and off["counts"]["regather"] > 0, (plan, on, off)
            # With the hold, what is left is the steps outside the loop (CROWN's start, IBP).
            per_step_off = off["counts"]["step"] + off["counts"]["prefetch"] + off["counts"]["regather"]
            per_step_on = on["counts"]["step"] + on["counts"]["prefetch"] + on["counts"]["regather"]
            assert per_step_on * 5 < per_step_off, (plan, on["counts"], off["counts"])
            assert part["counts"]["all_gathers"] < off["counts"]["all_gathers"], (plan, part, off)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


# -- branch and bound under two ranks ----------------------------------------------------------
def _bab_job(rank, world, folder, seed, plans):
    import torch

    import dtensor_verify as dv
    import milp_oracle as mo
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance
    from placements import apply_plan, hold, mesh_from_process_group

    torch.set_num_threads(1)
    inst = mo.instance(seed, n_in=3, hidden=(10, 10), gap_range=(1e-6, 1e-4))
    Path(folder, f"r{rank}").mkdir(exist_ok=True)
    onnx_path, spec = mo.write(inst, Path(folder, f"r{rank}"))
    out = []
    for plan in plans:
        for budget in ("0", None):
            if budget is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = budget
            model = dv.load(onnx_path)
            apply_plan(model, plan, mesh_from_process_group())
            before = hold.gather_counts()["all_gathers"]
            res = verify_instance(model, read_vnnlib(spec, model.n_inputs, model.n_outputs), onnx_path, 120,
                                  attack=False, bab_options=BabOptions(split="relu", batch_size=8))
            bab = res.bounds.get("bab") or {}
            out.append({"plan": plan, "budget": budget, "expected": inst.expected, "verdict": res.verdict,
                        "message": res.message, "gathers": hold.gather_counts()["all_gathers"] - before,
                        "search": (bab.get("domains_visited"), bab.get("rounds"), bab.get("domains_proved"))})
    os.environ.pop(ENV, None)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("plans", [("fsdp",), pytest.param(("spec", "fsdp-prefetch"), marks=pytest.mark.slow)],
                         ids=["fsdp", "spec-prefetch"])
def test_branch_and_bound_holds_weights_for_the_search(tmp_path, plans):
    res = run_distributed(_bab_job, 2, tmp_path, str(tmp_path), 0, plans, timeout_s=240, start_method=START)
    rank0, rank1 = res
    assert [r["verdict"] for r in rank0] == [r["verdict"] for r in rank1], res
    for off, on in zip(rank0[::2], rank0[1::2]):
        assert off["verdict"] == on["verdict"] == off["expected"], (off, on)
        assert off["search"][0], ("branch and bound did not run", off)
        assert off["search"] == on["search"], (off, on)
        assert on["gathers"] * 10 <= off["gathers"], (off, on)


# -- a weight autograd saved before a search, needed inside it -----------------------------------
def _saved_before_job(rank, world):
    import torch
    from torch.distributed.tensor import DTensor

    import dtensor_verify as dv
    import model_zoo as zoo
    from placements import apply_plan, mesh_from_process_group

    torch.set_num_threads(1)
    net, shape = zoo.random_mlp([5, 8, 3], seed=4)
    m = dv.load(net, shape)
    apply_plan(m, "fsdp", mesh_from_process_group())
    node = next(iter(m.graph.layers()))
    x = torch.randn(2, 5, requires_grad=True)
    with m.layout.weights(node) as w:              # a step outside a search: gathered, then resharded
        y = w.forward([x])
    with m.layout.search_weights():                # held now: the saved weight is unpacked as it is
        y.square().sum().backward()
        still_held = not isinstance(node.op.module.weight, DTensor)
    with m.layout.weights(node) as w:
        ref = 2 * w.forward([x.detach()]) @ w.params["weight"]
    return still_held, torch.allclose(x.grad, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.distributed
def test_weight_saved_before_a_search_is_used_inside_it(tmp_path):
    for still_held, grad_ok in run_distributed(_saved_before_job, 2, tmp_path, timeout_s=60, start_method=START):
        assert still_held, "the backward pass resharded a layer held for the search"
        assert grad_ok
