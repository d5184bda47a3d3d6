"""Extension points of the placement side (issue 17):

* a new placement style written here (a `replicate` variant that counts its calls) plugs in
  through the registry alone, and runs;
* new ops written here declare their capabilities and run under every plan, with no change to
  `placements/`: an elementwise op inside a tp zone, and an op with weights (its own Linear rule)
  that takes its parameters from the style;
* nothing writes into a module's `_parameters` outside the styles' set-up (`shard`);
* the engine stays placement-blind and the BaB comm modules do not import each other in a loop.
"""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch

from dist_utils import run_distributed
from dtensor_verify.ops.base import BackwardResult, BoundOp, Capabilities, per_row_sum
from placements.styles.replicate import ReplicateStyle

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6
PLANS = ("replicate", "fsdp", "fsdp-prefetch", "tp", "spec", "counting-replicate")


class CountingReplicate(ReplicateStyle):
    """`replicate`, counting how often each hook is asked (per process)."""
    name = "counting-replicate"
    summary = "replicate, counting its calls (a test fixture)"
    calls: dict = {}

    def _count(self, what):
        self.calls[what] = self.calls.get(what, 0) + 1

    def weights(self, node, ctx, sweep=None):
        self._count("weights")
        return super().weights(node, ctx, sweep)

    def shard(self, module, mesh):
        self._count("shard")
        return super().shard(module, mesh)


class DoubleOp(BoundOp):
    """out = 2 x: an elementwise op the placement side has never heard of."""
    kind = "double"
    caps = Capabilities(elementwise=True)

    def forward(self, x):
        return 2 * x

    def ibp(self, interval):
        return 2 * interval[0], 2 * interval[1]

    def backward(self, lA, uA, input_bounds, alpha=None):
        return BackwardResult([(None if lA is None else 2 * lA, None if uA is None else 2 * uA)])


class PlainLinearOp(BoundOp):
    """z = x W^T + b written from scratch: an op with weights, which come in as `params`."""
    kind = "plain_linear"
    caps = Capabilities(has_weights=True, neuron_rows=True, sums_over_weight_rows=True)

    def _wb(self, params):
        params = self.module_params() if params is None else params
        return params["weight"], params.get("bias")

    def forward(self, x, params=None):
        w, b = self._wb(params)
        return x.matmul(w.t()) + b

    def ibp(self, interval, params=None):
        w, b = self._wb(params)
        mid, rad = (interval[1] + interval[0]) / 2, (interval[1] - interval[0]) / 2
        center, dev = mid.matmul(w.t()) + b, rad.matmul(w.abs().t())
        return center - dev, center + dev

    def backward(self, lA, uA, input_bounds, alpha=None, params=None):
        w, b = self._wb(params)

        def bias(A):
            return 0.0 if A is None else per_row_sum(A.matmul(b).unsqueeze(-1))

        return BackwardResult([(None if lA is None else lA.matmul(w), None if uA is None else uA.matmul(w))],
                              bias(lA), bias(uA))


