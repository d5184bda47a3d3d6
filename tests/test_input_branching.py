"""Input splitting's choices (branching/input_sb.py, bab/budget.py, input_bab.pop_crowded): the
smart-split score floors each dimension's coefficient, the batch comes from the memory and the
network, and a crowded queue goes depth first instead of giving up."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import dtensor_verify as dv
from dtensor_verify.bab import BabOptions
from dtensor_verify.bab.budget import input_batch_size, input_bytes_per_domain
from dtensor_verify.bab.domains import INPUT_SPLIT, NO_DECISION, Domains, DomainStore
from dtensor_verify.bab.input_bab import pop_crowded
from dtensor_verify.specs import parse_vnnlib
from dtensor_verify.verify import verify_instance
from model_zoo import random_mlp
from proc_env import bench
from test_bab import root_problem

pytestmark = pytest.mark.usefixtures("one_thread")


def _domains(n, depth, margins, box=None):
    zeros = torch.zeros(n, dtype=torch.long)
    return Domains(pair=zeros.clone(), lower=margins.reshape(n, 1).clone(), bounds={}, signs={}, alphas={},
                   betas={}, depth=torch.as_tensor(depth), decision=torch.stack([zeros, zeros], 1), box=box)


def _sb(coeff, width):
    """input_sb's decision for one domain whose input A-matrix is `coeff` on a box of `width`."""
    input_sb = __import__("dtensor_verify.bab.branching.input_sb", fromlist=["input_sb"])
    lo = torch.zeros(1, len(width))
    dom = _domains(1, [0], torch.tensor([-1.0]), box=(lo, lo + torch.tensor([width])))
    ctx = SimpleNamespace(input_name="x", row_mask=torch.ones(1, 1, dtype=torch.bool), d=torch.zeros(1, 1))
    return input_sb.input_sb(dom, {"x": torch.tensor([[coeff]])}, ctx)[0].tolist()


def test_sb_floor_splits_a_wide_dimension_with_a_small_coefficient():
    # |A| x width: dim 0 scores 1 x 0.01 = 0.01, dim 1 1e-4 x 1 = 1e-4; with the floor (0.1 of the
    # largest coefficient) dim 1 scores 0.1 x 1 = 0.1 and is split (acasxu prop_1's heading).
    assert _sb([1.0, 1e-4], [0.01, 1.0]) == [INPUT_SPLIT, 1]
    assert _sb([1.0, 1e-4], [0.5, 1.0]) == [INPUT_SPLIT, 0]           # the coefficient still counts
    assert _sb([1.0, 1e-4], [0.0, 0.0]) == [NO_DECISION, NO_DECISION]  # nothing left to halve


def test_pop_crowded_takes_the_deepest_boxes_worst_first():
    store = DomainStore()
    store.push(_domains(5, [1, 7, 7, 3, 7], torch.tensor([-1.0, -0.5, -2.0, -9.0, 0.1])),
               torch.tensor([-1.0, -0.5, -2.0, -9.0, 0.1]))
    got, margins = pop_crowded(store, 2)
    assert got.depth.tolist() == [7, 7] and sorted(margins.tolist()) == [-2.0, -0.5]
    assert len(store) == 3 and sorted(store.margins.tolist()) == pytest.approx([-9.0, -1.0, 0.1])
    got, _ = pop_crowded(store, 10)
    assert len(got) == 3 and len(store) == 0 and pop_crowded(store, 1) == (None, None)


