"""alpha-CROWN's cheap exits (docs/ALPHA_SPEED.md): the stop once every row is proved
(`stop_above`), the output-only warm-up, the intermediate start nodes chosen by the memory
budget. Each keeps the bounds sound (sampled and attacked points) and never looser than CROWN."""
from __future__ import annotations

import pytest
import torch

import dtensor_verify as dv
import model_zoo as mz
from dtensor_verify.methods import alpha_crown
from op_checks import attained


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_CACHE: dict = {}


def _case():
    """A random 4-hidden-layer MLP on two boxes with many unstable neurons, its margin spec, and
    CROWN's bounds of it."""
    if not _CACHE:
        net, shape = mz.random_mlp([8, 24, 24, 24, 24, 6], seed=2)
        m = dv.load(net, input_shape=shape)
        xl, xu = mz.random_box(shape, 0.2, seed=11, batch=2)
        with torch.no_grad():
            y = m.forward((xl + xu) / 2)
        n = y.shape[1]
        C = torch.zeros(2, n - 1, n)
        for b, label in enumerate(y.argmax(1).tolist()):
            C[b, :, label] = 1.0
            C[b, torch.arange(n - 1), [j for j in range(n) if j != label]] = -1.0
        crown = m.compute_bounds(xl, xu, method="crown", C=C)
        _CACHE.update(m=m, net=net, box=(xl, xu), C=C, crown=crown)
    return _CACHE


def _run(opts, stop_above=None):
    c = _case()
    return alpha_crown(c["m"].graph, c["box"], c["C"], opts=opts, want_upper=False, stop_above=stop_above)


def _sound(lower):
    """lower <= C f(x) at sampled and attacked points of each box."""
    c = _case()
    Cb = c["C"]
    ymin, _ = attained(lambda x: torch.einsum("bkn,bn->bk", Cb[:1].expand(x.shape[0], -1, -1), c["net"](x)),
                       c["box"][0][:1], c["box"][1][:1], n=2000)
    assert (lower[:1] <= ymin + 1e-5).all(), (lower[:1] - ymin).max()


def test_stop_above_already_proved_runs_no_step():
    """Rows CROWN already proves: no step, CROWN's bounds returned as they are."""
    c = _case()
    res = _run(dv.AlphaOptions(iterations=20, patience=100), stop_above=c["crown"].lower - 1.0)
    assert res.iterations == 0
    assert torch.equal(res.lower, res.crown_lower)
    assert set(res.alphas) == {c["m"].graph.output_name}


def test_stop_above_stops_once_every_row_is_proved():
    """A threshold half-way between CROWN and alpha-CROWN's full run: the run stops early, with
    every row above it; an unreachable threshold (+inf on one row) changes nothing."""
    opts = dv.AlphaOptions(iterations=20, patience=100)
    full = _run(opts)
    assert full.iterations == 20
    gain = full.lower - full.crown_lower
    assert (gain > 1e-3).float().mean() > 0.5, gain
    thr = full.crown_lower + 0.5 * gain
    early = _run(opts, stop_above=thr)
    assert early.iterations < full.iterations
    assert (early.lower > thr).all()
    assert (early.lower >= early.crown_lower).all()
    _sound(early.lower)
    never = torch.full_like(thr, -float("inf"))
    never[0, 0] = float("inf")
    same = _run(opts, stop_above=never)
    assert same.iterations == full.iterations
    assert torch.equal(same.lower, full.lower)


def test_warmup_then_joint_optimisation():
    """The output-only warm-up, then the joint steps: never looser than CROWN, sound, and the
    intermediate slopes are still optimised after it (they exist and the steps add up)."""
    c = _case()
    res = _run(dv.AlphaOptions(iterations=10, warmup=5, patience=100))
    assert res.iterations == 15
    assert (res.lower >= res.crown_lower).all()
    assert len(res.alphas) > 1                      # intermediate start nodes got slopes
    _sound(res.lower)
    # Warm-up alone proves what it can: a threshold it reaches ends the run before the joint steps.
    out_only = _run(dv.AlphaOptions(iterations=5, patience=100, optimize_intermediate=False))
    gain = out_only.lower - out_only.crown_lower
    thr = torch.where(gain > 0, out_only.crown_lower + 0.5 * gain, out_only.crown_lower - 1.0)
    stopped = _run(dv.AlphaOptions(iterations=10, warmup=5, patience=100), stop_above=thr)
    assert stopped.iterations <= 5
    assert set(stopped.alphas) == {c["m"].graph.output_name}
    assert (stopped.lower > thr).all()


