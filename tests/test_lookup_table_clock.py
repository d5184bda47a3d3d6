"""The lookup table's lines in an alpha-CROWN step (issue 21): on ml4acopf's 300-bus prop2 one
step evaluated the table's K ReLUs at K + 2 candidates of every (row, neuron) at once
([..., K + 2, K] float64 temporaries: 24 GB, OOM-killed, no clock check for minutes). The lines
now scan the candidates one at a time with a clock check between them, evaluating f per segment:
the same exact intercepts, touching points that attain them, and a passed limit stops the scan."""
from __future__ import annotations

import pytest
import torch

from dtensor_verify import deadline
from dtensor_verify.errors import TimeLimitReached
from dtensor_verify.layout import DEFAULT_LAYOUT
from dtensor_verify.ops import lookup_table as lt
from dtensor_verify.ops.activation import ActivationOp


def _table(k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, generator=gen, dtype=torch.float64) * 3, torch.randn(k, generator=gen, dtype=torch.float64)


def _box(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    l = torch.randn(1, 1, n, generator=gen, dtype=torch.float64) * 4
    return l, l + torch.rand(1, 1, n, generator=gen, dtype=torch.float64) * 6


class _Clock:
    """A clock that passes its limit after `checks` checks (counted)."""

    def __init__(self, checks):
        self.n, self.checks = 0, checks

    def left(self):
        return 1e9 if self.n < self.checks else 0.0

    def check(self):
        self.n += 1
        if self.n > self.checks:
            raise TimeLimitReached()


def test_lines_check_the_clock_between_candidates(monkeypatch):
    """A limit that passes while one op's lines are computed stops them: the old rule evaluated
    every candidate in one call and never asked the clock. (Blocks of 2 candidates here, as an
    alpha sweep's [4, B, rows, n] slopes get on ml4acopf's 300-bus model.)"""
    fn = lt.LookupTable(*_table(55))
    l, u = _box(300)
    k = torch.randn(4, 1, 7, 300, dtype=torch.float64)
    monkeypatch.setattr(lt, "SCAN_ELEMENTS", 2 * k.numel())
    fn.intercepts(k, l, u)                                     # no deadline: no check, no error
    clock = _Clock(checks=3)
    with deadline.checking(clock.check, clock.left, DEFAULT_LAYOUT), pytest.raises(TimeLimitReached):
        fn.intercepts(k, l, u)
    assert clock.n == 4, clock.n
    clock = _Clock(checks=3)
    with deadline.checking(clock.check, clock.left, DEFAULT_LAYOUT), pytest.raises(TimeLimitReached):
        fn.touch_points(k, l, u, True)


@pytest.mark.parametrize("seed,block", [(0, 1 << 21), (1, 1 << 21), (0, 1), (1, 2000)])
def test_scan_is_exact_and_touches(seed, block, monkeypatch):
    """Intercepts equal the table's own arithmetic at every candidate (old rule); each touching
    point attains its intercept (the envelope gradient of alpha-CROWN is a true minimiser's);
    whatever the blocks of candidates (all at once, one at a time, a few)."""
    monkeypatch.setattr(lt, "SCAN_ELEMENTS", block)
    o, w = _table(21, seed)
    fn = lt.LookupTable(o, w)
    l, u = _box(200, seed + 5)
    k = torch.randn(4, 1, 3, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    pts = torch.cat([l.unsqueeze(-1), u.unsqueeze(-1), torch.minimum(torch.maximum(o.sort().values, l.unsqueeze(-1)),
                                                                      u.unsqueeze(-1))], -1)
    vals = lt.relu_lookup(pts, o, w) - k.unsqueeze(-1) * pts
    lo, hi = fn.intercepts(k, l, u)
    assert torch.allclose(lo, vals.min(-1).values, atol=1e-10) and torch.allclose(hi, vals.max(-1).values, atol=1e-10)
    is_lower = (torch.arange(4) % 2 == 0).view(4, 1, 1, 1)
    x = fn.touch_points(k, l, u, is_lower)
    assert ((x >= l - 1e-12) & (x <= u + 1e-12)).all()
    attained = lt.relu_lookup(x, o, w) - k * x
    assert torch.allclose(attained, torch.where(is_lower, lo, hi), atol=1e-10)


def test_alpha_lines_keep_their_gradient():
    """The alpha lines of the lookup table through `touch_points`: the intercept's gradient in the
    slope parameter equals the generic candidate rule's (same lines, same gradients)."""
    o, w = _table(15, 3)
    fn = lt.LookupTable(o, w)

    class Plain(lt.LookupTable):          # the generic candidate path (no touch_points)
        def __getattribute__(self, name):
            if name == "touch_points":
                raise AttributeError(name)
            return super().__getattribute__(name)

    plain = Plain(o, w)
    assert not hasattr(plain, "touch_points") and hasattr(fn, "touch_points")
    l, u = _box(40, 7)
    op, op_plain = ActivationOp("t", fn), ActivationOp("t", plain)
    grads = []
    for o_ in (op, op_plain):
        alpha = torch.rand(4, 1, 5, 40, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        lines = o_._alpha_lines(l, u, alpha, [0, 1], torch.float32)
        sum(b.sum() for side in lines.values() for b in (side[1], side[3])).backward()
        grads.append(alpha.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5), (grads[0] - grads[1]).abs().max()


def test_lines_cost_does_not_grow_with_the_table_squared(monkeypatch):
    """The per-segment f: one evaluation reads no [..., K] temporary (the table's own arithmetic
    would, at every one of the K + 2 candidates)."""
    fn = lt.LookupTable(*_table(400))
    seen = []
    real = torch.relu

    def spy(x, *a, **kw):
        seen.append(x.numel())
        return real(x, *a, **kw)
    monkeypatch.setattr(torch, "relu", spy)
    l, u = _box(50)
    fn.intercepts(torch.zeros(2, 1, 3, 50, dtype=torch.float64), l, u)
    assert not seen, seen[:3]


def test_all_breakpoints_give_the_same_lines(monkeypatch):
    """The breakpoints outside [min l, max u] change nothing (a GPU keeps them all, not to wait
    for the device): the lines with every breakpoint equal those with the inside ones."""
    fn = lt.LookupTable(*_table(30, 4))
    l, u = _box(100, 9)
    l, u = l * 0.2, l * 0.2 + (u - l) * 0.1          # a narrow range: most breakpoints outside
    k = torch.randn(2, 1, 3, 100, dtype=torch.float64)
    inside = fn.intercepts(k, l, u)
    assert fn._inside(l, u).numel() < 30
    monkeypatch.setattr(lt.LookupTable, "_inside", lambda self, l, u: self.o.to(l))
    every = fn.intercepts(k, l, u)
    assert torch.equal(inside[0], every[0]) and torch.equal(inside[1], every[1])


def test_intercepts_gradient_in_the_bounds():
    """Intercepts of bounds that carry a gradient (alpha-CROWN's intermediate bounds): the same
    values and gradients in l, u and k as the table's arithmetic at every candidate under
    autograd (the old rule), without keeping the scan's temporaries."""
    o, w = _table(17, 6)
    fn = lt.LookupTable(o, w)
    l0, u0 = _box(60, 11)
    k0 = torch.randn(2, 1, 3, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weights = torch.randn(2, 2, 1, 3, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = []
    for rule in ("scan", "table"):
        l, u, k = (t.clone().requires_grad_(True) for t in (l0, u0, k0))
        if rule == "scan":
            lo, hi = fn.intercepts(k, l, u)
        else:
            pts = torch.cat([l.unsqueeze(-1), u.unsqueeze(-1), torch.minimum(torch.maximum(o, l.unsqueeze(-1)),
                                                                              u.unsqueeze(-1))], -1)
            vals = lt.relu_lookup(pts, o, w) - k.unsqueeze(-1) * pts
            lo, hi = vals.min(-1).values, vals.max(-1).values
        ((lo * weights[0]).sum() + (hi * weights[1]).sum()).backward()
        grads.append((lo.detach(), hi.detach(), l.grad, u.grad, k.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-9), (a - b).abs().max()