def test_input_batch_comes_from_memory_and_the_network():
    net, shape = random_mlp([5, 50, 50, 50, 5], seed=0)
    model = dv.load(net, input_shape=shape)
    problem, _ = root_problem(model, -torch.ones(1, 5), torch.ones(1, 5), torch.ones(1, 1, 5), torch.zeros(1, 1))
    per = input_bytes_per_domain(problem)
    assert 4 * 50 * 50 < per < 1_000_000, per
    opts = BabOptions()
    gpu = SimpleNamespace(type="cuda")
    assert input_batch_size(problem, opts, gpu, lambda d: 80 << 30) == opts.input_max_batch
    small = input_batch_size(problem, opts, gpu, lambda d: 100 * per)
    assert small == int(100 * per * opts.memory_fraction // (2 * per)) and small < 100
    assert input_batch_size(problem, opts, torch.device("cpu"), lambda d: 80 << 30) == opts.input_cpu_batch


def test_crowded_input_queue_goes_depth_first_and_still_decides(monkeypatch):
    """A queue limit far below what the search needs: the solver goes depth first once the queue
    is half full and still decides the instance (before, it stopped as unknown at the limit)."""
    from dtensor_verify.bab import input_bab, solver as solver_module

    calls = []
    monkeypatch.setattr(input_bab, "pop_crowded", lambda store, k: calls.append(k) or pop_crowded(store, k))
    net, shape = random_mlp([3, 64, 64, 2], seed=3)
    model = dv.load(net, input_shape=shape)
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(3))
    # y0 - y1 >= its minimum minus a little: true, but only fine sub-boxes prove it.
    with torch.no_grad():
        g = torch.linspace(-1, 1, 61)
        y = model.forward(torch.cartesian_prod(g, g, g))
    low = float((y[:, 0] - y[:, 1]).min()) - 0.01
    text += f"(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(assert (<= (- Y_0 Y_1) {low}))\n"
    prop = parse_vnnlib(text, n_inputs=3, n_outputs=2)
    opts = BabOptions(batch_size=4, split="input", max_domains=24)
    monkeypatch.setattr(solver_module.BabSolver, "_store_limit", lambda self, roots: 24)
    res = verify_instance(model, prop, None, timeout=60, attack=False, bab_options=opts)
    assert res.verdict == "unsat", (res.verdict, res.message, res.bounds.get("bab"))
    assert calls, "the crowded queue never went depth first"


@pytest.mark.slow
def test_acasxu_prop1_heading_is_split():
    """acasxu 2_7 prop_1 (a VNN-COMP 2023 timeout on one H100 before the coefficient floor): unsat
    on one CPU thread well inside its limit."""
    from dtensor_verify.specs import read_vnnlib

    model = dv.load(bench("acasxu_2023/onnx/ACASXU_run2a_2_7_batch_2000.onnx.gz"))
    prop = read_vnnlib(bench("acasxu_2023/vnnlib/prop_1.vnnlib.gz"), n_inputs=5, n_outputs=5)
    res = verify_instance(model, prop, None, timeout=60)
    assert res.verdict == "unsat", (res.verdict, res.message)


def test_fill_batch_splits_the_chosen_dimension_into_parts_that_cover_the_parent():
    from dtensor_verify.bab import split
    from dtensor_verify.bab.input_bab import fill_batch, with_boxes

    net, shape = random_mlp([3, 8, 2], seed=1)
    model = dv.load(net, input_shape=shape)
    lo, hi = torch.tensor([[-1.0, 0.0, 2.0]]), torch.tensor([[1.0, 0.5, 3.0]])
    problem, roots = root_problem(model, lo, hi, torch.tensor([[[1.0, -1.0]]]), torch.zeros(1, 1))
    roots = with_boxes(problem, roots)
    decision = torch.tensor([[INPUT_SPLIT, 2]])
    kids = fill_batch(split(roots, decision, problem.relus, problem.pre_of), decision, 17, problem)
    assert len(kids) == 16 and kids.depth.tolist() == [4] * 16
    klo, khi = kids.box
    assert torch.equal(klo[:, :2], lo[:, :2].expand(16, 2)) and torch.equal(khi[:, :2], hi[:, :2].expand(16, 2))
    edges = sorted(zip(klo[:, 2].tolist(), khi[:, 2].tolist()))
    assert edges[0][0] == 2.0 and edges[-1][1] == 3.0
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))         # no gap, no overlap
    assert all(abs((b - a) - 1 / 16) < 1e-6 for a, b in edges)
    assert len(fill_batch(split(roots, decision, problem.relus, problem.pre_of), decision, 3, problem)) == 2


