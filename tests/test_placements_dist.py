"""Placement plans on CPU gloo meshes of 2 and 4 spawned ranks (see dist_utils.run_distributed).

Claims checked (DESIGN.md, placement table):

* ``fsdp`` and ``fsdp-prefetch``: IBP, CROWN and alpha-CROWN bounds are ``torch.equal`` to one
  process; prefetch gathers each layer once per sweep, ahead of its step.
* ``spec``: CROWN (IBP boxes included) never gathers a whole layer (weights streamed one shard at a time), and
  its per-rank peak at P = 4 is at most 0.30 of one process on a wide MLP.
* ``tp``, ``spec`` and mixed per-layer plans: within ``rtol=1e-5, atol=1e-6`` of one process and
  never looser than that (lower >= ref - tol, upper <= ref + tol).
* Resident parameter bytes per rank under fully sharded plans are 1/P of the model's (up to one
  row per tensor), and the shards tile every parameter exactly like ``chunk_bounds``.
* Every rank returns the same (gathered) bounds.
* A rank that raises, or is SIGKILLed, mid-bounding makes every rank exit non-zero in bounded time.

The one-process reference is computed inside rank 0 of each run, on a pristine copy of the model,
before any plan is applied: same process, same thread settings (1 thread) as the sharded runs,
so a bitwise comparison is meaningful. Models: an MLP with widths P does not divide (10-21-13-3:
at P=4 the last rank owns no output row), the zoo CNN, and the SRI ResNet (VNN-COMP 2022) on a
box of radius 1e-3 around one of its properties' centres (where 2 alpha-CROWN iterations
already tighten CROWN). Each spawned run computes every plan and method
of one model, because each spawn costs seconds.
"""
from __future__ import annotations

import contextlib
import copy
import os
import signal

import pytest
import torch

from dist_utils import run_distributed, run_distributed_raw

pytestmark = pytest.mark.distributed

RTOL, ATOL = 1e-5, 1e-6
# Ranks are forked from a server process that has imported torch once (seconds saved per rank).
START = "forkserver"
METHODS = ("ibp", "crown", "alpha-crown")

RESNET_ONNX = "sri_resnet_a/onnx/resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx.gz"
RESNET_VNNLIB = "sri_resnet_a/vnnlib/cifar10_spec_idx_3998_eps_0.00022.vnnlib.gz"
RESNET_EPS = 1e-3

# Per model: plans whose bounds must be bitwise equal, plans checked by tolerance, and the
# plans under which every parameter is sharded at rest (checked for 1/P resident bytes).
PLANS = {
    "mlp": {
        "exact": ["fsdp", "fsdp-prefetch"],
        "close": ["tp", "spec", "0=tp;*=fsdp", "2,4=tp;*=spec", "0=spec;Linear=tp",
                  {"2": "tp", "*": "fsdp"}],
        "sharded": ["fsdp", "tp", "spec"],
    },
    "cnn": {
        "exact": ["fsdp", "fsdp-prefetch"],
        "close": ["spec", "Linear=tp;*=fsdp", "Linear=tp;Conv2d=spec"],
        "sharded": ["fsdp", "spec", "Linear=tp;Conv2d=spec"],
    },
    "resnet": {
        "exact": ["fsdp", "fsdp-prefetch"],
        "close": ["spec", "Gemm_*=tp;*=spec", "Linear=tp;Conv2d=fsdp"],
        "sharded": ["fsdp", "spec", "Gemm_*=tp;*=spec"],
    },
}
# The ResNet is the expensive one (alpha-CROWN ~4 s per bound on one core): at P=4 only the
# bitwise plan and the mixed plan that has both tp zones and spec sweeps.
WORLD4_ONLY = {"resnet": ["fsdp", "Gemm_*=tp;*=spec"]}
# At P = 2 the default run has its mixed tp / spec plan only (fsdp's bitwise equality: the MLP and the CNN; the
# ResNet's other plans, ~1 min more on 2 cores: the `resnet-2-every` case, -m slow).
DEFAULT_RUN_ONLY = {"resnet": ["Gemm_*=tp;*=spec"]}


