"""The demo (dtensor_verify/demo.py, scripts/demo.sh) runs end to end and its bounds are ordered:
alpha-CROWN at least as tight as CROWN, CROWN at least as tight as IBP (tolerance 1e-5). Its
sharding part (torchrun P = 2, CPU gloo) shows what placements buy: fsdp bounds bitwise equal to
one process (one thread everywhere), spec bounds within its stated tolerance at about half the
per-rank peak, weights at rest split over the ranks."""
from __future__ import annotations

import json

import pytest

from dtensor_verify import demo
from dtensor_verify.specs import read_vnnlib

TOL = 1e-5


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.main(["--out", str(out)])


def test_demo_writes_files(demo_run):
    out, res = demo_run
    for name in ("demo_mlp.onnx", "demo_prop.vnnlib", "demo_bounds.json"):
        assert (out / name).is_file(), name
    prop = read_vnnlib(out / "demo_prop.vnnlib", n_inputs=4, n_outputs=3)
    assert len(prop.regions) == 1 and len(prop.regions[0].disjuncts) == 2
    assert json.loads((out / "demo_bounds.json").read_text())["label"] == res["label"]


@pytest.mark.parametrize("quantity", ["margin", "output"])
def test_demo_bounds_are_ordered(demo_run, quantity):
    _, res = demo_run
    m = res["methods"]
    for tighter, looser in (("alpha-crown", "crown"), ("crown", "ibp")):
        for a, b in zip(m[tighter][f"{quantity}_lower"], m[looser][f"{quantity}_lower"]):
            assert a >= b - TOL, (quantity, tighter, looser, a, b)
        for a, b in zip(m[tighter][f"{quantity}_upper"], m[looser][f"{quantity}_upper"]):
            assert a <= b + TOL, (quantity, tighter, looser, a, b)
    for r in m.values():
        assert all(lo <= up + TOL for lo, up in zip(r["output_lower"], r["output_upper"]))


def test_demo_verdict_is_sound(demo_run):
    _, res = demo_run
    if "verdict" not in res:
        pytest.skip("dtensor_verify.verify.verify_instance is not available")
    # A proved margin bound rules out a counterexample; an error is a bug.
    assert res["verdict"] not in ("error", "timeout")
    if res["methods"]["alpha-crown"]["proved"]:
        assert res["verdict"] != "sat"


def test_demo_sharding_part(demo_run):
    _, res = demo_run
    shard = res["sharding"]
    assert shard["procs"] == 2 and shard["width"] >= 1024
    fsdp, spec = shard["fsdp"], shard["spec"]
    assert fsdp["world_size"] == spec["world_size"] == 2
    assert fsdp["bitwise_equal"], fsdp
    assert spec["within_tolerance"], spec
    assert spec["max_abs_diff"] <= demo.SPEC_ATOL + demo.SPEC_RTOL * 100
    one = shard["one_process_peak_bytes"]
    assert max(spec["peak_bytes_per_rank"]) < 0.6 * one            # rows split: about 1/2 per rank
    assert max(fsdp["peak_bytes_per_rank"]) <= one
    for plan in (fsdp, spec):                                        # weights at rest: Shard(0) over 2 ranks
        assert max(plan["baseline_bytes_per_rank"]) < 0.6 * shard["one_process_baseline_bytes"]


def test_demo_sharding_files(demo_run):
    out, _ = demo_run
    for name in ("wide_one_process.json", "wide_fsdp.json", "wide_spec.json"):
        assert (out / name).is_file(), name