def test_round_room_is_paced_by_the_time_left():
    from dtensor_verify.bab.input_bab import FIRST_ROUND_CHILDREN, room_this_round

    assert room_this_round(16384, None, 100.0) == FIRST_ROUND_CHILDREN       # nothing timed yet
    assert room_this_round(256, None, 100.0) == 512
    assert room_this_round(16384, 1e-5, 100.0) == 32768                     # fast: the whole batch
    assert room_this_round(16384, 1e-3, 10.0) == 2000                        # a fifth of 10 s
    assert room_this_round(16384, 1.0, 0.1) == 2


def test_processes_sharing_a_device_each_take_their_part(monkeypatch):
    import builtins
    import io

    from dtensor_verify.bab.budget import free_memory_bytes

    real_open = builtins.open
    fake = "MemTotal: 1000 kB\nMemAvailable: 800000 kB\n"
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: io.StringIO(fake) if f == "/proc/meminfo"
                        else real_open(f, *a, **k))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("DTENSOR_VERIFY_SHARE_DEVICE", raising=False)
    assert free_memory_bytes(torch.device("cpu")) == 800000 * 1024
    monkeypatch.setenv("DTENSOR_VERIFY_SHARE_DEVICE", "8")
    assert free_memory_bytes(torch.device("cpu")) == 100000 * 1024
    monkeypatch.setenv("DTENSOR_VERIFY_SHARE_DEVICE", "many")
    assert free_memory_bytes(torch.device("cpu")) == 800000 * 1024


@pytest.mark.parametrize("seed", range(3))
def test_clipped_boxes_keep_every_sampled_counterexample(seed):
    """Domain clipping (input_bab.clip_boxes) only cuts away points where some row's CROWN bound
    already exceeds its threshold: every sampled point of the box that violates the property on
    all rows stays inside the clipped box, and some thresholds do clip."""
    from dtensor_verify.bab import BabSolver, split
    from dtensor_verify.bab.input_bab import clip_boxes, with_boxes
    from dtensor_verify.methods.beta_crown import beta_crown, BetaOptions

    net, shape = random_mlp([3, 16, 16, 3], seed=20 + seed)
    model = dv.load(net, input_shape=shape)
    lo, hi = -torch.ones(1, 3), torch.ones(1, 3)
    C = torch.tensor([[[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]])
    gen = torch.Generator().manual_seed(seed)
    pts = lo + (hi - lo) * torch.rand(20000, 3, generator=gen)
    with torch.no_grad():
        vals = torch.einsum("km,sm->sk", C[0], model.forward(pts))
    clipped = 0
    for q in (0.002, 0.02, 0.1):
        d = torch.quantile(vals, q, dim=0).reshape(1, 2)          # some points violate both rows
        problem, roots = root_problem(model, lo, hi, C, d)
        roots = with_boxes(problem, roots)
        for dims in ([0, 1, 2], [0, 1, 2, 0, 1, 2]):
            kids = roots
            for dim in dims:
                dec = torch.tensor([[-2, dim]]).expand(len(kids), 2)
                kids = split(kids, dec, problem.relus, problem.pre_of)
            solver = BabSolver(problem, BabOptions(batch_size=8, split="input"), lambda: 1e9, lambda *a: None)
            kids.bounds = __import__("dtensor_verify.bab.input_bab", fromlist=["x"]).refreshed(problem, kids, False)
            with torch.no_grad():
                res = beta_crown(problem.graph, problem.bounds_of(kids), C[kids.pair], d[kids.pair],
                                 problem.row_mask[kids.pair], kids.alphas, kids.betas, kids.signs, problem.layout,
                                 BetaOptions(iterations=0))
            new_lo, new_hi = clip_boxes(problem, kids, res.lA[problem.graph.input_name], res.lower)
            blo, bhi = kids.box
            assert bool((new_lo >= blo).all() and (new_hi <= bhi).all() and (new_lo <= new_hi).all())
            clipped += int(((new_lo > blo) | (new_hi < bhi)).sum())
            bad = (vals <= d).all(1)                                   # violate every row
            for i in range(len(kids)):
                inside = ((pts >= blo[i]) & (pts <= bhi[i])).all(1) & bad
                kept = ((pts[inside] >= new_lo[i]) & (pts[inside] <= new_hi[i])).all(1)
                assert bool(kept.all()), (q, dims, i, pts[inside][~kept][:3])
            del solver
    assert clipped > 0
