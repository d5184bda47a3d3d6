"""The time limit inside long bound steps (dtensor_verify/deadline.py, issue 21): a small
attention + ReLU network whose activation steps are made slow (a monkeypatched sleep, standing for
a ViT's wide softmax sweeps) must end within a fraction of a second of the limit: in CROWN's
intermediate passes, in alpha-CROWN's steps (their forward sweeps and their backward pass), and
in the verdict pipeline. Without the checks the same run would overrun by seconds (measured here
from the number of slow steps, not assumed)."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import dtensor_verify as dv
from dtensor_verify import deadline
from dtensor_verify.errors import TimeLimitReached
from dtensor_verify.methods import alpha_crown
from dtensor_verify.methods.crown import crown
from dtensor_verify.ops import activation
from op_checks import attained


class _Block(nn.Module):
    """One attention block over 3 tokens of width 4 (softmax: Exp / Reciprocal steps), then a
    ReLU MLP: a transformer in miniature."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 3)

    def forward(self, x):                      # x [3, 4]
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) * 0.5, dim=-1)
        return self.fc2(torch.relu(self.fc1((att @ self.v(x)).flatten(1))))


_CACHE: dict = {}


def _model():
    if not _CACHE:
        net = _Block().eval()
        m = dv.load(net, input_shape=(3, 4))
        x0 = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(1))
        _CACHE.update(net=net, m=m, box=(x0 - 0.3, x0 + 0.3))
    return _CACHE


class _Clock:
    def __init__(self, seconds):
        self.end = time.perf_counter() + seconds

    def left(self):
        return self.end - time.perf_counter()

    def check(self):
        if self.left() <= 0:
            raise TimeLimitReached()


class _Calls:
    """Counts (and optionally slows) the activation ops' backward steps."""

    def __init__(self, monkeypatch, sleep=0.0):
        self.n, self.sleep = 0, sleep
        original = activation.ActivationOp.backward

        def slow(op, *args, **kwargs):
            self.n += 1
            if self.sleep:
                time.sleep(self.sleep)
            return original(op, *args, **kwargs)
        monkeypatch.setattr(activation.ActivationOp, "backward", slow)


def test_crown_stops_at_the_deadline(monkeypatch, one_thread):
    """CROWN's intermediate passes check the deadline at each op of a sweep: with 12 or more slow
    steps of 0.2 s (2.4 s or more unchecked) and a 0.5 s limit it stops within a step of the limit."""
    from dtensor_verify.layout import DEFAULT_LAYOUT

    c = _model()
    calls = _Calls(monkeypatch)
    crown(c["m"].graph, c["box"])
    assert calls.n >= 12, calls.n                   # the unchecked pass: calls.n slow steps
    calls.n, calls.sleep = 0, 0.2
    clock = _Clock(0.5)
    t0 = time.perf_counter()
    with deadline.checking(clock.check, clock.left, DEFAULT_LAYOUT), pytest.raises(TimeLimitReached):
        crown(c["m"].graph, c["box"])
    took = time.perf_counter() - t0
    assert took < 0.5 + 0.2 + 0.6, took              # a slowed step, then the next check (load)
    assert calls.n <= 4, calls.n


def test_without_a_deadline_nothing_changes(monkeypatch, one_thread):
    """No deadline set (the API, branch and bound): no check raises, bounds as before."""
    c = _model()
    lo1, up1, _ = crown(c["m"].graph, c["box"])
    assert deadline.current() is None and not deadline.ends_within(1e9)
    deadline.check()
    deadline.check_fine()
    lo2, up2, _ = crown(c["m"].graph, c["box"])
    assert torch.equal(lo1, lo2) and torch.equal(up1, up2)


