"""The one-hidden-layer search (bab/mip_planes.py, bab/mip_shallow.py, verify/shallow_stage.py):
its bound is below every attained value of its domain, its verdicts match a MILP's exact answer
on random small nets near the decision boundary, the matrices read off a graph reproduce it, and
the pipeline decides one-hidden-layer instances with it."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from dtensor_verify.bab import mip_planes as mp  # noqa: E402
from dtensor_verify.bab.mip_planes import ShallowRow, search_row  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _row(inst) -> ShallowRow:
    (W1, b1), (W2, b2) = inst.weights
    T = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))   # noqa: E731
    return ShallowRow(T(W1), T(b1), T(inst.c @ W2), torch.zeros(W1.shape[1], dtype=torch.float64),
                      float(inst.c @ b2 - inst.d), T(inst.lower), T(inst.upper))


def _random_domains(s, D, n, gen):
    nN, nP = s.WN.shape[0], s.WP.shape[0]
    phase = torch.randint(-1, 2, (D, nN), generator=gen).to(torch.int8)
    return mp._Domains(phase, torch.rand(D, nP, generator=gen, dtype=torch.float64),
                       torch.rand(D, nN, n, generator=gen, dtype=torch.float64) * 1.4 - 0.2,
                       torch.rand(D, nN, generator=gen, dtype=torch.float64) * 3,
                       torch.zeros(D, dtype=torch.long))


@pytest.mark.parametrize("seed", range(6))
def test_bound_is_below_sampled_values_of_its_domain(seed):
    """Any parameters (lam even outside [0, 1]): the bound of a domain is below F at every sampled
    point of the box that satisfies the domain's split signs, and x* is a vertex of the box."""
    import milp_oracle as mo
    inst = mo.instance(500 + seed, n_in=4, hidden=(16,), n_out=2)
    row = _row(inst)
    s = mp.reduce_row(row)
    gen = torch.Generator().manual_seed(seed)
    dom = _random_domains(s, 64, 4, gen)
    val, x = mp.bound(s, dom)
    assert bool(((x == row.lo) | (x == row.hi)).all())
    pts = row.lo + (row.hi - row.lo) * torch.rand(20000, 4, generator=gen, dtype=torch.float64)
    pts = torch.cat([pts, torch.cartesian_prod(*[torch.stack([a, b]) for a, b in zip(row.lo, row.hi)])])
    zN = pts @ s.WN.T + s.bN                                        # [S, nN]
    fx = row.value(pts)
    for d in range(64):
        ok = ((dom.phase[d] == 0) | ((dom.phase[d] > 0) & (zN >= 0)) | ((dom.phase[d] < 0) & (zN <= 0))).all(1)
        if ok.any():
            assert float(val[d]) <= float(fx[ok].min()) + 1e-9, d
    # Adam steps keep it sound and raise the bounds of the root.
    root = mp._root(s, 4)
    before = float(mp.bound(s, root)[0])
    mp.optimise(s, root, 50, target=float("inf"))
    after = float(mp.bound(s, root)[0])
    assert after >= before - 1e-12 and after <= float(fx.min()) + 1e-9


@pytest.mark.parametrize("seed", range(12))
def test_verdicts_match_the_milp(seed):
    """Random one-hidden-layer nets, the threshold 1e-4..1e-2 of the output range from the exact
    minimum (MILP): proved exactly when unsat, a point with F <= 0 exactly when sat."""
    import milp_oracle as mo
    n_in, hidden = [(3, 12), (5, 20), (8, 24), (4, 32)][seed % 4]
    inst = mo.instance(7000 + seed, n_in=n_in, hidden=(hidden,), n_out=3)
    assert inst.expected in ("sat", "unsat")
    row = _row(inst)
    found = []
    out = search_row(row, time.perf_counter() + 30, lambda x: found.append(x[0]) or x[0])
    if inst.expected == "unsat":
        assert out.status == "proved", out
    else:
        assert out.status == "sat" and float(row.value(found[0].unsqueeze(0))[0]) <= 0, out


def test_counterexample_rejected_means_no_unsat():
    """A confirm function that rejects everything: a sat instance must not end proved."""
    import milp_oracle as mo
    inst = mo.instance(7001, n_in=3, hidden=(12,), n_out=3, kind="sat")
    out = search_row(_row(inst), time.perf_counter() + 3, lambda x: None)
    assert out.status in ("timeout", "unknown") and out.best_value <= 0


def test_matrices_read_off_the_graph(tmp_path):
    import milp_oracle as mo
    import dtensor_verify as dv
    from dtensor_verify.bab.mip_shallow import shallow_net, why_not_shallow

    inst = mo.instance(7100, n_in=5, hidden=(9,), n_out=3)
    onnx_path, _ = mo.write(inst, tmp_path)
    model = dv.load(onnx_path)
    lo, hi = torch.tensor(inst.lower).reshape(1, 5), torch.tensor(inst.upper).reshape(1, 5)
    net = shallow_net(model.graph, (5,), lo, hi)
    assert not isinstance(net, str), net
    (W1, b1), (W2, b2) = inst.weights
    assert np.allclose(net.W1.numpy(), W1) and np.allclose(net.W2.numpy(), W2)
    assert np.allclose(net.b2.numpy(), b2) and float(net.S.abs().max()) == 0.0
    deep = mo.instance(7101, n_in=3, hidden=(6, 6), n_out=2)
    deep_path, _ = mo.write(deep, tmp_path)
    why = why_not_shallow(dv.load(deep_path).graph)
    assert why is not None and "2 ReLU nodes" in why


@pytest.mark.parametrize("seed,kind", [(7200, "unsat"), (7201, "sat")])
def test_pipeline_decides_with_the_shallow_stage(tmp_path, seed, kind):
    """Attack off: the stage itself must find the counterexample (confirmed by onnxruntime) or
    prove the property."""
    import milp_oracle as mo
    import dtensor_verify as dv
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance

    inst = mo.instance(seed, n_in=6, hidden=(24,), n_out=3, kind=kind)
    onnx_path, spec = mo.write(inst, tmp_path)
    model = dv.load(onnx_path)
    res = verify_instance(model, read_vnnlib(spec, model.n_inputs, model.n_outputs), onnx_path, 30, attack=False)
    assert res.verdict == kind, res.message
    assert res.decided_by == "shallow-bab"
    if kind == "sat":
        assert res.confirmed_by == "onnxruntime"