def test_intermediate_starts_subset():
    """Only the chosen intermediate start nodes get slopes; the bounds stay sound and never looser
    than CROWN."""
    c = _case()
    full = _run(dv.AlphaOptions(iterations=3, patience=100))
    inter = [s for s in full.alphas if s != c["m"].graph.output_name]
    assert len(inter) >= 2
    res = _run(dv.AlphaOptions(iterations=3, patience=100, intermediate_starts=tuple(inter[-1:])))
    assert set(res.alphas) == {c["m"].graph.output_name, inter[-1]}
    assert (res.lower >= res.crown_lower).all()
    _sound(res.lower)


def test_device_share_fake_memory(monkeypatch):
    """DTENSOR_VERIFY_DEVICE_BYTES stands for the device's free memory (dry runs on a CPU),
    divided among DTENSOR_VERIFY_SHARE_DEVICE processes; bab.budget sees the same."""
    from dtensor_verify.bab import budget
    from dtensor_verify.device_share import free_memory_bytes

    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", str(80 << 30))
    monkeypatch.setenv("DTENSOR_VERIFY_SHARE_DEVICE", "8")
    assert free_memory_bytes(torch.device("cpu")) == (80 << 30) // 8
    assert budget.free_memory_bytes(torch.device("cuda")) == (80 << 30) // 8


def test_budget_leaves_out_costliest_start_nodes(monkeypatch):
    """A device share too small for every intermediate start node: the costliest are left out of
    the optimisation (their bounds stay CROWN's), the cheapest that fit are kept, the bounds stay
    sound and never looser than CROWN; with room for all, all are optimised."""
    from dtensor_verify.methods import alpha_budget
    from dtensor_verify.methods.crown import intermediate_bounds

    c = _case()
    g = c["m"].graph
    with torch.no_grad():
        _, rows = intermediate_bounds(g, c["box"])
    costs = alpha_budget.start_costs(g, rows, c["C"].shape[1], 2)
    inter = sorted(costs[1:], key=lambda s: s.bytes)
    assert len(inter) >= 3 and inter[0].bytes < inter[-1].bytes
    room = costs[0].bytes + inter[0].bytes + inter[1].bytes          # the two cheapest fit, no more
    share = 8
    monkeypatch.setenv("DTENSOR_VERIFY_SHARE_DEVICE", str(share))
    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", str(int(room / alpha_budget.FRACTION * share) + share))
    # Without shared slopes (alpha_budget.plan_starts shares where per-row slopes do not fit).
    res = _run(dv.AlphaOptions(iterations=3, patience=100, share_alphas=False))
    assert set(res.alphas) - {g.output_name} == {inter[0].name, inter[1].name}
    assert (res.lower >= res.crown_lower).all()
    _sound(res.lower)
    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", str(1 << 50))
    res = _run(dv.AlphaOptions(iterations=3, patience=100))
    assert set(res.alphas) - {g.output_name} == {s.name for s in inter}