def test_alpha_step_backward_pass_checks_the_deadline(monkeypatch, one_thread):
    """An alpha-CROWN step whose backward pass is the slow part (a slow slope gradient), the limit
    passing as that pass begins: a gradient hook stops it inside the pass (not at the next step),
    the error is the clock's (a `timeout`, never a verdict)."""
    from dtensor_verify.layout import DEFAULT_LAYOUT
    from dtensor_verify.ops import relu

    c = _model()
    original = relu.AlphaRelaxedA.backward
    clock = _Clock(1e9)
    passed = []

    def slow_backward(ctx, grad):
        if not passed:
            clock.end = time.perf_counter()             # the limit passes now
            passed.append(clock.end)
        time.sleep(0.6)
        return original(ctx, grad)
    monkeypatch.setattr(relu.AlphaRelaxedA, "backward", staticmethod(slow_backward))
    opts = dv.AlphaOptions(iterations=10, patience=100, warmup=0)
    with deadline.checking(clock.check, clock.left, DEFAULT_LAYOUT), pytest.raises(TimeLimitReached) as info:
        alpha_crown(c["m"].graph, c["box"], opts=opts, want_upper=False)
    late = time.perf_counter() - passed[0]
    # Raised by a gradient hook, inside the step's backward pass (torch's `backward` on the stack).
    assert any(e.name == "backward" and "torch" in str(e.path) for e in info.traceback), \
        [(e.name, str(e.path)[-40:]) for e in info.traceback]
    assert late < 0.6 + 1.0, late                       # the slow gradient, then the next hook


def test_alpha_does_not_start_a_step_it_cannot_finish(monkeypatch, one_thread):
    """6 s left and room for 200 steps: the loop stops before a step that would end past the
    limit, with bounds (sound, never looser than CROWN) instead of a time-out."""
    from dtensor_verify.layout import DEFAULT_LAYOUT

    c = _model()
    clock = _Clock(6.0)
    opts = dv.AlphaOptions(iterations=200, patience=1000, warmup=0)
    with deadline.checking(clock.check, clock.left, DEFAULT_LAYOUT):
        res = alpha_crown(c["m"].graph, c["box"], opts=opts, want_upper=False)
    assert clock.left() > 0, clock.left()
    assert 1 <= res.iterations < 200
    assert (res.lower >= res.crown_lower).all()
    net, (lo, hi) = c["net"], c["box"]
    ymin, _ = attained(lambda x: net(x), lo, hi, n=1000)
    assert (res.lower <= ymin + 1e-5).all()


def test_pipeline_ends_at_the_limit(monkeypatch, one_thread):
    """verify_instance with slow softmax steps: `timeout` within a fraction of a second of a 1 s
    limit, where the unchecked CROWN stage alone would take 2.4 s or more."""
    from dtensor_verify.specs import parse_vnnlib
    from dtensor_verify.verify import verify_instance

    c = _model()
    lo, hi = (t.flatten().tolist() for t in c["box"])
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(12))
    text += "".join(f"(declare-const Y_{i} Real)\n" for i in range(3))
    text += "".join(f"(assert (>= X_{i} {a!r}))\n(assert (<= X_{i} {b!r}))\n" for i, (a, b) in enumerate(zip(lo, hi)))
    text += "(assert (>= Y_0 1000.0))\n"           # never attained: only bounds could decide it
    prop = parse_vnnlib(text, n_inputs=12, n_outputs=3)
    calls = _Calls(monkeypatch, sleep=0.2)
    t0 = time.perf_counter()
    res = verify_instance(c["m"], prop, None, timeout=1.0, attack=False, bab=False)
    took = time.perf_counter() - t0
    assert res.verdict == "timeout", (res.verdict, res.message)
    assert took < 1.0 + 0.2 + 0.8, took              # unchecked: 2.4 s or more
    assert calls.n <= 8, calls.n                    # a CROWN pass alone has >= 12 such steps


