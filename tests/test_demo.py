"""The demo (dtensor_verify/demo.py, scripts/demo.sh) runs end to end and its bounds are ordered:
alpha-CROWN at least as tight as CROWN, CROWN at least as tight as IBP (tolerance 1e-5)."""
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
