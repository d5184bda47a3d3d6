"""The bound stage before branch and bound spread over the dp groups of a `--mesh 2x1` run
(verify/bounds_dp): each rank bounds its share of the (region, disjuncts) batch elements, all
ranks gather them, and every rank ends with the bounds and the verdict of one process."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dist_utils import run_distributed
from dtensor_verify.verify.bounds_dp import dp_topology, my_share
from test_bab_dist import SEED, START, WIDTHS, _thresholds
from model_zoo import random_mlp

ITER = 6           # alpha-CROWN steps, no early stop (patience > steps): the same steps everywhere


def _prop(t: float) -> str:
    """Two input boxes (regions) x two output disjuncts on Y_0."""
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    box = "(and (>= X_0 {}) (<= X_0 {}) (>= X_1 -1) (<= X_1 1))"
    return (head + f"(assert (or {box.format(-1, 0)} {box.format(0, 1)}))\n"
            f"(assert (or (<= Y_0 {t!r}) (<= Y_0 {t - 0.25!r})))\n")


def _decide(model, text: str, bab: bool):
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.methods import AlphaOptions
    from dtensor_verify.specs import parse_vnnlib
    from dtensor_verify.verify import verify_instance

    prop = parse_vnnlib(text, n_inputs=2, n_outputs=2)
    # without BaB, no attack either: the later attack rounds may run into the time limit on a busy machine
    res = verify_instance(model, prop, None, timeout=120, attack=bab, bab=bab, bab_options=BabOptions(batch_size=32),
                          alpha_options=AlphaOptions(iterations=ITER, patience=ITER + 1))
    return (res.verdict, res.decided_by, [d.lower for d in res.details],
            res.bounds.get("alpha-crown", {}).get("iterations"))


def _model(plan=None, mesh=None):
    import dtensor_verify as dv

    net, shape = random_mlp(WIDTHS, seed=SEED)
    model = dv.load(net, input_shape=shape)
    if plan is not None:
        from placements import apply_plan, mesh_from_process_group
        apply_plan(model, plan, mesh_from_process_group(mesh))
    return model


def _on_ranks(rank, world, text, rows_min=None):
    from dtensor_verify.verify import bounds_dp

    torch.set_num_threads(1)
    if rows_min is not None:
        bounds_dp.ROWS_MIN_NEURONS = rows_min       # this rank's process only
    model = _model("replicate", "2x1")
    return [_decide(model, text, bab=False), _decide(model, text, bab=True)]


def test_round_robin_shares_and_one_group_keeps_all():
    groups = [[0, 1], [2, 3], [4]]
    topo = [SimpleNamespace(dp=2, dp_rank=r, shard=1, dp_group=object()) for r in range(2)]
    assert [my_share(groups, t) for t in topo] == [[[0, 1], [4]], [[2, 3]]]
    assert dp_topology(SimpleNamespace(layout=SimpleNamespace(topology=topo[0]))) is topo[0]
    for t in (SimpleNamespace(dp=1, shard=2, dp_group=None), SimpleNamespace(dp=2, shard=2, dp_group=object())):
        assert dp_topology(SimpleNamespace(layout=SimpleNamespace(topology=t))) is None


def test_mesh_2x1_bounds_and_verdict_of_one_process(tmp_path):
    low, _ = _thresholds()
    text = _prop(low)
    ref = [_decide(_model(), text, bab=False), _decide(_model(), text, bab=True)]
    assert ref[1][0] == "unsat" and ref[1][1] == "bab", ref          # the bounds leave it to BaB
    res = run_distributed(_on_ranks, 2, tmp_path, text, timeout_s=240, start_method=START)
    for rank_rows in res:
        for (verdict, by, lowers, its), (rverdict, rby, rlowers, rits) in zip(rank_rows, ref):
            assert (verdict, by) == (rverdict, rby)
            assert len(lowers) == len(rlowers) == 4
            for lo, rlo in zip(lowers, rlowers):
                assert lo is not None and rlo is not None
                assert lo == pytest.approx(rlo, rel=1e-4, abs=1e-5)
            # one batch of both regions in one process; one region per rank (gathered) in 2x1
            assert len(rits) == 1 and len(its) == 2, (its, rits)


@pytest.mark.parametrize("other,raises", [("ok", None), ("timed-out", "TimeLimitReached"),
                                          ("failed", "VerifierError")])
def test_a_time_out_or_failure_on_one_rank_is_raised_on_every_rank(monkeypatch, other, raises):
    """Rank 0 bounded its share; rank 1 sent `other`: after the one gather, rank 0 merges or
    raises what rank 1 ran into (no rank is left waiting in a later collective)."""
    import torch.distributed as dist

    from dtensor_verify.errors import TimeLimitReached, VerifierError
    from dtensor_verify.verify.bounds_dp import gather_outcomes, run_share

    def fake_gather(out, mine, group=None):
        out[0], out[1] = mine, ({"b": torch.ones(1)} if other == "ok" else other)

    monkeypatch.setattr(dist, "all_gather_object", fake_gather)
    topo = SimpleNamespace(dp=2, dp_group=None)
    merge = (lambda outs: {k: v for o in outs for k, v in o.items()})
    share = run_share(lambda: {"a": torch.zeros(1)})
    if raises is None:
        assert set(gather_outcomes(topo, share, "cpu", merge)) == {"a", "b"}
    else:
        with pytest.raises({"TimeLimitReached": TimeLimitReached, "VerifierError": VerifierError}[raises]):
            gather_outcomes(topo, share, "cpu", merge)
    failed = run_share(lambda: 1 / 0)                       # this rank's own error is re-raised
    with pytest.raises(ZeroDivisionError):
        gather_outcomes(topo, failed, "cpu", merge)
    with pytest.raises((TimeLimitReached, VerifierError)):  # this rank's own time-out too
        gather_outcomes(topo, run_share(lambda: (_ for _ in ()).throw(TimeLimitReached())), "cpu", merge)


# -- one input box: the rows of every bound split over dp (bounds_dp.DpRowsLayout) ----------------

def _one_box_prop(t: float) -> str:
    """One input box (region) x two output disjuncts: one batch element, fewer than 2 ranks."""
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    return (head + "(assert (and (>= X_0 -1) (<= X_0 1) (>= X_1 -1) (<= X_1 1)))\n"
            f"(assert (or (<= Y_0 {t!r}) (<= Y_0 {t - 0.25!r})))\n")


def _wide_net():
    from torch import nn

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 31), nn.ReLU(),
                        nn.Linear(32 - 1, 5))
    return net, (6,)


def _methods_by_rows(model, layout):
    """CROWN and alpha-CROWN (early stop on: the stop must be decided on every rank's rows) on one
    box, 5 outputs: lower bounds, intermediate bounds, steps, output slopes."""
    from dtensor_verify.methods import AlphaOptions
    from dtensor_verify.methods.dispatch import run_method

    lo = torch.full((1, 6), -0.4)
    box = (lo, lo + 0.8)
    out = {}
    # 5 output rows; and 1 (a rank with no output row: its gathers' backward must still run)
    for C in (torch.eye(5).unsqueeze(0), torch.eye(5)[2:3].unsqueeze(0)):
        for method in ("crown", "alpha-crown"):
            res = run_method(method, model.graph, box, C, layout, want_upper=False,
                             alpha_options=AlphaOptions(iterations=40, patience=3, tol=1e-3))
            inter = {k: (v[0].clone(), v[1].clone()) for k, v in res.intermediate.items()}
            out[(method, C.shape[1])] = (res.lower.clone(), inter, res.iterations,
                                         {k: v.shape for k, v in res.output_alphas.items()})
    return out


def _rows_on_ranks(rank, world):
    import dtensor_verify as dv
    from placements import apply_plan, mesh_from_process_group
    from dtensor_verify.verify.bounds_dp import DpRowsLayout

    torch.set_num_threads(1)
    net, shape = _wide_net()
    model = dv.load(net, input_shape=shape)
    apply_plan(model, "replicate", mesh_from_process_group(f"{world}x1"))
    layout = DpRowsLayout(model.layout, model.layout.topology)
    split = layout.rows("x", 5)
    return _methods_by_rows(model, layout), (split.mine, split.most)


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_rows_split_over_dp_give_one_process_bounds(tmp_path, world):
    """Each rank bounds its slice of every bound's rows (5 outputs, 32 / 31 neurons: uneven over 2 and
    3 ranks); the gathered bounds, alpha-CROWN's steps (its early stop summed over ranks) and the
    intermediate bounds are one process's."""
    import dtensor_verify as dv

    net, shape = _wide_net()
    ref = _methods_by_rows(dv.load(net, input_shape=shape), dv.load(net, input_shape=shape).layout)
    assert 3 < ref[("alpha-crown", 5)][2] < 40            # stopped early: the summed score decided
    assert (ref[("alpha-crown", 5)][0] > ref[("crown", 5)][0] + 1e-4).any()
    res = run_distributed(_rows_on_ranks, world, tmp_path, timeout_s=240, start_method=START)
    slices = [r[1] for r in res]
    assert [s.stop - s.start for s, _ in slices] == ([3, 2] if world == 2 else [2, 2, 1])
    for got, _ in res:
        for key in ref:
            lower, inter, its, alpha_shapes = got[key]
            rlower, rinter, rits, ralpha_shapes = ref[key]
            assert its == rits
            torch.testing.assert_close(lower, rlower, rtol=1e-4, atol=1e-5)
            assert set(inter) == set(rinter)
            for k in inter:
                torch.testing.assert_close(inter[k][0], rinter[k][0], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(inter[k][1], rinter[k][1], rtol=1e-4, atol=1e-5)
    for key in ref:
        if key[0] == "alpha-crown":
            # each rank's own rows of the output's slopes (bounds.py gathers them for BaB's roots)
            counts = {name: sum(got[key][3][name][2] for got, _ in res) for name in res[0][0][key][3]}
            assert counts and set(counts.values()) == {key[1]}, counts


@pytest.mark.parametrize("rows_min", [0, None], ids=["rows-split", "whole-on-rank-0"])
def test_mesh_2x1_one_box_rows_split_verdict_and_bounds_of_one_process(tmp_path, rows_min):
    """One region: the bound stage splits rows (not regions) over the 2 ranks (`rows_min` 0), or, on
    this small network by default, dp rank 0 computes each bound whole and hands it on; bounds, alpha-CROWN's steps,
    and the verdict after branch and bound are one process's."""
    low, _ = _thresholds()
    text = _one_box_prop(low)
    ref = [_decide(_model(), text, bab=False), _decide(_model(), text, bab=True)]
    assert ref[1][0] == "unsat" and ref[1][1] == "bab", ref
    res = run_distributed(_on_ranks, 2, tmp_path, text, rows_min, timeout_s=240, start_method=START)
    for rank_rows in res:
        for (verdict, by, lowers, its), (rverdict, rby, rlowers, rits) in zip(rank_rows, ref):
            assert (verdict, by) == (rverdict, rby)
            assert len(lowers) == len(rlowers) == 2
            for lo, rlo in zip(lowers, rlowers):
                assert lo == pytest.approx(rlo, rel=1e-4, abs=1e-5)
            assert its == rits and len(its) == 1, (its, rits)     # one batch: the box, on every rank


def test_small_networks_are_bounded_whole_on_one_rank():
    """Below ROWS_MIN_NEURONS neurons feeding activations a one-box bound is not split by rows."""
    from dtensor_verify.verify import bounds_dp

    topo = SimpleNamespace(dp=2, dp_rank=1, dp_group=None)
    small = _model()
    assert bounds_dp.whole_on_one_rank(small.graph)
    assert not bounds_dp.whole_on_one_rank(_big_graph())
    big = bounds_dp.rows_layout(SimpleNamespace(graph=_big_graph(), layout=small.layout), topo)
    assert type(big) is bounds_dp.DpRowsLayout and big.rows("x", 7).mine == slice(4, 7)


def test_whole_then_agree_takes_rank_0s_outcome_and_raises_any_time_out(monkeypatch):
    """dp rank 0 computes the bound alone: one gather, every rank then holds rank 0's outcome (and
    the other ranks' side results), or raises what any rank ran into."""
    import torch.distributed as dist

    from dtensor_verify.errors import TimeLimitReached, VerifierError
    from dtensor_verify.verify.bounds_dp import _Side, local_clock, whole_then_agree
    from dtensor_verify.verify.instance import Clock

    sent = {}

    def fake_gather(other):
        def gather(out, mine, group=None):
            sent["mine"] = mine
            out[0], out[1] = (mine, other) if topo.dp_rank == 0 else (other, mine)
        return gather

    def bound(rank):
        def fn():
            assert rank == 0, "only dp rank 0 computes the bound"
            return {"r": rank}
        return fn

    for rank, other, want in [(0, _Side(None), ({"r": 0}, [None])), (1, {"r": 0}, ({"r": 0}, [None])),
                              (1, "timed-out", None), (1, "failed", None)]:
        topo = SimpleNamespace(dp=2, dp_rank=rank, dp_group=None)
        monkeypatch.setattr(dist, "all_gather_object", fake_gather(other))
        if want is None:
            with pytest.raises((TimeLimitReached, VerifierError)):
                whole_then_agree(topo, bound(rank), "cpu")
        else:
            assert whole_then_agree(topo, bound(rank), "cpu") == want
            assert sent["mine"] == ({"r": 0} if rank == 0 else _Side(None))
    # rank 0 ran out of its own time: it still joins the gather, and raises after it
    topo = SimpleNamespace(dp=2, dp_rank=0, dp_group=None)
    monkeypatch.setattr(dist, "all_gather_object", fake_gather(_Side(None)))
    with pytest.raises(TimeLimitReached):
        whole_then_agree(topo, lambda: (_ for _ in ()).throw(TimeLimitReached()), "cpu")
    assert sent["mine"] == "timed-out"
    # the clock of the stage decides alone: no collective (a layout whose all_true would raise)
    clock = Clock(0.0, SimpleNamespace(all_true=lambda flag: 1 / 0))
    with pytest.raises(TimeLimitReached):
        local_clock(clock).check()


def test_side_job_runs_until_rank_0_says_its_bound_is_done(monkeypatch):
    """With a side job: rank 0 sends each other rank one message after its bound; the others run
    `side(stopped)`, `stopped()` turning True with that message, and always receive it."""
    import torch.distributed as dist

    from dtensor_verify.verify.bounds_dp import _Side, whole_then_agree

    log = []

    class Recv:
        def __init__(self):
            self.done = False

        def is_completed(self):
            return self.done

        def wait(self):
            log.append("received")

    recv = Recv()
    monkeypatch.setattr(dist, "send", lambda t, group=None, group_dst=None: log.append(("send", group_dst)))
    monkeypatch.setattr(dist, "irecv", lambda t, group=None, group_src=None: recv)

    def side(stopped):
        assert not stopped()
        recv.done = True                                        # rank 0's message came
        return ("found", 0.5) if stopped() else None

    topo = SimpleNamespace(dp=2, dp_rank=1, dp_group=None)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine, group=None: out.__setitem__(
        slice(None), [{"r": 0}, mine]))
    assert whole_then_agree(topo, lambda: 1 / 0, "cpu", side) == ({"r": 0}, [("found", 0.5)])
    assert log == ["received"]
    topo = SimpleNamespace(dp=3, dp_rank=0, dp_group=None)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine, group=None: out.__setitem__(
        slice(None), [mine, _Side(None), _Side(("x", 1.0))]))
    assert whole_then_agree(topo, lambda: {"r": 0}, "cpu", side) == ({"r": 0}, [None, ("x", 1.0)])
    assert log[1:] == [("send", 1), ("send", 2)]