def test_cpu_sweeps_in_short_chunks_under_a_deadline(monkeypatch, one_thread):
    """Under a deadline on a CPU, wide sweeps go in row chunks (the checks between ops come often):
    more sweeps, the same bounds (rows are independent); none without a deadline."""
    import importlib

    from dtensor_verify.layout import DEFAULT_LAYOUT

    crown_module = importlib.import_module("dtensor_verify.methods.crown")
    c = _model()
    assert deadline.sweep_rows(100, 1, torch.device("cpu")) is None
    lo1, up1, _ = crown(c["m"].graph, c["box"])
    sweeps = []
    real = crown_module.backward_bound

    def counted(*a, **k):
        sweeps.append(1)
        return real(*a, **k)
    monkeypatch.setattr(crown_module, "backward_bound", counted)
    crown(c["m"].graph, c["box"])
    plain = len(sweeps)
    sweeps.clear()
    monkeypatch.setattr(deadline, "CPU_SWEEP_ELEMENTS", 64)
    clock = _Clock(600.0)
    with deadline.checking(clock.check, clock.left, DEFAULT_LAYOUT):
        assert deadline.sweep_rows(16, 1, torch.device("cpu")) == 4
        assert deadline.sweep_rows(8, 2, torch.device("cpu")) == 4
        assert deadline.sweep_rows(16, 1, torch.device("meta")) is None
        lo2, up2, _ = crown(c["m"].graph, c["box"])
    assert len(sweeps) > plain, (len(sweeps), plain)
    assert torch.allclose(lo1, lo2, atol=1e-5) and torch.allclose(up1, up2, atol=1e-5)


def test_row_pieces_of_one_op_check_the_clock():
    """One elementwise op run in row pieces (patches' windowed ReLU) checks the clock between
    pieces: on a shared H100, TinyYOLO's first ReLU step ran for minutes past a 60 s limit."""
    from dtensor_verify.layout import DEFAULT_LAYOUT
    from dtensor_verify.ops.base import BackwardResult
    from dtensor_verify.ops.row_pieces import in_row_pieces

    A = torch.randn(1, 64, 8)
    seen = []

    def run(part_l, part_u):
        seen.append(part_l.shape[1])
        time.sleep(0.05)
        return BackwardResult([(part_l, part_u)], torch.zeros(1, part_l.shape[1]), torch.zeros(1, part_l.shape[1]))

    whole = in_row_pieces(lambda l, u: BackwardResult([(l, u)], 0.0, 0.0), A, A, piece_elements=8)
    assert torch.equal(whole.input_A[0][0], A)                # no deadline: every piece, as before
    clock = _Clock(0.12)
    with deadline.checking(clock.check, clock.left, DEFAULT_LAYOUT), pytest.raises(TimeLimitReached):
        in_row_pieces(run, A, A, piece_elements=8)       # 64 pieces of one row
    assert 1 <= len(seen) < 64, len(seen)


def test_gate_search_begins_no_probe_it_cannot_finish(one_thread):
    """alpha-CROWN's closing gate search (ops/softmax_sum.search_gates) probes up to 7 output sweeps
    after the loop stopped for time: under load they ran past the limit (the clean-clone CI's
    TimeLimitReached in the test above). Now a probe is not begun within 1.5 of the last one's
    seconds of the limit, and the bounds so far are returned (never looser than given)."""
    from dtensor_verify.layout import DEFAULT_LAYOUT
    from dtensor_verify.ops import softmax_sum

    c = _model()
    graph = c["m"].graph
    res = alpha_crown(graph, c["box"], opts=dv.AlphaOptions(iterations=3, warmup=0), want_upper=False)
    gates = res.alphas[graph.output_name]
    if not softmax_sum.searchable(graph, gates):
        pytest.skip("no gates in this model's output alphas")
    clock = _Clock(1.0)
    probes = []

    def slow_probe():
        time.sleep(0.3)
        clock.check()                   # as a sweep's check_fine does
        probes.append(1)
        return res.lower - 1.0, None    # looser than given: the given bound must stay

    with deadline.checking(clock.check, clock.left, DEFAULT_LAYOUT):
        lo, up = softmax_sum.search_gates(graph, gates, slow_probe, res.lower, None)
    assert 1 <= len(probes) < 7 and clock.left() > 0
    assert torch.equal(lo, res.lower) and up is None
