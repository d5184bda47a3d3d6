"""LayerNorm's product c * r with the coupling of c and r (ops/layernorm_product.py): the box and
the planes hold on sampled, vertex, near-extreme and PGD-attacked layer-normalised points, for
CROWN's planes and random alpha weights; they are tighter than McCormick's on average; and the
networks' bounds (every method) stay sound with it (tests/test_layernorm.py runs them)."""
from __future__ import annotations

import pytest
import torch

from dtensor_verify.ops.layernorm_product import LayerNormProductOp, staircase
from dtensor_verify.ops.products import MulOp

EPS = 1e-5


def _box(seed, groups=2, n=5, spread=1.0, radius=0.3):
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, groups, n, generator=gen, dtype=torch.float64) * spread
    rad = torch.rand(1, groups, n, generator=gen, dtype=torch.float64) * radius
    return centre - rad, centre + rad


def _sound_bounds(xl, xu):
    """Sound bounds of c = x - mean(x) (exact) and of r = rsqrt(mean(c^2) + eps) on the box."""
    n = xl.shape[-1]
    lc = xl - (xl + xu.sum(-1, keepdim=True) - xu) / n       # (1 - 1/n) x_i - 1/n sum_{j != i} x_j
    uc = xu - (xu + xl.sum(-1, keepdim=True) - xl) / n
    dist = torch.maximum(torch.maximum(lc, -uc), torch.zeros_like(lc))
    far = torch.maximum(lc.abs(), uc.abs())
    return (lc, uc), (torch.rsqrt((far ** 2).mean(-1, keepdim=True) + EPS),
                      torch.rsqrt((dist ** 2).mean(-1, keepdim=True) + EPS))


def _parts(x):
    c = x - x.mean(-1, keepdim=True)
    return c, torch.rsqrt((c * c).mean(-1, keepdim=True) + EPS)


def _points(xl, xu, n_pts, seed):
    """Uniform points, vertices, and points with one entry at an end and the others near one value."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n_pts, *xl.shape[1:])
    t = torch.rand(shape, generator=gen, dtype=xl.dtype)
    t[: n_pts // 3] = t[: n_pts // 3].round()
    q = n_pts // 3
    t[q:2 * q] = 0.5 + 0.01 * (t[q:2 * q] - 0.5)
    k = torch.randint(0, xl.shape[-1], (q,), generator=gen)
    t[q + torch.arange(q), :, k] = torch.randint(0, 2, (q, xl.shape[1]), generator=gen, dtype=xl.dtype)
    return xl + (xu - xl) * t


def _op(groups, n):
    op = LayerNormProductOp("p", (2,), EPS)
    op.out_shape, op.in_shapes = (groups, n), [(groups, n), (groups, 1)]
    return op


def _linear(res, side, c, r):
    """The bound's value at points: A_c . c + A_r . r + bias, [P, K]."""
    Ac, Ar = res.input_A[0][side][0], res.input_A[1][side][0]
    bias = (res.lbias if side == 0 else res.ubias)[0]
    return torch.einsum("kgn,pgn->pk", Ac, c) + torch.einsum("kgn,pgn->pk", Ar, r) + bias


def _check(op, bounds, A, alpha, x):
    c, r = _parts(x)
    exact = torch.einsum("kgn,pgn->pk", A[0], c * r)
    res = op.backward(A, A, list(bounds), alpha=alpha)
    lower, upper = _linear(res, 0, c, r), _linear(res, 1, c, r)
    return (lower - exact).max(), (exact - upper).max()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [False, True])
def test_planes_hold_on_sampled_points(seed, alpha):
    spread, radius = (1.0, 0.3) if seed % 2 else (0.3, 1.0)       # coupling binding strongly / mildly
    xl, xu = _box(seed, spread=spread, radius=radius)
    bounds = _sound_bounds(xl, xu)
    op = _op(*xl.shape[1:])
    gen = torch.Generator().manual_seed(seed + 100)
    A = torch.randn(1, 7, *xl.shape[1:], generator=gen, dtype=xl.dtype)
    al = torch.rand(4, 1, 7, *xl.shape[1:], generator=gen, dtype=xl.dtype) if alpha else None
    worst_lo, worst_up = _check(op, bounds, A, al, _points(xl, xu, 3000, seed))
    assert worst_lo <= 1e-9 and worst_up <= 1e-9, (worst_lo, worst_up)


@pytest.mark.parametrize("seed", range(4))
def test_planes_hold_under_attack(seed):
    """PGD on the input box maximising each row's violation of its lower and upper plane sums."""
    xl, xu = _box(seed, spread=1.0 if seed % 2 else 0.3, radius=0.3 if seed % 2 else 1.0)
    bounds = _sound_bounds(xl, xu)
    op = _op(*xl.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(1, 4, *xl.shape[1:], generator=gen, dtype=xl.dtype)
    res = op.backward(A, A, list(bounds))
    x = _points(xl, xu, 64, seed + 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05 * float((xu - xl).max()))
    for _ in range(60):
        c, r = _parts(x)
        exact = torch.einsum("kgn,pgn->pk", A[0], c * r)
        viol = torch.cat([_linear(res, 0, c, r) - exact, exact - _linear(res, 1, c, r)], 1)
        opt.zero_grad()
        (-viol.sum()).backward()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.minimum(torch.maximum(x, xl), xu))
    assert viol.max() <= 1e-9, float(viol.max())