def _model():
    import dtensor_verify as dv

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 24), torch.nn.Identity(), torch.nn.ReLU(),
                              torch.nn.Linear(24, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    m = dv.load(net, (10,))
    for node in m.graph.nodes:
        old = node.op
        if old is None or old.kind not in ("identity", "linear") or (old.kind == "linear" and node.layer != "3"):
            continue
        new = DoubleOp(old.name) if old.kind == "identity" else PlainLinearOp(old.name, old.module)
        new.out_shape, new.in_shapes = old.out_shape, old.in_shapes
        node.op = new
    assert {n.op.kind for n in m.graph.nodes if n.op is not None} >= {"double", "plain_linear"}
    return m


def _bounds(m, box):
    import dtensor_verify as dv

    out = {}
    for method in ("crown", "alpha-crown"):
        r = m.compute_bounds(*box, method, alpha_options=dv.AlphaOptions(iterations=3))
        out[method] = (r.lower.detach().clone(), r.upper.detach().clone())
    return out


def _extension_job(rank, world):
    from placements import apply_plan, get_policy, mesh_from_process_group, register_style

    register_style(CountingReplicate())
    torch.set_num_threads(1)
    box = (torch.rand(2, 10, generator=torch.Generator().manual_seed(1)) - 1.0, None)
    box = (box[0], box[0] + 0.8)
    template = _model()
    out = {"one": _bounds(copy.deepcopy(template), box)}
    mesh = mesh_from_process_group()
    for plan in PLANS:
        m = copy.deepcopy(template)
        apply_plan(m, plan, mesh)
        out[plan] = _bounds(m, box)
    out["calls"] = dict(CountingReplicate.calls)
    out["registered"] = type(get_policy("counting-replicate")).__name__
    return out


def test_new_style_and_new_ops_run_under_every_plan(tmp_path):
    results = run_distributed(_extension_job, 2, tmp_path, timeout_s=240, start_method="forkserver")
    for res in results:
        assert res["registered"] == "CountingReplicate"
        assert res["calls"]["shard"] == 3 and res["calls"]["weights"] > 10, res["calls"]
        for plan in PLANS:
            for method, (lo, up) in res[plan].items():
                ref_lo, ref_up = res["one"][method]
                assert torch.all(lo <= up), (plan, method)
                if plan in ("replicate", "fsdp", "fsdp-prefetch", "counting-replicate"):
                    assert torch.equal(lo, ref_lo) and torch.equal(up, ref_up), (plan, method)
                else:
                    assert torch.allclose(lo, ref_lo, rtol=RTOL, atol=ATOL), (plan, method)
                    assert torch.allclose(up, ref_up, rtol=RTOL, atol=ATOL), (plan, method)


def test_fixture_ops_are_sound_in_one_process():
    """The fixture ops' bounds hold on samples (so the comparison above compares sound bounds)."""
    m = _model()
    lo_x = torch.rand(1, 10, generator=torch.Generator().manual_seed(2)) - 1.0
    hi_x = lo_x + 0.8
    bounds = _bounds(m, (lo_x, hi_x))
    xs = lo_x + torch.rand(500, 10, generator=torch.Generator().manual_seed(3)) * (hi_x - lo_x)
    with torch.no_grad():
        ys = m.forward(xs)
    for lo, up in bounds.values():
        assert torch.all(ys >= lo - 1e-5) and torch.all(ys <= up + 1e-5)


def test_a_registered_style_resolves_in_plans():
    from placements import STYLES, get_policy, parse_plan, register_style

    style = register_style(CountingReplicate())
    try:
        assert get_policy("counting-replicate") is style
        assert parse_plan("fc*=counting-replicate;*=fsdp").rules[0].policy is style
    finally:
        STYLES.pop("counting-replicate", None)


def _functions_writing_parameters(path: Path):
    """(function name, line) of each write into some module's `._parameters` dict (item
    assignment, update, ...). Giving a freshly built module its dict (`m._parameters = {...}`,
    e.g. bab/exact.py's float64 copies) builds a new module and is not a write into one."""
    tree = ast.parse(path.read_text())
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("update", "__setitem__", "setdefault", "pop"):
                targets = [node.func.value]
            for t in targets:
                if isinstance(node, ast.Assign) and not isinstance(t, ast.Subscript):
                    continue
                base = t.value if isinstance(t, ast.Subscript) else t
                if isinstance(base, ast.Attribute) and base.attr == "_parameters":
                    found.append((func.name, node.lineno))
    return found


def test_no_parameter_writes_outside_set_up():
    writes = []
    for path in sorted((REPO / "dtensor_verify").rglob("*.py")) + sorted((REPO / "placements").rglob("*.py")):
        writes += [(str(path.relative_to(REPO)), name, line) for name, line in _functions_writing_parameters(path)]
    assert writes, "the check found no set-up write at all: it no longer sees them"
    assert all(name == "shard" and "placements/styles/" in path for path, name, line in writes), writes


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
    return names


def test_engine_is_placement_blind_and_bab_comm_has_no_loop():
    for sub in ("ops", "methods", "bab"):
        for path in (REPO / "dtensor_verify" / sub).rglob("*.py"):
            assert not any(n.split(".")[0] == "placements" for n in _imports(path)), path
    bab = REPO / "dtensor_verify" / "bab"
    assert ".comm" not in _imports(bab / "mesh_comm.py")