def _plans_for(key, world, every=False):
    spec = PLANS[key]
    keep = None if every else WORLD4_ONLY.get(key) if world == 4 else DEFAULT_RUN_ONLY.get(key)
    pick = (lambda ps: [p for p in ps if keep is None or p in keep])
    return {"exact": pick(spec["exact"]), "close": pick(spec["close"]), "sharded": pick(spec["sharded"])}


# ------------------------------------------------------------------------------ worker side

def _model_and_box(key):
    """(pristine BoundedModel, (lower, upper), AlphaOptions) for a model key."""
    import dtensor_verify as dv
    import model_zoo as zoo

    if key == "mlp":
        net, shape = zoo.random_mlp([10, 21, 13, 3], seed=0)
        return dv.load(net, shape), zoo.random_box(shape, 0.4, seed=1, batch=2), dv.AlphaOptions(iterations=5)
    if key == "cnn":
        net, shape = zoo.random_cnn("basic", seed=0)
        return dv.load(net, shape), zoo.random_box(shape, 0.1, seed=1, batch=2), dv.AlphaOptions(iterations=5)
    if key == "resnet":
        m = dv.load(str(zoo.benchmarks_dir() / RESNET_ONNX))
        lo, hi = zoo.vnnlib_input_box(zoo.benchmarks_dir() / RESNET_VNNLIB, m.input_shape)
        c = (lo + hi) / 2
        return m, (c - RESNET_EPS, c + RESNET_EPS), dv.AlphaOptions(iterations=2)
    raise ValueError(key)


def _all_bounds(m, box, alpha, seconds=None):
    out = {}
    for method in METHODS:
        r = m.compute_bounds(box[0], box[1], method, alpha_options=copy.deepcopy(alpha))
        out[method] = (r.lower.detach().clone(), r.upper.detach().clone())
        if seconds is not None:
            seconds[method] = round(r.seconds, 2)
    return out


