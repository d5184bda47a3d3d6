#!/usr/bin/env python
"""Bound engine speed on CPU: ours vs auto_LiRPA 0.3, side by side in one run.

For each model, times IBP / CROWN / alpha-CROWN for dtensor_verify and IBP / CROWN for
auto_LiRPA 0.3 (tests/lirpa_reference.py, patched for torch 2.14; its alpha-CROWN is not a
usable reference on this torch, see DESIGN.md), each the median of --repeats runs after one
warm-up, and prints the ratio ours/theirs (medians; also the ratio of the fastest runs, which
is less sensitive to other jobs on a shared machine). Ours and theirs run interleaved.
CROWN is timed in two configurations:

* default: ours with CrownOptions() (IBP-intersected intermediate bounds, IBP-stable neurons
  skipped) vs auto_LiRPA's default (sparse_intermediate_bounds=True);
* pure:    ours with CrownOptions(intersect_ibp=False, skip_stable=False) vs auto_LiRPA with
  sparse_intermediate_bounds=False (the same algorithm: every neuron gets a backward sweep).

It also reports bound agreement: max |ours - theirs| of the CROWN lower bounds (pure vs pure,
default vs default) and, for default, the smallest (ours - theirs) of the lower bounds (>= 0 up
to rounding: ours is never looser).

Bounds are of the network outputs (C = identity), for one input box:
* mnist_256x6: mnist_fc mnist-net_256x6.onnx.gz, box of mnist_fc prop_0_0.03 (eps 0.03 around
  image 0, clipped to [0, 1]);
* wide_mlp: a random (seed 0) MLP 784 -> 2048 x 4 -> 10 in PyTorch's default init, box of
  radius --wide-eps around a seeded uniform [0, 1] point.

    .venv/bin/python scripts/bench_bounds.py [--repeats 5] [--csv out/bench_bounds.csv]
        [--models mnist_256x6,wide_mlp] [--threads 1] [--profile]
"""
from __future__ import annotations

import argparse
import csv
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import dtensor_verify as dv  # noqa: E402
from dtensor_verify.device import cpu_model  # noqa: E402

MODELS = ("mnist_256x6", "wide_mlp")
PURE = dv.CrownOptions(intersect_ibp=False, skip_stable=False)
LIRPA_PURE = {"sparse_intermediate_bounds": False}


def benchmarks_dir() -> Path:
    p = ROOT.parent / "shared" / "benchmarks"
    if not p.is_dir():
        raise SystemExit(f"benchmark data not found at {p}")
    return p


