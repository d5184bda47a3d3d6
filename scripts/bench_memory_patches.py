#!/usr/bin/env python
"""Process memory of CROWN on conv nets: ours with dense conv A-matrices, ours with patches
(`CrownOptions(patches=True)`, the default), and auto_LiRPA 0.3 (its default conv_mode
'patches'), side by side in one run.

Each (model, tool) runs in a fresh process with one thread: load the model, build the input box
(the first property of the benchmark's instances.csv), reset the kernel's peak-RSS counter
(`/proc/self/clear_refs` 5; `ru_maxrss` where that is refused), bound the outputs by CROWN
(lower and upper), and report the growth = peak RSS during bounding - RSS after loading, then
the peak of live tensor bytes of a second identical call (`dtensor_verify.memory.LiveTensorMeter`,
a TorchDispatchMode that counts auto_LiRPA's tensors as well as ours). With `--device cuda` the
peak comes from the CUDA allocator instead. The parent prints a table and writes CSV (and the
JSON lines).

    scripts/bench_memory_patches.py --models oval21:cifar_base_kw,oval21:cifar_wide_kw \
        --out docs/memory/patches_cpu
    scripts/bench_memory_patches.py one --model yolo_2023:TinyYOLO --tool ours-patches   # one cell

A model `folder:net@tensor` is the prefix of the net up to ONNX tensor `tensor`, flattened
(`bench_memory_onnx.model_file`). Each cell's bounds go to a temporary file; the parent compares
every tool's bounds with `ours-patches`' (`bench_memory_onnx.compare_bounds`: largest difference,
outputs where ours is looser by more than 1e-5) and puts that in the table.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks"
sys.path.insert(0, str(ROOT / "scripts"))
from bench_memory_onnx import compare_bounds, model_file, pad_swap_error, split_model, sub_network_box  # noqa: E402
TOOLS = ("ours-dense", "ours-patches", "lirpa-patches")
SUB_EPS = 0.02          # radius of a sub-network's input box (`net@start..end`; --sub-eps)
MIB = 1024 * 1024


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _instance(model: str):
    """(onnx path of the model or of its part, vnnlib path, the full model's onnx path) of the
    first instance of `folder:net[@[start..]end]` in the folder's instances.csv."""
    folder, net, end, start = split_model(model)
    for row in csv.reader(open(BENCH / folder / "instances.csv")):
        if Path(row[0]).stem.replace(".onnx", "") == net:
            full = BENCH / folder / (row[0].strip() + ".gz")
            return model_file(full, end, start=start), BENCH / folder / (row[1].strip() + ".gz"), full
    raise SystemExit(f"{model}: not in {BENCH / folder / 'instances.csv'}")


def _first_instance(model: str):
    """(onnx path, vnnlib path): `_instance` without the full model."""
    return _instance(model)[:2]


def _input_box(model: str, shape, sub_eps: float):
    """The first property's box; for a sub-network `net@start..end`, the box of `start`'s value
    at that box's centre +- sub_eps (`bench_memory_onnx.sub_network_box`)."""
    from model_zoo import vnnlib_input_box

    _, vnnlib_path, full = _instance(model)
    start = split_model(model)[3]
    if start is None:
        return vnnlib_input_box(vnnlib_path, shape)
    import dtensor_verify as dv
    xl, xu = vnnlib_input_box(vnnlib_path, tuple(dv.load(full).input_shape))
    return sub_network_box(full, start, xl, xu, sub_eps, shape)


def _bounder(model: str, tool: str, method: str, max_rows, device: str):
    """(bound, ibp_width, facts): `bound()` bounds the outputs of the model's first property box
    once and returns (lower, upper); `ibp_width()` the mean width of IBP's bounds (ours only);
    `facts` what the row reports about the model's preparation (auto_LiRPA: the Pad swap)."""
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from model_zoo import load_onnx_torch

    import dtensor_verify as dv
    onnx_path = _first_instance(model)[0]
    if tool.startswith("ours"):
        bounded = dv.load(onnx_path, device=device)
        xl, xu = (t.to(device) for t in _input_box(model, tuple(bounded.input_shape), SUB_EPS))
        opts = dv.CrownOptions(patches=tool == "ours-patches", max_rows=max_rows)

        def bound():
            with torch.no_grad():
                res = bounded.compute_bounds(xl, xu, method=method, crown_options=opts)
            return res.lower, res.upper

        def ibp_width():
            res = bounded.compute_bounds(xl, xu, method="ibp")
            return float((res.upper - res.lower).mean())
        return bound, ibp_width, {}
    import numpy as np
    from lirpa_reference import patch_auto_lirpa
    patch_auto_lirpa()
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm
    shape = tuple(dv.load(onnx_path).input_shape)
    if device.startswith("cuda"):
        # Full float32 for auto_LiRPA too, as ours runs (dv.load on the GPU sets it): cuDNN's default
        # TF32 convolutions are the likely cause of session 6's +-0.079 TinyYOLO differences (mean 1e-5).
        from dtensor_verify.device import exact_float32
        exact_float32()
    xl, xu = (t.to(device) for t in _input_box(model, shape, SUB_EPS))
    net, swapped, err = pad_swap_error(load_onnx_torch(onnx_path).to(device), xl, xu)
    if err > 0:
        raise SystemExit(f"{model}: the Pad -> Identity swap changed the function (max |diff| {err:.3g})")
    bm = BoundedModule(net, torch.zeros(1, *shape, device=device), bound_opts={"conv_mode": "patches"}, device=device)
    x = BoundedTensor((xl + xu) / 2, PerturbationLpNorm(norm=np.inf, x_L=xl, x_U=xu))

    def bound():
        with torch.no_grad():
            return bm.compute_bounds(x=(x,), method="IBP" if method == "ibp" else "CROWN")
    return bound, lambda: None, {"pads_swapped": swapped, "pad_swap_max_err": err}


def _peak_cpu(bound):
    """(lower, upper, seconds, RSS after load, peak RSS during the call, exact) in KiB."""
    gc.collect()
    rss_load = _status_kib("VmRSS")
    exact = _reset_peak()
    t0 = time.perf_counter()
    lo, up = bound()
    elapsed = time.perf_counter() - t0
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return lo, up, elapsed, rss_load, peak, exact


def _peak_cuda(bound, device):
    """The same from the CUDA caching allocator (allocated bytes, in KiB)."""
    import torch
    gc.collect()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    lo, up = bound()
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return lo, up, elapsed, base // 1024, torch.cuda.max_memory_allocated(device) // 1024, True


def _rss_watchdog(limit_mib: float) -> None:
    """Stop this process (exit 3, one line on stderr) once its RSS passes `limit_mib`: a cell
    that would take the shared machine's memory is recorded as "more than the limit" instead."""
    import threading

    def watch():
        while True:
            rss = _status_kib("VmRSS") / 1024
            if rss > limit_mib:
                print(f"RSS {rss:.0f} MiB passed the limit of {limit_mib:.0f} MiB: stopped", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.1)
    threading.Thread(target=watch, daemon=True).start()


def run_one(model: str, tool: str, method: str, max_rows: int | None = None, device: str = "cpu",
            bounds_file: Path | None = None, one_pass: bool = False) -> dict:
    import torch

    from dtensor_verify.memory import LiveTensorMeter
    torch.set_num_threads(1)
    bound, ibp_width, facts = _bounder(model, tool, method, max_rows, device)
    on_gpu = device.startswith("cuda")
    meter = LiveTensorMeter()

    def metered():
        with meter:
            return bound()
    first = metered if one_pass and not on_gpu else bound
    lo, up, elapsed, base, peak, exact = _peak_cuda(bound, device) if on_gpu else _peak_cpu(first)
    if bounds_file is not None:
        torch.save({"lower": lo.detach().cpu(), "upper": up.detach().cpu()}, bounds_file)
    # The live-tensor meter (deterministic: the most bytes of tensors created by the call alive
    # at once; counts any tool's tensors), CPU only: on a second identical call, or with
    # `one_pass` on the same call as RSS and time (the meter's bookkeeping is in both).
    live = None
    if not on_gpu:
        if not one_pass:
            metered()
        live = meter.peak / MIB
    return {"model": model, "tool": tool, "method": method, "device": device,
            "rss_after_load_mib": base / 1024, "peak_mib": peak / 1024, "growth_mib": (peak - base) / 1024,
            "live_peak_mib": live, "time_s": elapsed, "peak_reset": exact, "one_pass": one_pass,
            "lower_mean": float(lo.mean()), "upper_mean": float(up.mean()), "lower_min": float(lo.min()),
            "width": float((up - lo).mean()), "ibp_width": ibp_width(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "max_rows": max_rows, **facts}


def _run_cell(model: str, tool: str, args, env: dict, bounds_file: Path) -> dict:
    """One (model, tool) in a fresh process: its JSON row, or an error row."""
    cmd = [sys.executable, __file__, "one", "--model", model, "--tool", tool, "--method", args.method,
           "--device", args.device, "--bounds-file", str(bounds_file), "--benchmarks", str(BENCH)]
    if args.max_rows:
        cmd += ["--max-rows", str(args.max_rows)]
    if args.one_pass:
        cmd += ["--one-pass"]
    if args.rss_limit_mib:
        cmd += ["--rss-limit-mib", str(args.rss_limit_mib)]
    cmd += ["--sub-eps", str(args.sub_eps)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "tool": tool, "method": args.method, "error": f"timeout ({args.timeout:.0f} s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        said = [ln for ln in proc.stderr.strip().splitlines() if "warn" not in ln.lower()] or ["?"]
        why = f"exit {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode in (-9, 137) else "")
        return {"model": model, "tool": tool, "method": args.method, "error": f"{why}: {said[-1][:200]}"}
    return json.loads(lines[-1])


def _compare_to_ours(rows: list[dict], files: dict) -> None:
    """Each row of a tool other than ours-patches gets `vs_ours_patches`: how ours-patches'
    bounds relate to that tool's (compare_bounds; ours looser where n_looser > 0)."""
    import torch

    ref = files.get("ours-patches")
    if ref is None or not ref.exists():
        return
    ours = torch.load(ref)
    for row in rows:
        f = files.get(row["tool"])
        if row["tool"] != "ours-patches" and "error" not in row and f is not None and f.exists():
            other = torch.load(f)
            row["vs_ours_patches"] = compare_bounds((ours["lower"], ours["upper"]), (other["lower"], other["upper"]))


def run_all(args) -> list[dict]:
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    tmp = Path(tempfile.mkdtemp(prefix="dv_bench_bounds_"))
    for model in args.models.split(","):
        model_rows, files = [], {}
        for tool in args.tools.split(","):
            files[tool] = tmp / f"{len(rows) + len(model_rows)}_{tool}.pt"
            row = _run_cell(model, tool, args, env, files[tool])
            model_rows.append(row)
            print(json.dumps(row), flush=True)
        _compare_to_ours(model_rows, files)
        rows += model_rows
    return rows


CSV_KEYS = ["model", "tool", "method", "device", "rss_after_load_mib", "peak_mib", "growth_mib", "live_peak_mib",
            "time_s", "lower_mean", "upper_mean", "width", "ibp_width", "max_rows", "peak_reset", "one_pass", "threads", "torch",
            "vs_max_abs_diff", "vs_n_looser", "vs_max_looser", "vs_mean_gain", "vs_n_bounds", "pads_swapped",
            "pad_swap_max_err", "error"]


def _vs_cell(r: dict) -> str:
    """The comparison column: bounds of ours-patches against this row's tool."""
    vs = r.get("vs_ours_patches")
    if not vs:
        return "(reference)" if r["tool"] == "ours-patches" else "-"
    return (f"max diff {vs['max_abs_diff']:.2g}; ours looser on {vs['n_looser']} of {vs['n_bounds']} "
            f"(by <= {max(vs['max_looser'], 0.0):.2g}); mean gain {vs['mean_gain']:.3g}")


def write(rows: list[dict], out: Path, load: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    flat = [dict(r, **{f"vs_{k}": v for k, v in (r.get("vs_ours_patches") or {}).items()}) for r in rows]
    with open(out / "memory_patches.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
        w.writeheader()
        w.writerows(flat)
    end = " ".join(open("/proc/loadavg").read().split()[:3])
    lines = [f"load average at start: {load}; at the end: {end}", "",
             "| model | tool | device | after load MiB | growth MiB | live tensors peak MiB | time s | mean lower | "
             "mean width | IBP mean width | bounds of ours-patches vs this tool |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | | error: {r['error']} | | | | | | | |")
            continue
        live = "-" if r.get("live_peak_mib") is None else f"{r['live_peak_mib']:.1f}"
        ibp = "-" if r.get("ibp_width") is None else f"{r['ibp_width']:.4g}"
        lines.append(f"| {r['model']} | {r['tool']} | {r.get('device', 'cpu')} | {r['rss_after_load_mib']:.0f} | "
                     f"{r['growth_mib']:.1f} | {live} | {r['time_s']:.2f} | {r['lower_mean']:.4f} | "
                     f"{r.get('width', float('nan')):.4g} | {ibp} | {_vs_cell(r)} |")
    (out / "memory_patches.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    global BENCH, SUB_EPS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", nargs="?", default="all", choices=("all", "one"))
    p.add_argument("--models", default="oval21:cifar_base_kw,oval21:cifar_wide_kw,oval21:cifar_deep_kw")
    p.add_argument("--model")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--tool", choices=TOOLS)
    p.add_argument("--method", default="crown", choices=("crown", "ibp"))
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--device", default="cpu", help="cpu (RSS and live-tensor meter) or cuda[:N] (allocator peak)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="ours: CrownOptions.max_rows (rows per backward sweep of an intermediate layer)")
    p.add_argument("--out", type=Path)
    p.add_argument("--benchmarks", type=Path, default=BENCH, help="the VNN-COMP benchmarks folder")
    p.add_argument("--bounds-file", type=Path, help="one: save the bounds there (torch.save)")
    p.add_argument("--one-pass", action="store_true",
                   help="CPU: one call under the live-tensor meter gives RSS, time and live peak (default: "
                        "a second call for the meter)")
    p.add_argument("--rss-limit-mib", type=float, default=None,
                   help="stop a cell whose RSS passes this (a shared machine's memory); reported as an error row")
    p.add_argument("--sub-eps", type=float, default=SUB_EPS,
                   help="radius of the input box of a sub-network net@start..end around start's value at the centre")
    args = p.parse_args(argv)
    BENCH = args.benchmarks
    SUB_EPS = args.sub_eps
    if args.cmd == "one" and args.rss_limit_mib and not args.device.startswith("cuda"):
        _rss_watchdog(args.rss_limit_mib)
    if args.cmd == "one":
        print(json.dumps(run_one(args.model, args.tool, args.method, args.max_rows, args.device,
                                 args.bounds_file, args.one_pass)))
        return 0
    load = open("/proc/loadavg").read().split()[:3]
    rows = run_all(args)
    if args.out:
        write(rows, args.out, " ".join(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
