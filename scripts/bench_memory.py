#!/usr/bin/env python
"""Per-rank memory and wall time of bounding under each placement plan, for P = 1, 2, 4.

Two sub-commands; `scripts/bench_memory.sh` runs them in order, so every ratio in the report is
measured side by side in one run:

  run     bound every (model, method, plan) once under a memory meter and `--repeats` more
          times for wall time; launched once per P (plain python for P = 1, torchrun above);
          rank 0 appends one JSON line per configuration to OUT/results.jsonl
  report  read OUT/results.jsonl and write OUT/memory.csv, OUT/memory.md, OUT/memory.png

Memory is per rank: baseline (after load and placement) and peak (during bounding), from the CUDA
allocator on GPU and from dtensor_verify.memory's live-tensor meter on CPU. Ratios compare with
the P = 1 `replicate` run of the same model and method.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import dtensor_verify as dv  # noqa: E402
from dtensor_verify.memory import gather_reports, measure  # noqa: E402
from placements import apply_plan, init_mesh  # noqa: E402
from placements.mesh import exit_now_if_distributed  # noqa: E402

GIB = 1024 ** 3


# ----------------------------------------------------------------------------- models
def wide_mlp(width: int, depth: int, seed: int = 0, device="cpu") -> torch.nn.Module:
    """784 -> depth x width -> 10, ReLU; weights scaled so that bounds stay finite and meaningful.

    Built directly on `device` from a seeded generator there (no default init, no copy): at
    width 32768 a CPU build takes minutes. Every rank builds the same weights."""
    gen = torch.Generator(device=device).manual_seed(seed)
    layers, fan_in = [], 784

    def linear(n_in, n_out, scale, bias_scale):
        lin = torch.nn.utils.skip_init(torch.nn.Linear, n_in, n_out, device=device)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n_out, n_in, generator=gen, device=device).mul_(scale))
            lin.bias.copy_(torch.randn(n_out, generator=gen, device=device).mul_(bias_scale))
        return lin

    for _ in range(depth):
        layers += [linear(fan_in, width, (2.0 / fan_in) ** 0.5, 0.01), torch.nn.ReLU()]
        fan_in = width
    head = linear(fan_in, 10, (1.0 / fan_in) ** 0.5, 0.0)
    return torch.nn.Sequential(*layers, head).eval()


def _device(args) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")


def model_specs(args):
    """(name, loader, per-sample input shape, eps) for every model in the run."""
    specs = []
    for kind in args.models.split(","):
        if kind == "mlp":
            for width in [int(w) for w in args.widths.split(",")]:
                # small=True: same layer names, for choosing the plans without building the model.
                specs.append((f"mlp{args.depth}x{width}",
                              lambda small=False, w=width: dv.load(wide_mlp(8 if small else w, args.depth,
                                                                            device="cpu" if small else _device(args)),
                                                                   (784,)),
                              0.01, {"width": width, "depth": args.depth}))
        elif kind == "cnn":
            path = Path(args.benchmarks) / "oval21/onnx/cifar_wide_kw.onnx.gz"
            specs.append(("cifar_wide_kw", lambda small=False, p=path: dv.load(p), 2 / 255, {}))
        elif kind == "resnet":
            path = Path(args.benchmarks) / "sri_resnet_a/onnx/resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx.gz"
            specs.append(("sri_resnet_a", lambda small=False, p=path: dv.load(p), 1 / 255, {}))
        else:
            raise SystemExit(f"unknown model kind {kind}")
    return specs


def plans_for(model) -> dict[str, str]:
    """The plans of the table; tp shards Linear layers only, so CNNs use it on their Linear part."""
    linears = [n.layer for n in model.graph.layers() if n.layer_type == "Linear"]
    has_conv = any(n.layer_type == "Conv2d" for n in model.graph.layers())
    tp = "Linear=tp;*=fsdp" if has_conv else "tp"
    # Mixed: tp on the wide hidden layers, fsdp on the input layer and the head, spec elsewhere.
    mixed = f"{linears[0]},{linears[-1]}=fsdp;Linear=tp;*=spec" if len(linears) > 2 else "Linear=tp;*=spec"
    return {"replicate": "replicate", "fsdp": "fsdp", "fsdp-prefetch": "fsdp-prefetch", "tp": tp, "spec": "spec",
            "mixed": mixed}


# ----------------------------------------------------------------------------- run
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bound_once(model, box, method, iters):
    return model.compute_bounds(*box, method=method, alpha_options=dv.AlphaOptions(iterations=iters, patience=iters),
                                want_upper=False)


def run(args):
    mesh = init_mesh()
    world = mesh.size() if mesh is not None else 1
    rank = mesh.get_rank() if mesh is not None else 0
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, loader, eps, meta in model_specs(args):
        for method in args.methods.split(","):
            probe = loader(small=True)
            plans = plans_for(probe)
            del probe
            for plan_name in args.plans.split(","):
                if world == 1 and plan_name != "replicate" and not args.all_plans_at_p1:
                    continue   # one device: every plan is 'replicate'
                row = {"model": name, **meta, "method": method, "plan": plan_name, "plan_rule": plans[plan_name],
                       "P": world, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "torch": torch.__version__}
                try:
                    model = loader()
                    if device.type == "cuda" and mesh is None:
                        model.to(device)
                    apply_plan(model, plans[plan_name], mesh)
                    gen = torch.Generator().manual_seed(1)
                    x = torch.rand(1, *model.input_shape, generator=gen).to(device)
                    box = (x - eps, x + eps)
                    bound_once(model, box, method, 1)           # warm-up (kernels, FSDP lazy init)
                    sync(device)
                    with measure(model, device) as rep:
                        res = bound_once(model, box, method, args.alpha_iters)
                        sync(device)
                    times = []
                    for _ in range(args.repeats):
                        sync(device)
                        t0 = time.perf_counter()
                        bound_once(model, box, method, args.alpha_iters)
                        sync(device)
                        times.append(time.perf_counter() - t0)
                    reports = gather_reports(rep, model.layout)
                    row.update({"status": "ok", "seconds": statistics.median(times),
                                "lower_sum": float(res.lower.sum()),
                                "baseline_bytes": [r["baseline_bytes"] for r in reports],
                                "peak_bytes": [r["peak_bytes"] for r in reports],
                                "peak_by_kind": reports[0]["peak_by_kind_bytes"], "source": reports[0]["source"]})
                except torch.cuda.OutOfMemoryError:
                    row.update({"status": "oom"})
                finally:
                    model = None
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                if rank == 0:
                    with open(out / "results.jsonl", "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    peak = max(row.get("peak_bytes", [0])) / GIB
                    print(f"[P={world}] {name:<14} {method:<11} {plan_name:<9} {row['status']:<4} "
                          f"peak/rank {peak:.3f} GiB  {row.get('seconds', float('nan')):.3f} s", flush=True)
    if args.lirpa and world == 1:
        run_lirpa(args, device, out)


def run_lirpa(args, device, out):
    """auto_LiRPA 0.3 on the same wide MLPs, same meter, same process (the one-device anchor)."""
    try:
        from lirpa_reference import patch_auto_lirpa

        patch_auto_lirpa()
        from auto_LiRPA import BoundedModule, BoundedTensor
        from auto_LiRPA.perturbations import PerturbationLpNorm
    except Exception as exc:  # not installed / not importable here: the table says so, the run goes on
        print(f"[P=1] auto_LiRPA unavailable: {type(exc).__name__}: {exc}", flush=True)
        return

    for width in [int(w) for w in args.widths.split(",")]:
        for method in args.methods.split(","):
            row = {"model": f"mlp{args.depth}x{width}", "width": width, "depth": args.depth, "method": method,
                   "plan": "auto_LiRPA", "plan_rule": "auto_LiRPA 0.3", "P": 1, "torch": torch.__version__,
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
            try:
                net = wide_mlp(width, args.depth, device=device)
                gen = torch.Generator().manual_seed(1)
                x = torch.rand(1, 784, generator=gen).to(device)
                lirpa = BoundedModule(net, torch.zeros(1, 784, device=device), device=str(device),
                                      bound_opts={"optimize_bound_args": {"iteration": args.alpha_iters}})
                ptb = PerturbationLpNorm(norm=float("inf"), x_L=x - 0.01, x_U=x + 0.01)
                bx = BoundedTensor(x, ptb)
                lmethod = "CROWN" if method == "crown" else "CROWN-Optimized"

                def once():
                    return lirpa.compute_bounds(x=(bx,), method=lmethod, bound_upper=False)

                once()
                sync(device)

                class _Shim:  # measure() wants a BoundedModel-like object for the resident bytes
                    layout = None
                    graph = type("G", (), {"module": net, "nodes": []})()

                with measure(_Shim(), device) as rep:
                    lower, _ = once()
                    sync(device)
                times = []
                for _ in range(args.repeats):
                    sync(device)
                    t0 = time.perf_counter()
                    once()
                    sync(device)
                    times.append(time.perf_counter() - t0)
                row.update({"status": "ok", "seconds": statistics.median(times), "lower_sum": float(lower.sum()),
                            "baseline_bytes": [rep.baseline_bytes], "peak_bytes": [rep.peak_bytes],
                            "peak_by_kind": rep.peak_by_kind, "source": rep.source})
            except torch.cuda.OutOfMemoryError:
                row.update({"status": "oom"})
            except Exception as exc:  # auto_LiRPA 0.3 on a new torch: record, don't stop the table
                row.update({"status": f"error: {type(exc).__name__}: {str(exc)[:120]}"})
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            with open(out / "results.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            peak = max(row.get("peak_bytes", [0])) / GIB
            print(f"[P=1] {row['model']:<14} {method:<11} auto_LiRPA {row['status'][:40]:<4} peak {peak:.3f} GiB "
                  f"{row.get('seconds', float('nan')):.3f} s", flush=True)


# ----------------------------------------------------------------------------- report
def report(args):
    out = Path(args.out)
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    ref = {(r["model"], r["method"]): r for r in rows if r["P"] == 1 and r["plan"] == "replicate" and r["status"] == "ok"}
    table = []
    for r in rows:
        base = ref.get((r["model"], r["method"]))
        ok = r["status"] == "ok"
        peak = max(r["peak_bytes"]) if ok else None
        baseline = max(r["baseline_bytes"]) if ok else None
        entry = {
            "model": r["model"], "method": r["method"], "plan": r["plan"], "P": r["P"], "device": r["device"],
            "status": r["status"],
            "baseline_GiB": baseline / GIB if ok else None, "peak_GiB": peak / GIB if ok else None,
            "seconds": r.get("seconds"),
            "baseline_ratio": baseline / max(base["baseline_bytes"]) if ok and base else None,
            "peak_ratio": peak / max(base["peak_bytes"]) if ok and base else None,
            "time_ratio": r["seconds"] / base["seconds"] if ok and base else None,
            "lower_sum": r.get("lower_sum"), "lower_sum_ref": base.get("lower_sum") if base else None,
            "peak_by_kind_MiB": {k: round(v / 2 ** 20, 1) for k, v in (r.get("peak_by_kind") or {}).items()},
        }
        table.append(entry)
    fields = list(table[0].keys())
    with open(out / "memory.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for e in table:
            w.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in e.items()})

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["| model | method | plan | P | baseline GiB/rank | peak GiB/rank | time s | baseline ratio | "
             "peak ratio | time ratio | lower-bound sum (P=1 ref) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in table:
        status = "" if e["status"] == "ok" else f" ({e['status'][:30]})"
        lines.append(f"| {e['model']} | {e['method']} | {e['plan']}{status} | {e['P']} | {f(e['baseline_GiB'], '.4f')} | "
                     f"{f(e['peak_GiB'], '.4f')} | {f(e['seconds'], '.3f')} | {f(e['baseline_ratio'], '.3f')} | "
                     f"{f(e['peak_ratio'], '.3f')} | {f(e['time_ratio'], '.2f')} | "
                     f"{f(e['lower_sum'], '.5g')} ({f(e['lower_sum_ref'], '.5g')}) |")
    lines += ["", *targets(table)]
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    global _GPU_GIB
    _GPU_GIB = _gpu_gib_from(out)
    try:
        plot(table, out / "memory.png")
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)


# The issue's targets, as ratios to the one-device run of the same model and method.
def _target_rows(table):
    """(target, measured entry, limit) triples for every entry a target applies to."""
    for e in table:
        if e["status"] != "ok" or e["P"] == 1 or e["peak_ratio"] is None:
            continue
        P, mlp = e["P"], e["model"].startswith("mlp")
        if e["plan"] == "fsdp":
            yield "fsdp baseline <= 1/P + 5 %", e, "baseline_ratio", 1 / P + 0.05
        if mlp and e["method"] == "crown" and e["plan"] in ("fsdp", "spec", "mixed"):
            yield f"fsdp-family peak, wide MLP, P={P} (fsdp weights; spec where it helps)", e, "peak_ratio", \
                0.55 if P == 2 else 0.30
        if e["plan"] == "tp" and P == 2 and mlp:      # CNNs use tp on their Linear head only
            yield "tp peak, wide MLP, P = 2", e, "peak_ratio", 0.52
        if e["method"] == "alpha-crown" and e["plan"] == "spec" and P == 2:
            yield "alpha-CROWN peak, P = 2, alphas sharded (spec)", e, "peak_ratio", 0.55
        if P == 2 and e["device"] != "cpu":
            yield "wall time, P = 2 on GPUs", e, "time_ratio", 1.3


def targets(table):
    lines = ["| target | model | method | plan | P | measured | limit | met |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, e, key, limit in _target_rows(table):
        v = e[key]
        lines.append(f"| {name} | {e['model']} | {e['method']} | {e['plan']} | {e['P']} | {v:.3f} | {limit:.2f} | "
                     f"{'yes' if v <= limit else '**no**'} |")
    # One device: ours against auto_LiRPA 0.3 on the same model, same meter, same run.
    for e in table:
        if e["plan"] != "auto_LiRPA" or e["status"] != "ok":
            continue
        ours = next((o for o in table if o["model"] == e["model"] and o["method"] == e["method"] and o["P"] == 1
                     and o["plan"] == "replicate" and o["status"] == "ok"), None)
        if ours is not None:
            v = ours["peak_GiB"] / e["peak_GiB"]
            lines.append(f"| one-device peak <= auto_LiRPA's | {e['model']} | {e['method']} | replicate | 1 | "
                         f"{ours['peak_GiB']:.3f} / {e['peak_GiB']:.3f} GiB = {v:.3f} | 1.00 | "
                         f"{'yes' if v <= 1 else '**no**'} |")
    return lines


# Memory of the GPU the runs were made on, for marking out-of-memory runs in the plot.
_GPU_GIB = None


def _gpu_gib_from(out: Path):
    """total memory of the first GPU named in gpus.txt (written by gpu_bench.sh), in GiB."""
    try:
        for line in (out / "gpus.txt").read_text().splitlines():
            if "MiB" in line and "," in line and not line.startswith("name"):
                return float(line.split(",")[1].split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(e["model"], e["method"]) for e in table})
    cols = min(3, len(groups))
    rows_n = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    for ax, (model, method) in zip(axes.flat, groups):
        ref = [e for e in table if e["model"] == model and e["method"] == method and e["plan"] == "replicate"
               and e["P"] == 1 and e["peak_GiB"] is not None]
        for plan in ["fsdp", "fsdp-prefetch", "tp", "spec", "mixed"]:
            pts = sorted((e["P"], e["peak_GiB"]) for e in table if e["model"] == model and e["method"] == method
                         and e["plan"] == plan and e["peak_GiB"] is not None)
            if ref and pts:
                pts = [(1, ref[0]["peak_GiB"])] + [p for p in pts if p[0] != 1]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=plan)
        lirpa = [e for e in table if e["model"] == model and e["method"] == method and e["plan"] == "auto_LiRPA"
                 and e["peak_GiB"] is not None]
        if lirpa:
            ax.scatter([1], [lirpa[0]["peak_GiB"]], marker="x", color="black", label="auto_LiRPA 0.3", zorder=5)
        # Runs that did not fit: drawn at the device's memory, the line they crossed.
        ooms = [e for e in table if e["model"] == model and e["method"] == method and e["status"] == "oom"]
        if ooms and (_GPU_GIB or torch.cuda.is_available()):
            cap = _GPU_GIB or torch.cuda.get_device_properties(0).total_memory / GIB
            ax.axhline(cap, ls="--", color="red", lw=0.8, label=f"device memory ({cap:.0f} GiB)")
            ax.scatter([e["P"] for e in ooms], [cap] * len(ooms), marker="X", s=80, color="red",
                       label="out of memory", zorder=6)
        if ref:
            ps = [1, 2, 4]
            ax.plot(ps, [ref[0]["peak_GiB"] / p for p in ps], ls=":", color="grey", label="1/P")
        ax.set_title(f"{model} {method}", fontsize=9)
        ax.set_xlabel("P (ranks)")
        ax.set_ylabel("peak GiB per rank")
        ax.set_xticks([1, 2, 4])
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default=str(ROOT / "out" / "bench_memory"))
    r.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--models", default="mlp,cnn,resnet")
    r.add_argument("--widths", default="1024,2048")
    r.add_argument("--depth", type=int, default=4)
    r.add_argument("--methods", default="crown,alpha-crown")
    r.add_argument("--plans", default="replicate,fsdp,tp,spec,mixed")
    r.add_argument("--all-plans-at-p1", action="store_true", help="also run non-replicate plans on one process")
    r.add_argument("--alpha-iters", type=int, default=20)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--lirpa", action="store_true", help="also measure auto_LiRPA 0.3 on the MLPs (P = 1)")
    r.add_argument("--benchmarks", default=str(ROOT.parent / "shared" / "benchmarks"))
    p = sub.add_parser("report")
    p.add_argument("--out", default=str(ROOT / "out" / "bench_memory"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.cmd == "report":
        report(args)
        return
    run(args)
    exit_now_if_distributed(0)   # see placements.mesh: skip gloo's exit-time clean-up


if __name__ == "__main__":
    main()
