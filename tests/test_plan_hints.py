"""Plan errors that suggest a plan suggest one that works on that model (issue 13).

The error for `tp` on a convolution used to suggest `--plan "conv*=fsdp;*=tp"`, which failed with
the same error: patterns were case-sensitive and the layer is `Conv_0` (`Conv2d`). Patterns now
match case-insensitively, and the suggestion is built from the model's own layer names / types
and checked against it.
"""
from __future__ import annotations

import re

import pytest
import torch

import dtensor_verify as dv
import model_zoo as zoo
from dtensor_verify.cli import main
from dtensor_verify.errors import PlanError
from placements.apply import resolve_policies
from placements.plan import parse_plan

OVAL = "oval21/onnx/cifar_base_kw.onnx.gz"
DEEP = "oval21/onnx/cifar_deep_kw.onnx.gz"
RESNET = "sri_resnet_a/onnx/resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx.gz"
SUGGESTION = re.compile(r'--plan "([^"]+)"')


def _bench(rel: str) -> str:
    p = zoo.benchmarks_dir() / rel
    if not p.exists():
        pytest.fail(f"benchmark file {p} is missing")
    return str(p)


@pytest.fixture(scope="module")
def models():
    return {rel: dv.load(_bench(rel)) for rel in (OVAL, DEEP, RESNET)}


def _suggestion(graph, plan) -> str:
    with pytest.raises(PlanError) as info:
        resolve_policies(graph, parse_plan(plan))
    found = SUGGESTION.search(str(info.value))
    assert found, str(info.value)
    return found.group(1)


def test_the_plan_from_the_issue_is_accepted(models):
    graph = models[OVAL].graph                  # layers Conv_0, Conv_2 (Conv2d); Gemm_5, Gemm_7 (Linear)
    got = resolve_policies(graph, parse_plan("conv*=fsdp;*=tp"))
    by_layer = {graph[name].layer: p.name for name, p in got.items()}
    assert by_layer == {"Conv_0": "fsdp", "Conv_2": "fsdp", "Gemm_5": "tp", "Gemm_7": "tp"}


@pytest.mark.parametrize("model", [OVAL, DEEP, RESNET])
@pytest.mark.parametrize("plan", ["tp", "Conv_0=tp;*=fsdp", "Conv_0=tp;Conv_2=spec;*=replicate",
                                  "CONV_0=fsdp;*=tp", "gemm*=spec;*=tp"])
def test_suggested_plan_resolves_on_the_model(models, model, plan):
    graph = models[model].graph
    fix = _suggestion(graph, plan)
    policies = resolve_policies(graph, parse_plan(fix))          # raises if the suggestion is bad
    # The suggestion keeps what the user asked for wherever that was possible.
    wanted = parse_plan(plan)
    for name, policy in policies.items():
        node = graph[name]
        asked = wanted.policy_for(node.layer, node.layer_type)
        if node.op.kind == "conv2d" and asked.name == "tp":
            assert policy.name == "fsdp", (node.layer, policy.name)
        else:
            assert policy.name == asked.name, (node.layer, policy.name, asked.name)


def test_tp_on_a_cnn_suggests_by_type():
    net, shape = zoo.random_cnn("basic", seed=0)          # '0', '2' Conv2d; '5', '7' Linear
    fix = _suggestion(dv.load(net, shape).graph, "tp")
    assert fix == "Conv2d=fsdp;*=tp"


def test_cli_suggestion_works_when_run(tmp_path, capsys):
    """The whole loop a user goes through: error, copy the suggested plan, run again."""
    torch.set_num_threads(1)
    model = _bench(OVAL)
    box = ["--lower", str(tmp_path / "lo.txt"), "--upper", str(tmp_path / "hi.txt")]
    (tmp_path / "lo.txt").write_text(" ".join(["0.4"] * 3072))
    (tmp_path / "hi.txt").write_text(" ".join(["0.41"] * 3072))
    rc = main(["bounds", model, *box, "--method", "ibp", "--plan", "tp", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line, = [ln for ln in err.splitlines() if ln.startswith("dtensor-verify: error: ")]
    assert "Conv_0" in line and "Conv2d" in line
    fix = SUGGESTION.search(line).group(1)
    assert main(["bounds", model, *box, "--method", "ibp", "--plan", fix, "--device", "cpu"]) == 0
    assert "ibp bounds" in capsys.readouterr().out


@pytest.mark.parametrize("outputs,ranks,refused", [(1, 2, True), (1, 4, True), (2, 4, False), (3, 4, False),
                                                   (5, 4, False), (1, 1, False)])
def test_tp_refuses_a_one_output_layer_on_several_ranks(outputs, ranks, refused):
    """A tp layer with one output neuron ended `run` under torchrun as an internal error (DTensor
    cannot view away a sharded dim of size 1); refuse it with a plan that works instead. Uneven
    shards (2 outputs on 4 ranks: 1, 1, 0, 0) work and stay allowed."""
    net, shape = zoo.random_mlp([4, 8, outputs], seed=0)
    graph = dv.load(net, shape).graph
    if not refused:
        assert {p.name for p in resolve_policies(graph, parse_plan("tp"), ranks).values()} == {"tp"}
        return
    with pytest.raises(PlanError, match=f"one output neuron over {ranks} ranks") as info:
        resolve_policies(graph, parse_plan("tp"), ranks)
    fix = SUGGESTION.search(str(info.value)).group(1)
    policies = resolve_policies(graph, parse_plan(fix), ranks)
    assert sorted(p.name for p in policies.values()) == ["fsdp", "tp"]