def test_budget_on_the_vit_models():
    """vit_2023's ibp_3_3_8 (every softmax difference a start node: ~780 GB estimated) keeps only
    some start nodes on an eighth of an 80 GB GPU; pgd_2_3_16 (~2 GB) keeps all of them."""
    from dtensor_verify.methods import alpha_budget

    root = mz.benchmarks_dir() / "vit_2023" / "onnx"
    for name, keep_all in (("pgd_2_3_16", True), ("ibp_3_3_8", False)):
        g = dv.load(root / f"{name}.onnx.gz").graph
        rows = {n: range(g[n].numel) for n in g.preactivation_nodes() if not g.affine_from_input(n)}
        kept, total, budget = alpha_budget.fit_starts(g, rows, 9, 1, torch.device("cuda"),
                                                      free_bytes=lambda d: (80 << 30) // 8)
        assert total <= budget
        assert (len(kept) == len(rows)) == keep_all, (name, len(kept), len(rows))
        assert kept, name


@pytest.mark.parametrize("name", ["exp", "reciprocal", "sigmoid", "tanh", "sin", "gelu", "leaky", "sign", "log"])
def test_activation_alpha_lines_in_one_pass_are_the_per_side_lines(name):
    """ActivationOp's one-pass lines for a plain [4, B, K, *S] alpha (ops/activation.py
    `_alpha_lines`) give bitwise the A-matrices, biases and slope gradients of the per-side path
    (taken for a list of four slopes), for both sides and for one side alone."""
    from test_ops_activations import FUNCS, _intervals

    from dtensor_verify.ops.activation import ActivationOp

    fn, kind = FUNCS[name]
    op = ActivationOp("a", fn)
    fast = []
    one_pass = op._alpha_lines
    op._alpha_lines = lambda *a: fast.append(1) or one_pass(*a)
    lo, hi = (t.float().reshape(1, 2, 16) for t in _intervals(kind, 32, 3))
    gen = torch.Generator().manual_seed(5)
    lA, uA = torch.randn(1, 3, 2, 16, generator=gen), torch.randn(1, 3, 2, 16, generator=gen)
    t0 = torch.rand(4, 1, 3, 2, 16, generator=gen)
    for sides in ((lA, uA), (lA, None), (None, uA)):
        outs = []
        for as_list in (False, True):
            t = t0.clone().requires_grad_(True)
            res = op.backward(*sides, [(lo, hi)], alpha=list(t.unbind(0)) if as_list else t)
            loss = sum(a.sum() for a in res.input_A[0] if a is not None)
            loss = loss + sum(b.sum() for b in (res.lbias, res.ubias) if isinstance(b, torch.Tensor))
            loss.backward()
            outs.append(([a for a in res.input_A[0]], res.lbias, res.ubias, t.grad))
        assert len(fast) == 1                       # the tensor took the one-pass path, the list did not
        fast.clear()
        (a1, l1, u1, g1), (a2, l2, u2, g2) = outs
        for x, y in zip(a1 + [l1, u1, g1], a2 + [l2, u2, g2]):
            assert (x is None and y is None) or torch.equal(torch.as_tensor(x), torch.as_tensor(y)), name


def test_verdict_pipeline_stops_alpha_once_proved():
    """The pipeline hands the spec's d to alpha-CROWN: a property CROWN leaves open and a few
    alpha steps prove is `unsat` by alpha-crown after fewer steps than allowed."""
    from dtensor_verify.methods.alpha_crown import alpha_crown as run_alpha
    from dtensor_verify.specs import parse_vnnlib
    from dtensor_verify.verify import verify_instance

    net, shape = mz.random_mlp([2, 24, 24, 2], seed=11)
    m = dv.load(net, input_shape=shape)
    box = (-torch.ones(1, 2), torch.ones(1, 2))
    C = torch.tensor([[[1.0, 0.0]]])
    full = run_alpha(m.graph, box, C, opts=dv.AlphaOptions(iterations=40, patience=100), want_upper=False)
    crown_lo, alpha_lo = float(full.crown_lower), float(full.lower)
    assert alpha_lo > crown_lo + 1e-3, (crown_lo, alpha_lo)
    t = crown_lo + 0.5 * (alpha_lo - crown_lo)
    text = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
            "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
            f"(assert (<= Y_0 {t!r}))\n")
    res = verify_instance(m, parse_vnnlib(text, n_inputs=2, n_outputs=2), None, timeout=60, attack=False, bab=False,
                          alpha_options=dv.AlphaOptions(iterations=40, patience=100))
    assert (res.verdict, res.decided_by) == ("unsat", "alpha-crown")
    steps = res.bounds["alpha-crown"]["iterations"]
    assert 1 <= sum(steps) < 40, steps


def test_crown_rows_per_sweep_from_the_share(monkeypatch):
    """alpha-CROWN's CROWN start: no row limit on an unshared CPU; with a (fake) device share, the
    rows that fit it (at least 1)."""
    from dtensor_verify.methods.alpha_budget import crown_max_rows

    g = _case()["m"].graph
    monkeypatch.delenv("DTENSOR_VERIFY_DEVICE_BYTES", raising=False)
    monkeypatch.delenv("DTENSOR_VERIFY_SHARE_DEVICE", raising=False)
    assert crown_max_rows(g, 2, torch.device("cpu")) is None
    # half of 46,080 B over 6 A-matrices (CROWN_COPIES) x 4 B x batch 2 x 24 (the widest node) per row: 20 rows
    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", str(46080))
    assert crown_max_rows(g, 2, torch.device("cpu")) == 20
    monkeypatch.setenv("DTENSOR_VERIFY_DEVICE_BYTES", "1")
    assert crown_max_rows(g, 2, torch.device("cpu")) == 1