# ------------------------------------------------------------------------------------- models
def build_case(name: str, wide_eps: float):
    """(ours: BoundedModel, theirs: nn.Module, x_lower, x_upper, description)."""
    if name == "mnist_256x6":
        import model_zoo as mz
        root = benchmarks_dir()
        onnx_path = root / "mnist_fc/onnx/mnist-net_256x6.onnx.gz"
        spec = root / "mnist_fc/vnnlib/prop_0_0.03.vnnlib.gz"
        ours = dv.load(onnx_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = mz.load_onnx_torch(onnx_path)
        from dtensor_verify.specs import read_vnnlib
        prop = read_vnnlib(spec, n_inputs=ours.n_inputs, n_outputs=ours.n_outputs)
        region = prop.regions[0]
        xl = torch.tensor(region.lower, dtype=torch.float32).reshape(1, *ours.input_shape)
        xu = torch.tensor(region.upper, dtype=torch.float32).reshape(1, *ours.input_shape)
        return ours, theirs, xl, xu, "mnist-net_256x6.onnx.gz (784-256x6-10), prop_0_0.03 box"
    if name == "wide_mlp":
        torch.manual_seed(0)
        widths = [784, 2048, 2048, 2048, 2048, 10]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        theirs = nn.Sequential(*layers).eval()
        for p in theirs.parameters():
            p.requires_grad_(False)
        ours = dv.load(theirs, input_shape=(784,))
        g = torch.Generator().manual_seed(1)
        x0 = torch.rand(1, 784, generator=g)
        xl, xu = x0 - wide_eps, x0 + wide_eps
        return ours, theirs, xl, xu, f"random MLP 784-2048x4-10 (seed 0), eps {wide_eps:g} box"
    raise SystemExit(f"unknown model '{name}'; choose from {', '.join(MODELS)}")


# ------------------------------------------------------------------------------------- timing
def timed_pair(ours_fn, theirs_fn, repeats: int):
    """Median seconds of ours and of theirs, interleaved (ours, theirs, ours, ...) after one
    untimed warm-up call of each, so that load changes on a shared machine hit both alike.
    Returns (ours: (median, times, last result), theirs: same or None)."""
    fns = [ours_fn] + ([theirs_fn] if theirs_fn is not None else [])
    outs = [f() for f in fns]
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = f()
            times[i].append(time.perf_counter() - t0)
    res = [(statistics.median(t), t, o) for t, o in zip(times, outs)]
    return res[0], (res[1] if len(res) > 1 else None)


def lirpa(theirs, xl, xu, method, bound_opts=None):
    import lirpa_reference as lr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lr.lirpa_bounds(theirs, xl, xu, method, bound_opts=bound_opts)


def unstable_fraction(ours, xl, xu) -> str:
    """Unstable ReLU inputs under ours' default CROWN intermediate bounds, per layer."""
    from dtensor_verify.methods import intermediate_bounds
    with torch.no_grad():
        bounds, _ = intermediate_bounds(ours.graph, (xl, xu), ours.layout, dv.CrownOptions())
    parts = []
    for name in ours.graph.preactivation_nodes():
        lo, up = bounds[name]
        parts.append(f"{int(((lo < 0) & (up > 0)).sum())}/{lo.numel()}")
    return " ".join(parts)


def run_model(name, args, rows, notes):
    ours, theirs, xl, xu, desc = build_case(name, args.wide_eps)
    print(f"\n## {name}: {desc}", flush=True)
    print(f"unstable ReLUs per layer (ours, CROWN): {unstable_fraction(ours, xl, xu)}", flush=True)

    def ours_fn(method, **kw):
        def f():
            with torch.no_grad() if method != "alpha-crown" else torch.enable_grad():
                return ours.compute_bounds(xl, xu, method=method, **kw)
        return f

    configs = [
        ("IBP", ours_fn("ibp"), lambda: lirpa(theirs, xl, xu, "IBP")),
        ("CROWN (default)", ours_fn("crown"), lambda: lirpa(theirs, xl, xu, "CROWN")),
        ("CROWN (pure)", ours_fn("crown", crown_options=PURE),
         lambda: lirpa(theirs, xl, xu, "CROWN", LIRPA_PURE)),
        ("alpha-CROWN", ours_fn("alpha-crown"), None),
    ]
    results = {}
    for label, ours_f, theirs_f in configs:
        (t_ours, all_ours, r_ours), theirs_res = timed_pair(ours_f, theirs_f, args.repeats)
        t_theirs, all_theirs, r_theirs = theirs_res if theirs_res is not None else (None, [], None)
        results[label] = (r_ours, r_theirs)
        ratio = t_ours / t_theirs if t_theirs else None
        extra = ""
        if label == "alpha-CROWN":
            extra = f"{r_ours.info.get('iterations')} iterations"
        min_ratio = min(all_ours) / min(all_theirs) if all_theirs else None
        rows.append({"model": name, "method": label, "ours_s": t_ours, "lirpa_s": t_theirs, "ratio": ratio,
                     "ours_min_s": min(all_ours), "lirpa_min_s": min(all_theirs) if all_theirs else None,
                     "min_ratio": min_ratio,
                     "ours_all_s": " ".join(f"{t:.4f}" for t in all_ours),
                     "lirpa_all_s": " ".join(f"{t:.4f}" for t in all_theirs), "note": extra})
        print(f"  {label:<16} ours {t_ours * 1e3:9.1f} ms" +
              (f"   auto_LiRPA {t_theirs * 1e3:9.1f} ms   ratio {ratio:.2f} (of minima {min_ratio:.2f})"
               if t_theirs else "") +
              (f"   ({extra})" if extra else ""), flush=True)

    # Bound agreement (CROWN lower bounds).
    (o_pure, t_pure) = results["CROWN (pure)"]
    (o_def, t_def) = results["CROWN (default)"]
    lo_pure, lo_def = o_pure.lower.detach(), o_def.lower.detach()
    diff_pure = (lo_pure - t_pure[0]).abs().max().item()
    diff_def = (lo_def - t_def[0]).abs().max().item()
    gain_def = (lo_def - t_def[0]).min().item()
    alpha_lo = results["alpha-CROWN"][0].lower.detach()
    ibp_lo = results["IBP"][0].lower.detach()
    notes.append({
        "model": name,
        "pure_maxdiff": diff_pure,
        "default_maxdiff": diff_def,
        "default_min_gain": gain_def,
        "ours_pure_vs_default": (lo_def - lo_pure).abs().max().item(),
        "min_lower": {"IBP": ibp_lo.min().item(), "CROWN": lo_def.min().item(),
                      "alpha-CROWN": alpha_lo.min().item()},
    })
    print(f"  CROWN lower bounds: max|ours - auto_LiRPA| pure {diff_pure:.3g}, default {diff_def:.3g} "
          f"(min ours - theirs {gain_def:.3g}); ours default vs pure {notes[-1]['ours_pure_vs_default']:.3g}",
          flush=True)

    if args.profile:
        for label, fn in (("ours CROWN (default)", configs[1][1]), ("auto_LiRPA CROWN (default)", configs[1][2])):
            pr = cProfile.Profile()
            pr.enable()
            fn()
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
            print(f"\n### cProfile, {label}, {name} (top 15 by own time)\n{s.getvalue()}", flush=True)


# ------------------------------------------------------------------------------------- output
def fmt_ms(t):
    return "-" if t is None else f"{t * 1e3:.1f}"


def markdown(rows, notes) -> str:
    lines = ["| model | method | ours (ms) | auto_LiRPA 0.3 (ms) | ours / auto_LiRPA | ours / auto_LiRPA, fastest runs |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        min_ratio = "-" if r["min_ratio"] is None else (f"{r['min_ratio']:.2f} ({fmt_ms(r['ours_min_s'])} / "
                                                         f"{fmt_ms(r['lirpa_min_s'])})")
        method = r["method"] + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {r['model']} | {method} | {fmt_ms(r['ours_s'])} | {fmt_ms(r['lirpa_s'])} | {ratio} "
                     f"| {min_ratio} |")
    lines += ["", "| model | max abs diff CROWN lower, pure vs pure | max abs diff, default vs default "
              "| min (ours - theirs), default | min lower: IBP / CROWN / alpha-CROWN |",
              "| --- | ---: | ---: | ---: | --- |"]
    for n in notes:
        m = n["min_lower"]
        lines.append(f"| {n['model']} | {n['pure_maxdiff']:.2e} | {n['default_maxdiff']:.2e} | "
                     f"{n['default_min_gain']:.2e} | {m['IBP']:.4g} / {m['CROWN']:.4g} / {m['alpha-CROWN']:.4g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median), after 1 warm-up")
    p.add_argument("--csv", default=str(ROOT / "out" / "bench_bounds.csv"), help="CSV output")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a small shared VM, OpenMP spin-waits of "
                        "several threads competing with other jobs distort timings; 0 = torch's choice)")
    p.add_argument("--wide-eps", type=float, default=0.002, help="L-inf radius of the wide_mlp box")
    p.add_argument("--profile", action="store_true", help="also cProfile one CROWN run of ours and of auto_LiRPA")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model '{m}'; choose from {', '.join(MODELS)}")
    import lirpa_reference as lr
    lr.patch_auto_lirpa()

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# bench_bounds: {when}; CPU {cpu_model()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s), median of {args.repeats} after 1 warm-up")
    rows, notes = [], []
    for m in models:
        run_model(m, args, rows, notes)

    print("\n" + markdown(rows, notes))
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["model", "method", "ours_s", "lirpa_s", "ratio", "ours_min_s",
                                            "lirpa_min_s", "min_ratio", "ours_all_s", "lirpa_all_s", "note"])
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)) for k, v in r.items()})
    print(f"\nCSV written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