def test_helper_round_stops_when_told_and_shares_the_round(monkeypatch):
    """The attack-extra round as a side job: ranks 1 .. dp-1 share its restarts and guided starts;
    it ends with None once `stopped()` (rank 0's bound is done), a result otherwise."""
    from dtensor_verify.verify import attacks

    calls = []

    def fake_round(model, pairs, open_idx, lo, hi, clock, opts, restarts, seed, starts):
        calls.append((restarts, seed, {p: v.shape[0] for p, v in starts.items()}))
        for _ in range(3):
            clock.check()                                      # as PGD's forward passes do
        return torch.zeros(1, 2), torch.ones(1)

    monkeypatch.setattr(attacks, "attack_round", fake_round)
    monkeypatch.setattr(attacks, "confirm_candidates", lambda inst, x, m, idx: None)
    clock = SimpleNamespace(check=lambda: None, layout=None)
    inst = SimpleNamespace(model=SimpleNamespace(layout=SimpleNamespace(topology=SimpleNamespace(dp=3, dp_rank=2))),
                           open_pairs=lambda: [0], pairs=None, pair_lo=None, pair_hi=None, clock=clock,
                           attack=SimpleNamespace(restarts=5), guided={0: torch.zeros(4, 2)})
    run = attacks.helper_round(inst, 11)
    found, secs = run(lambda: False)
    assert found is None and secs >= 0
    assert calls == [(3, 11 + 7919, {0: 2})]                  # the second of 2 helpers: 3 restarts, starts 1, 3
    assert run(lambda: True) is None                           # told to stop: the round is left undone