def _resident(m, rank, world):
    """Bytes of this rank's parameter storage, the model's total, the per-tensor rounding slack
    (one row per tensor), and whether every shard has the rows chunk_bounds predicts."""
    from torch.distributed.tensor import DTensor

    from placements.layout import chunk_bounds

    local = total = slack = 0
    all_dtensor, rows_ok = True, True
    for _, p in m.module.named_parameters():
        size = p.element_size()
        total += p.numel() * size
        if isinstance(p, DTensor):
            t = p.to_local()
            start, stop = chunk_bounds(p.shape[0], world, rank)
            rows_ok &= t.shape[0] == stop - start and tuple(t.shape[1:]) == tuple(p.shape[1:])
        else:
            t = p
            all_dtensor = False
        local += t.numel() * t.element_size()
        slack += (p.numel() // max(p.shape[0], 1)) * size if p.dim() else size
    return {"local": local, "total": total, "slack": slack, "all_dtensor": all_dtensor, "rows_ok": rows_ok}


def _bounds_job(rank, world, key, plans, sharded):
    from placements import apply_plan, mesh_from_process_group

    template, box, alpha = _model_and_box(key)
    ref = _all_bounds(copy.deepcopy(template), box, alpha) if rank == 0 else None
    mesh = mesh_from_process_group()
    out = {}
    for plan in plans:
        m = copy.deepcopy(template)
        report = apply_plan(m, plan, mesh)
        entry = {"report": str(report), "policies": dict(report.policies)}
        if plan in sharded:
            entry["resident"] = _resident(m, rank, world)
        entry["seconds"] = {}
        entry["bounds"] = _all_bounds(m, box, alpha, entry["seconds"])
        out[_plan_key(plan)] = entry
    return {"ref": ref, "plans": out}


def _plan_key(plan):
    return plan if isinstance(plan, str) else repr(plan)


# ------------------------------------------------------------------------------ parent side

def _check_run(results, key, world, every=False):
    ref = results[0]["ref"]
    problems = []
    # The alpha-CROWN comparison means something only if the slopes moved the bounds.
    (clo, cup), (alo, aup) = ref["crown"], ref["alpha-crown"]
    if torch.equal(clo, alo) and torch.equal(cup, aup):
        problems.append("one-process alpha-CROWN equals CROWN: the box is too small to test optimised slopes")
    spec = _plans_for(key, world, every)
    for plan in spec["exact"] + spec["close"]:
        pk = _plan_key(plan)
        exact = plan in spec["exact"]
        for method in METHODS:
            rlo, rup = ref[method]
            lo, up = results[0]["plans"][pk]["bounds"][method]
            for r in range(1, world):
                olo, oup = results[r]["plans"][pk]["bounds"][method]
                if not (torch.equal(lo, olo) and torch.equal(up, oup)):
                    problems.append(f"{pk} {method}: rank {r} bounds differ from rank 0's")
            assert lo.shape == rlo.shape and up.shape == rup.shape, (pk, method, lo.shape, rlo.shape)
            diff = max(float((lo - rlo).abs().max()), float((up - rup).abs().max()))
            if exact:
                if not (torch.equal(lo, rlo) and torch.equal(up, rup)):
                    problems.append(f"{pk} {method}: not bitwise equal to one process (max diff {diff:.3e})")
                continue
            tol_lo = ATOL + RTOL * rlo.abs()
            tol_up = ATOL + RTOL * rup.abs()
            if not torch.allclose(lo, rlo, rtol=RTOL, atol=ATOL) or not torch.allclose(up, rup, rtol=RTOL, atol=ATOL):
                problems.append(f"{pk} {method}: not within rtol={RTOL}, atol={ATOL} (max diff {diff:.3e})")
            if (lo < rlo - tol_lo).any() or (up > rup + tol_up).any():
                problems.append(f"{pk} {method}: looser than one process beyond tolerance")
            if (lo > up).any():
                problems.append(f"{pk} {method}: lower > upper")
    for plan in spec["sharded"]:
        pk = _plan_key(plan)
        per_rank = [results[r]["plans"][pk]["resident"] for r in range(world)]
        total = per_rank[0]["total"]
        if sum(x["local"] for x in per_rank) != total:
            problems.append(f"{pk}: shards sum to {sum(x['local'] for x in per_rank)} bytes, model has {total}")
        for r, x in enumerate(per_rank):
            if not x["all_dtensor"]:
                problems.append(f"{pk}: rank {r} holds a parameter that is not a DTensor shard")
            if not x["rows_ok"]:
                problems.append(f"{pk}: rank {r} shard rows differ from chunk_bounds")
            # No rank holds more than 1/P of the model plus one row per tensor. (DTensor's Shard
            # splits like torch.chunk: ceil(n/P) rows per rank, so the *last* ranks can hold
            # several rows less, e.g. 21 rows on 4 ranks -> 6, 6, 6, 3.)
            if x["local"] > total / world + x["slack"]:
                problems.append(f"{pk}: rank {r} holds {x['local']} parameter bytes, more than "
                                f"{total / world:.0f} + {x['slack']} (1/{world} of {total} + one row per tensor)")
        if abs(per_rank[0]["local"] - total / world) > per_rank[0]["slack"]:
            problems.append(f"{pk}: rank 0 holds {per_rank[0]['local']} parameter bytes, expected "
                            f"{total / world:.0f} +- {per_rank[0]['slack']} (1/{world} of {total})")
    return problems


# P = 4 in the default run on the CNN only (the MLP and the ResNet at P = 4 take ~2 min on 2 cores: -m slow).
@pytest.mark.parametrize("key,world,every", [("mlp", 2, False), ("cnn", 2, False), ("resnet", 2, False), ("cnn", 4, False),
                                             pytest.param("resnet", 2, True, marks=pytest.mark.slow),
                                             pytest.param("mlp", 4, False, marks=pytest.mark.slow),
                                             pytest.param("resnet", 4, False, marks=pytest.mark.slow)],
                         ids=["mlp-2", "cnn-2", "resnet-2", "cnn-4", "resnet-2-every", "mlp-4", "resnet-4"])
def test_plans_match_one_process(key, world, every, tmp_path):
    if key == "resnet":
        import model_zoo
        model_zoo.benchmarks_dir()          # fails loudly if the shared benchmarks are missing
    spec = _plans_for(key, world, every)
    plans = spec["exact"] + spec["close"]
    results = run_distributed(_bounds_job, world, tmp_path, key, plans, spec["sharded"], timeout_s=240,
                              start_method=START)
    problems = _check_run(results, key, world, every)
    # The placement report says what went where.
    for plan in plans:
        entry = results[0]["plans"][_plan_key(plan)]
        assert f"on {world} rank(s)" in entry["report"]
    if key == "mlp":
        pol = results[0]["plans"]["0=spec;Linear=tp"]["policies"]
        assert pol == {"0": "spec", "2": "tp", "4": "tp"}, pol      # first match wins
        assert results[0]["plans"][repr({"2": "tp", "*": "fsdp"})]["policies"] == {"0": "fsdp", "2": "tp", "4": "fsdp"}
    if key == "resnet":
        pol = results[0]["plans"]["Gemm_*=tp;*=spec"]["policies"]
        assert {k for k, v in pol.items() if v == "tp"} == {"Gemm_21", "Gemm_23"}, pol
        assert all(v == "spec" for k, v in pol.items() if k.startswith("Conv_")), pol
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ failures

def _failing_job(rank, world, mode):
    """fsdp-placed MLP; on rank 1 the Linear backward rule raises (or SIGKILLs its own process)
    on its 3rd call, after rank 0 has moved on to the next FSDP all-gather."""
    import dtensor_verify as dv
    import model_zoo as zoo
    from placements import apply_plan, mesh_from_process_group

    net, shape = zoo.random_mlp([10, 21, 13, 3], seed=0)
    m = dv.load(net, shape)
    apply_plan(m, "fsdp", mesh_from_process_group())
    box = zoo.random_box(shape, 0.4, seed=1, batch=2)
    m.compute_bounds(*box, "crown")                     # one healthy round first
    if rank == 1:
        node = next(n for n in m.graph.nodes if n.op is not None and n.op.kind == "linear")
        op_cls = type(node.op)
        original = op_cls.backward
        calls = [0]

        def broken_backward(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 3:
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("injected failure in rank 1's bound step")
            return original(self, *args, **kwargs)

        op_cls.backward = broken_backward
    m.compute_bounds(*box, "alpha-crown", alpha_options=dv.AlphaOptions(iterations=50))
    return "finished"


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_rank_failure_fails_every_rank(mode, tmp_path):
    limit = 60.0
    run = run_distributed_raw(_failing_job, 2, tmp_path, mode, timeout_s=15, deadline_s=limit + 30,
                              start_method=START)
    assert None not in run.exitcodes, f"a rank was still running after {limit + 30:.0f} s: {run}"
    assert all(code != 0 for code in run.exitcodes), run
    assert run.seconds < limit, f"failure took {run.seconds:.1f} s to propagate: {run}"
    if mode == "raise":
        assert run.exitcodes[1] == 1 and run.results[1][0] == "error", run
        assert "injected failure" in run.results[1][1], run
    else:
        assert run.exitcodes[1] == -signal.SIGKILL and run.results[1] is None, run
    # rank 0 failed by an error of its own (the broken collective), not by hanging until killed
    assert run.exitcodes[0] == 1 and run.results[0] is not None and run.results[0][0] == "error", run
    assert "finished" not in str(run.results[0][1])


# ------------------------------------------------------------------------------ tp memory

# Per-rank peak of `tp` over the one-process peak. The target at P=2 is 0.52; about
# 0.50 is reached. A full-size Partial A-matrix (before the reduce-scatter) pushed it to ~0.66.
TP_PEAK_RATIO_P2 = 0.52


def _tp_peak_job(rank, world, methods):
    import dtensor_verify as dv
    import model_zoo as zoo
    from dtensor_verify.memory import measure
    from placements import apply_plan, mesh_from_process_group

    net, shape = zoo.random_mlp([64, 256, 256, 256, 10], seed=0)
    template = dv.load(net, shape)
    box = zoo.random_box(shape, 0.5, seed=1)
    alpha = dv.AlphaOptions(iterations=2, patience=2)
    mesh = mesh_from_process_group()
    out = {}
    for method in methods:
        ref = None
        if rank == 0:
            one = copy.deepcopy(template)
            with measure(one) as rep:
                r = one.compute_bounds(*box, method, alpha_options=copy.deepcopy(alpha))
            ref = (rep.peak_bytes, r.lower.detach().clone())
        m = copy.deepcopy(template)
        apply_plan(m, "tp", mesh)
        m.compute_bounds(*box, method, alpha_options=copy.deepcopy(alpha))     # warm-up
        with measure(m) as rep:
            r = m.compute_bounds(*box, method, alpha_options=copy.deepcopy(alpha))
        out[method] = {"ref": ref, "peak": rep.peak_bytes, "lower": r.lower.detach().clone()}
    return out


def test_tp_peak_memory_per_rank_is_about_half_at_p2(tmp_path):
    methods = ("crown", "alpha-crown")
    results = run_distributed(_tp_peak_job, 2, tmp_path, methods, timeout_s=240, start_method=START)
    for method in methods:
        ref_peak, ref_lower = results[0][method]["ref"]
        assert torch.allclose(results[0][method]["lower"], ref_lower, rtol=RTOL, atol=ATOL), method
        ratio = max(r[method]["peak"] for r in results) / ref_peak
        assert ratio <= TP_PEAK_RATIO_P2, f"{method}: tp per-rank peak is {ratio:.3f} of one process"


# ------------------------------------------------------------------------------ gathers

def _gathers_job(rank, world, plans):
    """Per plan: every FSDP unshard during one CROWN bound, as (layer, async?, inside a sweep?)."""
    import dtensor_verify as dv
    import model_zoo as zoo
    from placements import apply_plan, mesh_from_process_group

    net, shape = zoo.random_mlp([16, 48, 40, 32, 5], seed=0)
    box = zoo.random_box(shape, 0.3, seed=1, batch=2)
    mesh = mesh_from_process_group()
    out = {}
    for plan in plans:
        m = dv.load(copy.deepcopy(net), shape)
        apply_plan(m, plan, mesh)
        calls, sweeps = [], []
        open_sweep = m.layout.sweep

        @contextlib.contextmanager
        def watched(start, _open=open_sweep):
            with _open(start) as sweep:
                sweeps.append(sweep)
                try:
                    yield sweep
                finally:
                    sweeps.remove(sweep)
                    finished.append(sweep)

        finished = []
        m.layout.sweep = watched
        for node in m.graph.layers():
            module = node.op.module
            original = module.unshard

            def recording(async_op=False, _orig=original, _name=node.name):
                calls.append((_name, bool(async_op), bool(sweeps)))
                return _orig(async_op=async_op)

            module.unshard = recording
        r = m.compute_bounds(*box, "crown")
        out[plan] = {"calls": calls, "lower": r.lower.clone(), "left": sum(len(s.prefetched) for s in finished)}
    return out


def test_prefetch_and_streaming_gather_what_they_claim(tmp_path):
    plans = ("fsdp", "fsdp-prefetch", "spec")
    results = run_distributed(_gathers_job, 2, tmp_path, plans, timeout_s=120, start_method=START)
    for res in results:
        plain, ahead, spec = (res[p]["calls"] for p in plans)
        assert torch.equal(res["fsdp"]["lower"], res["fsdp-prefetch"]["lower"])
        # Same layers gathered, the same number of times: a prefetched gather replaces one.
        assert sorted((n, s) for n, _, s in plain) == sorted((n, s) for n, _, s in ahead)
        assert not any(a for _, a, _ in plain)
        assert sum(a for _, a, _ in ahead) >= 3, ahead       # every sweep past its first layer
        assert res["fsdp-prefetch"]["left"] == 0
        # spec: IBP and CROWN steps stream the weight shard by shard; no layer is ever gathered.
        assert spec == [], spec


# Per-rank CROWN peak of `spec` at P = 4 over one process (the fsdp-family target: 0.30).
SPEC_PEAK_RATIO_P4 = 0.30


def _spec_peak_job(rank, world):
    import dtensor_verify as dv
    import model_zoo as zoo
    from dtensor_verify.memory import measure
    from placements import apply_plan, mesh_from_process_group

    net, shape = zoo.random_mlp([64, 256, 256, 256, 10], seed=0)
    template = dv.load(net, shape)
    box = zoo.random_box(shape, 0.5, seed=1)
    ref = None
    if rank == 0:
        one = copy.deepcopy(template)
        with measure(one) as rep:
            r = one.compute_bounds(*box, "crown")
        ref = (rep.peak_bytes, r.lower.clone())
    m = copy.deepcopy(template)
    apply_plan(m, "spec", mesh_from_process_group())
    with measure(m) as rep:
        r = m.compute_bounds(*box, "crown")
    return {"ref": ref, "peak": rep.peak_bytes, "lower": r.lower.clone()}


def test_spec_peak_memory_per_rank_at_p4(tmp_path):
    results = run_distributed(_spec_peak_job, 4, tmp_path, timeout_s=120, start_method=START)
    ref_peak, ref_lower = results[0]["ref"]
    assert torch.allclose(results[0]["lower"], ref_lower, rtol=RTOL, atol=ATOL)
    ratio = max(r["peak"] for r in results) / ref_peak
    assert ratio <= SPEC_PEAK_RATIO_P4, f"spec per-rank CROWN peak at P=4 is {ratio:.3f} of one process"


# ------------------------------------------------------------------------------ meter

def _meter_job(rank, world):
    """Bytes the CPU meter counts for ops whose outputs are new, or are one of their inputs."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor

    from dtensor_verify.memory import LiveTensorMeter
    from placements import mesh_from_process_group

    mesh = mesh_from_process_group()
    x = distribute_tensor(torch.ones(64, 32), mesh, [Shard(0)])     # 32 x 32 floats per rank
    buf = torch.zeros(1000)
    counts = {}
    for name, fn in {
        "dtensor op": lambda: x * 2.0,                                # a new local shard: 4096 bytes
        "broadcast in place": lambda: dist.broadcast(buf, src=0),    # writes into buf: 0 bytes
        "plain op": lambda: buf + 1.0,                                # 4000 bytes
    }.items():
        with LiveTensorMeter() as meter:
            keep = fn()
        counts[name] = meter.peak
        del keep
    return counts


def test_meter_counts_dtensor_shards_and_not_inplace_collectives(tmp_path):
    for counts in run_distributed(_meter_job, 2, tmp_path, timeout_s=60, start_method=START):
        assert counts == {"dtensor op": 32 * 32 * 4, "broadcast in place": 0, "plain op": 4000}, counts


# ------------------------------------------------------------------------------ forward

def _forward_job(rank, world, plans_by_model):
    """`model.forward` under each plan, with and without autograd (PGD's last step and the
    bound-guided vertices run it under no_grad, where spec streams its weights)."""
    import dtensor_verify as dv
    import model_zoo as zoo
    from placements import apply_plan, mesh_from_process_group

    out = {}
    for key, plans in plans_by_model.items():
        net, shape = zoo.random_mlp([10, 21, 13, 3], seed=0) if key == "mlp" else zoo.random_cnn("basic", seed=0)
        template = dv.load(net, shape)
        x = zoo.random_box(shape, 0.4, seed=1, batch=3)[0]
        with torch.no_grad():
            ref = template.forward(x)
        for plan in plans:
            m = copy.deepcopy(template)
            apply_plan(m, plan, mesh_from_process_group())
            with torch.no_grad():
                plain = m.forward(x)
            xg = x.clone().requires_grad_(True)
            grad = m.forward(xg)
            out[(key, plan)] = (ref, plain, grad.detach())
    return out


def test_forward_matches_one_process_under_every_plan(tmp_path):
    plans = {"mlp": ("fsdp", "tp", "spec", "0=spec;*=fsdp"), "cnn": ("fsdp", "spec", "Linear=tp;Conv2d=spec")}
    for res in run_distributed(_forward_job, 2, tmp_path, plans, timeout_s=120, start_method=START):
        for (key, plan), (ref, plain, grad) in res.items():
            assert torch.allclose(plain, ref, rtol=RTOL, atol=ATOL), (key, plan, (plain - ref).abs().max())
            assert torch.allclose(grad, ref, rtol=RTOL, atol=ATOL), (key, plan, (grad - ref).abs().max())
