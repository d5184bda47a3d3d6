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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks"
TOOLS = ("ours-dense", "ours-patches", "lirpa-patches")
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


def _first_instance(model: str):
    """(onnx path, vnnlib path) of the first instance of `folder:net` in the folder's instances.csv."""
    folder, net = model.split(":")
    for row in csv.reader(open(BENCH / folder / "instances.csv")):
        if Path(row[0]).stem.replace(".onnx", "") == net:
            return BENCH / folder / (row[0].strip() + ".gz"), BENCH / folder / (row[1].strip() + ".gz")
    raise SystemExit(f"{model}: not in {BENCH / folder / 'instances.csv'}")


def _bounder(model: str, tool: str, method: str, max_rows, device: str):
    """(bound, ibp_width): `bound()` bounds the outputs of the model's first property box once
    and returns (lower, upper); `ibp_width()` the mean width of IBP's bounds (ours only)."""
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from model_zoo import load_onnx_torch, vnnlib_input_box

    import dtensor_verify as dv
    onnx_path, vnnlib_path = _first_instance(model)
    if tool.startswith("ours"):
        bounded = dv.load(onnx_path, device=device)
        xl, xu = (t.to(device) for t in vnnlib_input_box(vnnlib_path, tuple(bounded.input_shape)))
        opts = dv.CrownOptions(patches=tool == "ours-patches", max_rows=max_rows)

        def bound():
            with torch.no_grad():
                res = bounded.compute_bounds(xl, xu, method=method, crown_options=opts)
            return res.lower, res.upper

        def ibp_width():
            res = bounded.compute_bounds(xl, xu, method="ibp")
            return float((res.upper - res.lower).mean())
        return bound, ibp_width
    import numpy as np
    from lirpa_reference import patch_auto_lirpa
    patch_auto_lirpa()
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm
    shape = tuple(dv.load(onnx_path).input_shape)
    xl, xu = (t.to(device) for t in vnnlib_input_box(vnnlib_path, shape))
    net = _without_zero_pads(load_onnx_torch(onnx_path)).to(device)
    bm = BoundedModule(net, torch.zeros(1, *shape, device=device), bound_opts={"conv_mode": "patches"}, device=device)
    x = BoundedTensor((xl + xu) / 2, PerturbationLpNorm(norm=np.inf, x_L=xl, x_U=xu))

    def bound():
        with torch.no_grad():
            return bm.compute_bounds(x=(x,), method="IBP" if method == "ibp" else "CROWN")
    return bound, lambda: None


def _without_zero_pads(net):
    """onnx2torch's Pad modules whose pads are all 0 (TinyYOLO has two) replaced by nn.Identity:
    the same function, and auto_LiRPA 0.3 cannot parse them ("BoundPad.forward() missing 1
    required positional argument: 'pad'"). Any other Pad is left as it is."""
    import torch.nn as nn

    for name, module in list(net.named_modules()):
        pads = getattr(module, "pads", None)
        if type(module).__name__ == "OnnxPadStatic" and pads is not None and not any(int(p) for p in pads):
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            setattr(parent, name.rpartition(".")[2], nn.Identity())
    return net


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


def run_one(model: str, tool: str, method: str, max_rows: int | None = None, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(1)
    bound, ibp_width = _bounder(model, tool, method, max_rows, device)
    on_gpu = device.startswith("cuda")
    lo, up, elapsed, base, peak, exact = _peak_cuda(bound, device) if on_gpu else _peak_cpu(bound)
    # Then once more under the live-tensor meter (deterministic: the most bytes of tensors
    # created by the call alive at once; counts any tool's tensors). CPU only.
    live = None
    if not on_gpu:
        from dtensor_verify.memory import LiveTensorMeter
        meter = LiveTensorMeter()
        with meter:
            bound()
        live = meter.peak / MIB
    return {"model": model, "tool": tool, "method": method, "device": device,
            "rss_after_load_mib": base / 1024, "peak_mib": peak / 1024, "growth_mib": (peak - base) / 1024,
            "live_peak_mib": live, "time_s": elapsed, "peak_reset": exact,
            "lower_mean": float(lo.mean()), "upper_mean": float(up.mean()), "lower_min": float(lo.min()),
            "width": float((up - lo).mean()), "ibp_width": ibp_width(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "max_rows": max_rows}


def run_all(args) -> list[dict]:
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for model in args.models.split(","):
        for tool in args.tools.split(","):
            cmd = [sys.executable, __file__, "one", "--model", model, "--tool", tool, "--method", args.method]
            if args.max_rows:
                cmd += ["--max-rows", str(args.max_rows)]
            cmd += ["--device", args.device]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                row = {"model": model, "tool": tool, "method": args.method, "error": f"timeout ({args.timeout:.0f} s)"}
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                row = {"model": model, "tool": tool, "method": args.method, "error": tail[:200]}
            else:
                row = json.loads(lines[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def write(rows: list[dict], out: Path, load: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = ["model", "tool", "method", "device", "rss_after_load_mib", "peak_mib", "growth_mib", "live_peak_mib", "time_s",
            "lower_mean", "upper_mean", "width", "ibp_width", "max_rows", "peak_reset", "threads", "torch", "error"]
    with open(out / "memory_patches.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"load average at start: {load}", "",
             "| model | tool | device | after load MiB | growth MiB | live tensors peak MiB | time s | mean lower | "
             "mean width | IBP mean width |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | | error: {r['error']} | | | | | | |")
            continue
        live = "-" if r.get("live_peak_mib") is None else f"{r['live_peak_mib']:.1f}"
        ibp = "-" if r.get("ibp_width") is None else f"{r['ibp_width']:.4g}"
        lines.append(f"| {r['model']} | {r['tool']} | {r.get('device', 'cpu')} | {r['rss_after_load_mib']:.0f} | "
                     f"{r['growth_mib']:.1f} | {live} | {r['time_s']:.2f} | {r['lower_mean']:.4f} | "
                     f"{r.get('width', float('nan')):.4g} | {ibp} |")
    (out / "memory_patches.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
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
    args = p.parse_args(argv)
    if args.cmd == "one":
        print(json.dumps(run_one(args.model, args.tool, args.method, args.max_rows, args.device)))
        return 0
    load = open("/proc/loadavg").read().split()[:3]
    rows = run_all(args)
    if args.out:
        write(rows, args.out, " ".join(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