def _big_graph():
    import dtensor_verify as dv

    net = random_mlp([4, 4096, 2], seed=0)[0]
    return dv.load(net, input_shape=(4,)).graph


def test_bound_stage_takes_the_side_round_and_its_counterexample(monkeypatch):
    """The last bound stage hands the attack-extra round to the ranks that wait: a round they ran
    whole counts as done (AttackBeforeBab then skips it); a counterexample they confirmed is the
    verdict (`sat`, by the attack); a round cut short leaves AttackBeforeBab to run it."""
    from dtensor_verify.verify import stages
    from dtensor_verify.verify.bounds import BoundOutcome

    def inst_with(side):
        monkeypatch.setattr(stages, "bound_pairs", lambda *a, **k: BoundOutcome(side=side))
        accepted = []
        inst = SimpleNamespace(clock=SimpleNamespace(check=lambda: None), open_pairs=lambda: [0], roots={},
                               attack=SimpleNamespace(seed=0, extra_rounds=4), extra_rounds_done=0, phases={},
                               accept=accepted.append, result=SimpleNamespace(bounds={}, phases={}),
                               say=lambda msg: None, bounded=lambda *a: False, details=[], pairs=None)
        inst.add_phase = lambda name, s: inst.phases.__setitem__(name, s)
        return inst, accepted

    stage = stages.Bound("alpha-crown", side_attack=True, guide=False)
    inst, accepted = inst_with([("cex", 0.3)])
    decision = stage.run(inst)
    assert (decision.verdict, decision.decided_by) == ("sat", "attack") and accepted == ["cex"]
    inst, accepted = inst_with([(None, 0.3)])
    assert stage.run(inst) is None and inst.extra_rounds_done == 1 and inst.phases == {"attack-extra": 0.3}
    assert stages.AttackBeforeBab().run(inst) is None and not accepted      # done already: skipped
    inst, _ = inst_with([None])                                              # stopped: not done
    assert stage.run(inst) is None and inst.extra_rounds_done == 0
