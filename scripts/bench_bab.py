#!/usr/bin/env python
"""Branch-and-bound scaling over ranks: domains per second and per-rank peak memory.

    scripts/bench_bab.sh [OUT_DIR]            # runs every configuration, then the report

`run` (one configuration; launched directly for one process or under torchrun) bounds one hard
instance with BaB for a fixed time (throughput) or a fixed number of rounds (memory), and appends
one JSON line to OUT/results.jsonl. `report` prints a Markdown table with the ratios to one
process and writes OUT/bab_scaling.csv and OUT/bab_scaling.md.

Throughput = domains bounded by all workers / seconds in BaB. Memory = the per-rank peak of the
CPU live-tensor meter (or the CUDA allocator) over the whole BaB stage, with the same domain batch
in total (P ranks bound batch/P each).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cmd_run(args):
    import torch
    import torch.distributed as dist

    import dtensor_verify as dv
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.memory import gather_reports, measure
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance
    from placements import apply_plan
    from placements.mesh import init_mesh

    torch.set_num_threads(args.threads)
    model = dv.load(args.onnx)
    mesh = init_mesh(shape=args.mesh)
    apply_plan(model, args.plan, mesh)
    world = dist.get_world_size() if dist.is_initialized() else 1
    shard = getattr(model.layout, "world_size", 1)
    prop = read_vnnlib(args.vnnlib, model.n_inputs, model.n_outputs)
    # --batch is the total over workers: every rank is a worker unless its shard group shares domains (tp).
    workers = world if getattr(model.layout, "splits_domains", True) else world // shard
    per_worker = max(1, args.batch // workers)
    opts = BabOptions(batch_size=per_worker, max_rounds=args.rounds)
    t0 = time.perf_counter()
    rep = None
    if args.meter:
        with measure(model) as rep:
            res = verify_instance(model, prop, None, args.timeout, attack=False, bab_options=opts)
    else:
        res = verify_instance(model, prop, None, args.timeout, attack=False, bab_options=opts)
    seconds = time.perf_counter() - t0
    reports = gather_reports(rep, model.layout) if args.meter else []
    bab = res.bounds.get("bab", {})
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    row = {"label": args.label, "world": world, "mesh": args.mesh or f"1x{world}", "plan": args.plan,
           "threads_per_rank": args.threads, "batch_total": args.batch, "batch_per_worker": per_worker,
           "verdict": res.verdict, "bab_seconds": bab.get("seconds"), "total_seconds": seconds,
           "domains_visited": bab.get("domains_visited_all_workers"), "rounds": bab.get("rounds"),
           "workers": bab.get("workers"), "onnx": Path(args.onnx).name, "vnnlib": Path(args.vnnlib).name,
           "peak_bytes_per_rank": [r.get("peak_bytes") for r in reports],
           "baseline_bytes_per_rank": [r.get("baseline_bytes") for r in reports],
           "torch": torch.__version__, "device": str(getattr(model.layout, "device", "cpu"))}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row))


def cmd_report(args):
    rows = [json.loads(line) for line in open(Path(args.out) / "results.jsonl")]
    out_rows = []
    base = {}
    for r in rows:
        kind = "memory" if r["peak_bytes_per_rank"] else "throughput"
        rate = (r["domains_visited"] or 0) / r["bab_seconds"] if r["bab_seconds"] else 0.0
        peak = max(r["peak_bytes_per_rank"]) if r["peak_bytes_per_rank"] else None
        if r["world"] == 1:
            base[kind] = (rate, peak)
        out_rows.append((kind, r, rate, peak))
    lines = ["| measure | configuration | ranks | batch (total / per worker) | domains | BaB s | domains/s | "
             "x one process | peak MiB per rank | x one process |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    csv_rows = []
    for kind, r, rate, peak in out_rows:
        b_rate, b_peak = base.get(kind, (None, None))
        x_rate = rate / b_rate if b_rate else None
        x_peak = peak / b_peak if (peak and b_peak) else None
        conf = f"{r['label']} (--mesh {r['mesh']} --plan {r['plan']})"
        lines.append(f"| {kind} | {conf} | {r['world']} | {r['batch_total']} / {r['batch_per_worker']} | "
                     f"{r['domains_visited']} | {r['bab_seconds']:.1f} | {rate:.0f} | "
                     f"{'' if x_rate is None else f'{x_rate:.2f}'} | "
                     f"{'' if peak is None else f'{peak / 2**20:.1f}'} | {'' if x_peak is None else f'{x_peak:.2f}'} |")
        csv_rows.append({"measure": kind, "label": r["label"], "mesh": r["mesh"], "plan": r["plan"],
                         "ranks": r["world"], "batch_total": r["batch_total"],
                         "batch_per_worker": r["batch_per_worker"], "domains": r["domains_visited"],
                         "bab_seconds": r["bab_seconds"], "domains_per_second": rate, "rate_ratio": x_rate,
                         "peak_bytes_per_rank": peak, "peak_ratio": x_peak, "instance": f"{r['onnx']} {r['vnnlib']}",
                         "torch": r["torch"], "device": r["device"], "threads_per_rank": r["threads_per_rank"]})
    text = "\n".join(lines)
    print(text)
    (Path(args.out) / "bab_scaling.md").write_text(text + "\n")
    with open(Path(args.out) / "bab_scaling.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)


def main():
    bench = ROOT.parent / "shared" / "benchmarks" / "mnist_fc"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--onnx", default=str(bench / "onnx" / "mnist-net_256x4.onnx.gz"))
    r.add_argument("--vnnlib", default=str(bench / "vnnlib" / "prop_2_0.05.vnnlib.gz"))
    r.add_argument("--timeout", type=float, default=40.0)
    r.add_argument("--plan", default="replicate")
    r.add_argument("--mesh", default=None)
    r.add_argument("--batch", type=int, default=512, help="domains split per round, all workers together")
    r.add_argument("--rounds", type=int, default=None, help="stop after this many rounds (memory runs)")
    r.add_argument("--meter", action="store_true", help="measure per-rank peak memory")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--label", default="")
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_run)
    q = sub.add_parser("report")
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_report)
    args = p.parse_args()
    args.func(args)
    import torch.distributed as dist
    if dist.is_initialized():
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