def test_max_seconds_stops_the_optimisation_and_keeps_sound_bounds():
    """`max_seconds`: a call stops after its share of the time (the pipeline's cap when branch and
    bound follows, BabOptions.alpha_time_fraction): no joint phase once past it, one step at most
    per phase begun, the best bounds so far (never looser than CROWN, sound)."""
    c = _case()
    opts = dv.AlphaOptions(iterations=10, warmup=5, patience=100)
    full = _run(opts)
    assert full.iterations == 15
    capped = _run(dv.AlphaOptions(iterations=10, warmup=5, patience=100, max_seconds=0.0))
    assert capped.iterations == 1                   # the warm-up's first step, then nothing
    assert set(capped.alphas) == {c["m"].graph.output_name}
    assert (capped.lower >= capped.crown_lower).all()
    _sound(capped.lower)
    roomy = _run(dv.AlphaOptions(iterations=10, warmup=5, patience=100, max_seconds=600.0))
    assert roomy.iterations == 15 and torch.equal(roomy.lower, full.lower)


def test_the_pipeline_caps_alpha_only_when_branch_and_bound_follows():
    """`alpha_time_share`: fraction x limit when ReLU / general BaB follows; nothing without BaB,
    with input splitting, without alpha-CROWN, with no fraction; a cap the caller set stays."""
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.verify.pipeline import PipelineOptions, alpha_time_share

    bab = BabOptions()
    assert bab.alpha_time_fraction == 0.3
    got = alpha_time_share(PipelineOptions(), bab, 100.0)
    assert got.max_seconds == pytest.approx(30.0) and got.iterations == 100     # verdict_options()'s steps
    assert alpha_time_share(PipelineOptions(bab=False), bab, 100.0) is None
    assert alpha_time_share(PipelineOptions(input_split=True), bab, 100.0) is None
    assert alpha_time_share(PipelineOptions(methods=("crown",)), bab, 100.0) is None
    assert alpha_time_share(PipelineOptions(), BabOptions(alpha_time_fraction=None), 100.0) is None
    mine = dv.AlphaOptions(iterations=7, max_seconds=3.0)
    assert alpha_time_share(PipelineOptions(alpha_options=mine), bab, 100.0) is mine
    assert alpha_time_share(PipelineOptions(alpha_options=dv.AlphaOptions(iterations=7)), bab, 10.0).max_seconds == 3.0


def test_a_tiny_share_cuts_the_pipelines_alpha_steps_and_the_verdict_stays():
    """End to end: with a share of ~0 of the limit the alpha-CROWN stage takes one step (against
    more without a cap) and branch and bound still decides the same."""
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.specs import parse_vnnlib
    from dtensor_verify.verify import verify_instance

    net, shape = mz.random_mlp([3, 30, 30, 30, 1], seed=5)
    model = dv.load(net, input_shape=shape)
    x = torch.rand(20000, 3) * 2 - 1
    with torch.no_grad():
        t = float(net(x).min()) - 0.1
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(3))
    prop = parse_vnnlib(text + f"(declare-const Y_0 Real)\n(assert (<= Y_0 {t!r}))\n", n_inputs=3, n_outputs=1)
    runs = {}
    for frac in (1e-9, None):
        res = verify_instance(model, prop, None, timeout=120, attack=False,
                              bab_options=BabOptions(split="relu", alpha_time_fraction=frac))
        runs[frac] = res
        assert res.verdict == "unsat", (frac, res.verdict, res.message)
    alpha_steps = {f: sum(r.bounds["alpha-crown"]["iterations"]) for f, r in runs.items()}
    assert alpha_steps[1e-9] == 1 and alpha_steps[None] > 1, alpha_steps
    assert runs[1e-9].verdict == runs[None].verdict == "unsat"
    assert runs[1e-9].decided_by == "bab"
