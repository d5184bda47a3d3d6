"""Placement plans without processes: parsing, matching, validation, world size 1, chunk_bounds.

Plans (DESIGN.md "Per-layer plans"): a policy name, a rule string, a file, a dict or a list of
pairs; the first matching rule wins, `*` is the default, patterns match a layer's module name or
its type. The pass validates the plan against the graph. At world size 1 every policy runs as
'replicate' and torch.distributed is never initialised.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import dtensor_verify as dv
import model_zoo as zoo
from dtensor_verify.errors import PlanError
from dtensor_verify.layout import DEFAULT_LAYOUT
from placements import POLICIES, Plan, apply_plan, get_policy, init_mesh, mesh_from_process_group, parse_plan
from placements.layout import chunk_bounds


def _mlp():
    net, shape = zoo.random_mlp([10, 21, 13, 3], seed=0)      # layers '0', '2', '4' (Linear)
    return dv.load(net, shape), shape


def _cnn():
    net, shape = zoo.random_cnn("basic", seed=0)             # '0', '2' Conv2d; '5', '7' Linear
    return dv.load(net, shape), shape


def _names(plan: Plan, layers):
    return {name: plan.policy_for(name, typ).name for name, typ in layers}


MLP_LAYERS = [("0", "Linear"), ("2", "Linear"), ("4", "Linear")]
CNN_LAYERS = [("0", "Conv2d"), ("2", "Conv2d"), ("5", "Linear"), ("7", "Linear")]


# ------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_name_is_a_plan_for_every_layer(name):
    plan = parse_plan(name)
    assert len(plan.rules) == 1 and plan.rules[0].patterns == ("*",)
    assert plan.rules[0].policy is get_policy(name)
    assert plan.default.name == name
    assert set(_names(plan, CNN_LAYERS).values()) == {name}


def test_policy_names_are_case_and_space_insensitive():
    assert parse_plan("  FSDP ").default.name == "fsdp"
    assert parse_plan("0 = TP ; * = Spec").rules[1].policy.name == "spec"


def test_none_means_replicate():
    plan = parse_plan(None)
    assert plan.default.name == "replicate"
    assert set(_names(plan, MLP_LAYERS).values()) == {"replicate"}


def test_rule_string():
    plan = parse_plan("fc1,fc2=tp;conv*=fsdp;*=replicate")
    assert [(r.patterns, r.policy.name) for r in plan.rules] == [
        (("fc1", "fc2"), "tp"), (("conv*",), "fsdp"), (("*",), "replicate")]
    got = _names(plan, [("fc1", "Linear"), ("fc2", "Linear"), ("conv_0", "Conv2d"), ("fc3", "Linear")])
    assert got == {"fc1": "tp", "fc2": "tp", "conv_0": "fsdp", "fc3": "replicate"}
    assert str(plan) == "fc1,fc2=tp;conv*=fsdp;*=replicate"


def test_first_matching_rule_wins():
    plan = parse_plan("0=tp;Linear=fsdp;*=spec")
    assert _names(plan, MLP_LAYERS) == {"0": "tp", "2": "fsdp", "4": "fsdp"}
    plan = parse_plan("Linear=fsdp;0=tp")       # '0' comes too late: it is a Linear
    assert _names(plan, MLP_LAYERS) == {"0": "fsdp", "2": "fsdp", "4": "fsdp"}


def test_star_is_the_default_and_missing_star_means_replicate():
    plan = parse_plan("*=spec;0=tp")            # '*' first swallows everything
    assert _names(plan, MLP_LAYERS) == {"0": "spec", "2": "spec", "4": "spec"}
    assert parse_plan("0=tp;*=fsdp").default.name == "fsdp"
    plan = parse_plan("0=tp")
    assert plan.default.name == "replicate"
    assert _names(plan, MLP_LAYERS) == {"0": "tp", "2": "replicate", "4": "replicate"}


def test_type_globs():
    plan = parse_plan("Lin*=tp;Conv?d=spec")
    assert _names(plan, CNN_LAYERS) == {"0": "spec", "2": "spec", "5": "tp", "7": "tp"}
    # matching ignores case, on names and types alike (issue 13: `conv*` must match `Conv2d`)
    plan = parse_plan("linear=tp;*=fsdp")
    assert _names(plan, CNN_LAYERS) == {"0": "fsdp", "2": "fsdp", "5": "tp", "7": "tp"}
    plan = parse_plan("conv*=fsdp;*=tp")
    assert _names(plan, CNN_LAYERS) == {"0": "fsdp", "2": "fsdp", "5": "tp", "7": "tp"}
    assert _names(parse_plan("GEMM_1=tp;*=spec"), [("Gemm_1", "Linear"), ("Conv_0", "Conv2d")]) == \
        {"Gemm_1": "tp", "Conv_0": "spec"}


def test_name_globs_on_onnx_style_names():
    plan = parse_plan("gemm_*=tp;conv_[01]=fsdp;*=spec")
    layers = [("conv_0", "Conv2d"), ("conv_1", "Conv2d"), ("conv_2", "Conv2d"), ("gemm_1", "Linear")]
    assert _names(plan, layers) == {"conv_0": "fsdp", "conv_1": "fsdp", "conv_2": "spec", "gemm_1": "tp"}


def test_dict_and_list_plans():
    plan = parse_plan({"0": "tp", "*": "fsdp"})
    assert _names(plan, MLP_LAYERS) == {"0": "tp", "2": "fsdp", "4": "fsdp"}
    plan = parse_plan([(("0", "2"), "tp"), ("*", get_policy("spec"))])
    assert _names(plan, MLP_LAYERS) == {"0": "tp", "2": "tp", "4": "spec"}
    assert parse_plan(plan) is plan


@pytest.mark.parametrize("form", ["path", "@path"])
def test_plan_file(tmp_path, form):
    path = tmp_path / "layers.plan"
    path.write_text("# tp for the first layer\n0 = tp   # inline comment\n\nLinear=spec; *=fsdp\n")
    plan = parse_plan(str(path) if form == "path" else f"@{path}")
    assert [str(r) for r in plan.rules] == ["0=tp", "Linear=spec", "*=fsdp"]
    assert _names(plan, MLP_LAYERS) == {"0": "tp", "2": "spec", "4": "spec"}
    assert plan.source == str(path)


def test_plan_file_holding_a_policy_name(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# everything FSDP\nfsdp\n")
    assert parse_plan(str(path)).default.name == "fsdp"


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError, match="cannot read plan file"):
        parse_plan(f"@{tmp_path / 'nope.plan'}")


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("spec", ["fdsp", "0=tp;*=zero3", {"*": "pipeline"}])
def test_unknown_policy(spec):
    with pytest.raises(PlanError, match="unknown placement policy") as info:
        parse_plan(spec)
    assert "known: replicate, fsdp, fsdp-prefetch, tp, spec" in str(info.value)


def test_rule_without_equals():
    with pytest.raises(PlanError, match="has no '='") as info:
        parse_plan("0=tp;fsdp")
    assert "'fsdp'" in str(info.value)


@pytest.mark.parametrize("spec", ["", " ; ", "=tp"])
def test_empty_plans_and_rules(spec):
    with pytest.raises(PlanError):
        parse_plan(spec)


def test_rule_matching_no_layer_lists_the_layers():
    m, _ = _cnn()
    with pytest.raises(PlanError, match="matches no layer") as info:
        apply_plan(m, "fc9=tp;*=fsdp", None)
    msg = str(info.value)
    assert "fc9=tp" in msg
    for layer in ("0 (Conv2d)", "2 (Conv2d)", "5 (Linear)", "7 (Linear)"):
        assert layer in msg, msg


def test_rule_shadowed_by_an_earlier_one_is_reported():
    m, _ = _mlp()
    with pytest.raises(PlanError, match="matches no layer"):
        apply_plan(m, "Linear=fsdp;0=tp", None)


@pytest.mark.parametrize("plan", ["tp", "0=tp;*=fsdp", "Conv2d=tp;*=fsdp", {"2": "tp", "*": "spec"}])
def test_tp_on_conv_is_refused_naming_the_layer(plan):
    m, _ = _cnn()
    with pytest.raises(PlanError, match="does not shard convolutions") as info:
        apply_plan(m, plan, None)
    layer = "2" if isinstance(plan, dict) else "0"
    assert f"layer '{layer}' (Conv2d)" in str(info.value)


def test_tp_on_linear_layers_of_a_cnn_is_accepted():
    m, _ = _cnn()
    report = apply_plan(m, "Linear=tp;Conv2d=spec", None)
    assert report.policies == {"0": "spec", "2": "spec", "5": "tp", "7": "tp"}


# ------------------------------------------------------------------------------ world size 1

@pytest.mark.parametrize("plan", ["fsdp", "tp", "spec", "0=tp;*=fsdp", {"2": "tp", "*": "spec"}])
def test_world_size_one_changes_nothing(plan, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.is_initialized()
    assert mesh_from_process_group() is None
    assert init_mesh() is None
    m, shape = _mlp()
    box = zoo.random_box(shape, 0.4, seed=1, batch=2)
    alpha = dv.AlphaOptions(iterations=5)
    before = {meth: m.compute_bounds(*box, meth, alpha_options=alpha) for meth in dv.METHODS}
    weights = {k: v.detach().clone() for k, v in m.module.state_dict().items()}
    report = apply_plan(m, plan, None)
    assert not dist.is_initialized()
    assert report.world_size == 1
    assert "one process" in str(report)
    assert m.layout is DEFAULT_LAYOUT
    for k, p in m.module.named_parameters():
        assert type(p) is torch.nn.Parameter, k
        assert torch.equal(p.detach(), weights[k]), k
    for meth in dv.METHODS:
        after = m.compute_bounds(*box, meth, alpha_options=alpha)
        assert torch.equal(after.lower, before[meth].lower), meth
        assert torch.equal(after.upper, before[meth].upper), meth
    assert not dist.is_initialized()


def test_world_size_one_report_lists_policies():
    m, _ = _cnn()
    report = apply_plan(m, "Linear=tp;*=fsdp", None)
    assert report.policies == {"0": "fsdp", "2": "fsdp", "5": "tp", "7": "tp"}
    assert m.plan == "Linear=tp;*=fsdp"


# ------------------------------------------------------------------------------ chunk_bounds

def test_chunk_bounds_examples():
    assert [chunk_bounds(21, 4, r) for r in range(4)] == [(0, 6), (6, 12), (12, 18), (18, 21)]
    assert [chunk_bounds(3, 4, r) for r in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 3)]
    assert [chunk_bounds(10, 2, r) for r in range(2)] == [(0, 5), (5, 10)]
    assert chunk_bounds(0, 3, 1) == (0, 0)
    assert chunk_bounds(7, 1, 0) == (0, 7)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_chunk_bounds_tile_like_torch_chunk(world):
    for n in range(0, 30):
        parts = [chunk_bounds(n, world, r) for r in range(world)]
        # contiguous, in order, covering [0, n)
        assert parts[0][0] == 0 and parts[-1][1] == n
        for (a0, a1), (b0, b1) in zip(parts, parts[1:]):
            assert a1 == b0 and a0 <= a1
        # the same split as DTensor's Shard (torch.chunk semantics; missing chunks are empty)
        chunks = torch.arange(n).chunk(world) if n else ()
        for r, (start, stop) in enumerate(parts):
            want = chunks[r].tolist() if r < len(chunks) else []
            assert list(range(start, stop)) == want, (n, world, r)