@pytest.mark.parametrize("seed", range(4))
def test_box_holds_and_is_inside_mccormicks(seed):
    xl, xu = _box(seed, spread=1.0, radius=0.5)
    (lc, uc), (lr, ur) = _sound_bounds(xl, xu)
    op = _op(*xl.shape[1:])
    lo, up = op.ibp((lc, uc), (lr, ur))
    c, r = _parts(_points(xl, xu, 3000, seed))
    n = c * r
    assert (n >= lo - 1e-12).all() and (n <= up + 1e-12).all()
    mlo, mup = _op_mul(xl.shape[1:]).ibp((lc, uc), (lr, ur))
    assert (lo >= mlo - 1e-12).all() and (up <= mup + 1e-12).all() and ((up - lo) < (mup - mlo)).any()


def _op_mul(shape):
    op = MulOp("m")
    op.out_shape, op.in_shapes = tuple(shape), [tuple(shape), (shape[0], 1)]
    return op


def test_tighter_than_mccormick_on_average():
    """Mean gap (exact - lower plane sum, upper - exact) over sampled points, CROWN's planes."""
    ours, theirs = [], []
    for seed in range(6):
        xl, xu = _box(seed, spread=1.0, radius=0.3)
        bounds = list(_sound_bounds(xl, xu))
        x = _points(xl, xu, 500, seed)
        c, r = _parts(x)
        A = torch.randn(1, 6, *xl.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=xl.dtype)
        exact = torch.einsum("kgn,pgn->pk", A[0], c * r)
        for op, out in ((_op(*xl.shape[1:]), ours), (_op_mul(xl.shape[1:]), theirs)):
            res = op.backward(A, A, bounds)
            out.append(float((exact - _linear(res, 0, c, r)).mean() + (_linear(res, 1, c, r) - exact).mean()))
    assert sum(ours) < 0.9 * sum(theirs), (ours, theirs)


def test_staircase_covers_the_feasible_set():
    """Every sampled (c_i, r) lies in one of the staircase's small boxes."""
    xl, xu = _box(3, spread=1.0, radius=0.4)
    (lc, uc), (lr, ur) = _sound_bounds(xl, xu)
    st = staircase(lc, uc, lr.expand_as(lc), ur.expand_as(lc), (2,), EPS, pieces=4)
    c, r = _parts(_points(xl, xu, 2000, 3))
    r = r.expand_as(c)
    m = st.c.shape[0] // 4                       # corners: [a, a, b, b] x [r_lo, r_hi, r_lo, r_hi]
    a, b, r_lo, r_hi = st.c[:m, 0], st.c[2 * m:3 * m, 0], st.r[:m, 0], st.r[m:2 * m, 0]
    inside = ((c[:, None] >= a[None] - 1e-12) & (c[:, None] <= b[None] + 1e-12)
              & (r[:, None] >= r_lo[None] - 1e-12) & (r[:, None] <= r_hi[None] + 1e-12)).any(1)
    assert inside.all()
    assert (r_hi < ur).any()                     # the coupling cuts corners off the box


def test_coupling_holds_and_is_attained():
    """r <= rho_hi(c_i) and r >= rho_lo(c_i) at every point; rho_hi attained where the others are
    equal (x = t e_i)."""
    from dtensor_verify.ops.layernorm_product import coupling

    n = 6
    xl, xu = -torch.ones(1, 1, n, dtype=torch.float64), torch.ones(1, 1, n, dtype=torch.float64)
    (lc, uc), _ = _sound_bounds(xl, xu)
    rho_lo, rho_hi = coupling(lc, uc, (2,), n, EPS, 0.0)
    t = torch.linspace(-1, 1, 41, dtype=torch.float64)
    x = torch.zeros(41, 1, n, dtype=torch.float64)
    x[:, 0, 0] = t
    pts = torch.cat([x, _points(xl, xu, 2000, 0)])
    c, r = _parts(pts)
    hi, lo = rho_hi(c), rho_lo(c)
    assert (r <= hi * (1 + 1e-12)).all() and (r >= lo * (1 - 1e-12)).all()
    assert torch.allclose(r[:41, 0, 0], hi[:41, 0, 0], rtol=1e-9)        # attained


def test_unbounded_r_is_handled():
    """r's bounds [0, inf] (a variance bound reaching -eps): the coupling still bounds r, the
    planes and the box are finite and hold on sampled points."""
    xl, xu = _box(7, spread=1.0, radius=0.3)
    (lc, uc), (lr, ur) = _sound_bounds(xl, xu)
    bounds = ((lc, uc), (torch.zeros_like(lr), torch.full_like(ur, float("inf"))))
    op = _op(*xl.shape[1:])
    A = torch.randn(1, 5, *xl.shape[1:], generator=torch.Generator().manual_seed(7), dtype=xl.dtype)
    x = _points(xl, xu, 2000, 7)
    worst_lo, worst_up = _check(op, bounds, A, None, x)
    assert worst_lo <= 1e-9 and worst_up <= 1e-9
    lo, up = op.ibp(*bounds)
    c, r = _parts(x)
    assert torch.isfinite(lo).all() and torch.isfinite(up).all()
    assert (c * r >= lo - 1e-12).all() and (c * r <= up + 1e-12).all()
