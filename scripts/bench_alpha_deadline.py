"""On time on the ViT: how long after its time limit does `verify_instance` end on a vit_2023
instance, before / after the deadline checks inside the bound methods (dtensor_verify/deadline.py).
Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_alpha_deadline.py --out deadline.csv \
        [--instances ibp_3_3_8_1829] [--limits 30] [--tools after,before] [--before-src DIR] \
        [--kill-after 600] [--threads 1] [--device cpu] [--share N] [--no-attack]

One subprocess per (tool, instance, limit): it loads the model, reads the property, then runs the
verdict pipeline (`verify_instance`, as `dtensor-verify benchmark` and `run` call it) with the
limit, and reports the seconds from the call to its return (`--no-attack`: without the PGD
stages, so that the bound stages meet the limit: on a loaded CPU the first attack alone can take
it). `after`: this checkout; `before`: the code of `--before-src` (e.g. `git archive <base>
dtensor_verify | tar -x -C DIR`). A run still going `--kill-after` seconds past its limit is
killed and reported as such (its overrun at least that). `--share N` sets
DTENSOR_VERIFY_SHARE_DEVICE=N (and with --device-bytes B, DTENSOR_VERIFY_DEVICE_BYTES=B: a GPU
share emulated on a CPU).
Columns: verdict, seconds (call to return), over_s (seconds - limit), phases (the pipeline's
seconds per stage, where it returned), peak RSS (MB).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "..", "shared", "benchmarks", "vit_2023")
FIELDS = ["tool", "instance", "limit_s", "verdict", "seconds", "over_s", "message", "phases", "peak_rss_mb",
          "load_avg"]


def worker(instance: str, limit: float, threads: int, device: str, attack: bool) -> None:
    import torch

    torch.set_num_threads(threads)
    from dtensor_verify.cli_common import load_model
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance

    onnx_path = os.path.join(BENCH, "onnx", instance.rsplit("_", 1)[0] + ".onnx.gz")
    model = load_model(onnx_path, torch.device(device))
    prop = read_vnnlib(os.path.join(BENCH, "vnnlib", instance + ".vnnlib.gz"), n_inputs=model.n_inputs,
                       n_outputs=model.n_outputs)
    print(f"START {time.time()!r}", flush=True)
    t0 = time.perf_counter()
    res = verify_instance(model, prop, onnx_path, limit, attack=attack)
    took = time.perf_counter() - t0
    row = {"verdict": res.verdict, "seconds": round(took, 2), "message": (res.message or "")[:120],
           "phases": json.dumps({k: round(v, 1) for k, v in res.phases.items()}),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    print("ROW " + json.dumps(row), flush=True)


def _run_one(args, tool: str, instance: str, limit: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", instance, str(limit), "--threads",
           str(args.threads), "--device", args.device] + (["--no-attack"] if args.no_attack else [])
    env = {**os.environ, "PYTHONPATH": args.before_src if tool == "before" else ROOT}
    if args.share:
        env["DTENSOR_VERIFY_SHARE_DEVICE"] = str(args.share)
    if args.device_bytes:
        env["DTENSOR_VERIFY_DEVICE_BYTES"] = str(args.device_bytes)
    row = {"tool": tool, "instance": instance, "limit_s": limit}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    started = None
    lines = []
    # The child prints START when its call begins; it is killed `kill_after` s past the limit.
    while True:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("START "):
            started = time.time()
            break
    if started is None:
        proc.wait()
        return {**row, "verdict": "failed", "message": proc.stderr.read().strip().splitlines()[-1:]}
    try:
        out, err = proc.communicate(timeout=limit + args.kill_after)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        took = time.time() - started
        return {**row, "verdict": "killed", "seconds": round(took, 1), "over_s": round(took - limit, 1),
                "message": f"still running {args.kill_after:g} s past the limit: killed"}
    got = [json.loads(x[4:]) for x in out.splitlines() if x.startswith("ROW ")]
    if not got:
        return {**row, "verdict": "failed", "message": err.strip().splitlines()[-1:]}
    res = {**row, **got[0]}
    res["over_s"] = round(res["seconds"] - limit, 2)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="alpha_deadline.csv")
    ap.add_argument("--instances", default="ibp_3_3_8_1829")
    ap.add_argument("--limits", default="30")
    ap.add_argument("--tools", default="after,before")
    ap.add_argument("--before-src", default=ROOT)
    ap.add_argument("--kill-after", type=float, default=600.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--share", type=int, default=0)
    ap.add_argument("--device-bytes", type=int, default=0)
    ap.add_argument("--no-attack", action="store_true",
                    help="no PGD stages (on a loaded CPU the first attack alone can take the whole limit)")
    ap.add_argument("--worker", nargs=2, metavar=("INSTANCE", "LIMIT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker[0], float(args.worker[1]), args.threads, args.device, not args.no_attack)
    rows = []
    for instance in args.instances.split(","):
        for limit in (float(x) for x in args.limits.split(",")):
            for tool in args.tools.split(","):
                rows.append({**_run_one(args, tool, instance, limit), "load_avg": round(os.getloadavg()[0], 1)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    fmt = "{:<7} {:<16} {:>7} {:>8} {:>8} {:>8} {:>7} {:>6}  {}"
    print(fmt.format("tool", "instance", "limit_s", "verdict", "seconds", "over_s", "rss_MB", "load", "phases"))
    for r in rows:
        print(fmt.format(*(str(r.get(k, "")) for k in ("tool", "instance", "limit_s", "verdict", "seconds", "over_s",
                                                        "peak_rss_mb", "load_avg", "phases"))))
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows([{k: r.get(k, "") for k in FIELDS} for r in rows])
    import torch
    print(f"wrote {args.out}; torch {torch.__version__}, {args.threads} thread(s), {args.device}, "
          f"share {args.share or 1}, attack {'off' if args.no_attack else 'on'}, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
