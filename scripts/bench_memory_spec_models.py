#!/usr/bin/env python
"""Per-rank memory of CROWN under `--plan spec` on real VNN-COMP models (ViT, TinyYOLO), P = 1, 2, 4.

Two sub-commands; `scripts/bench_memory_spec_models.sh` runs them in order, so every ratio is
measured side by side in one run:

  run     launched once per P (plain python for P = 1, torchrun above; one thread per rank):
          each rank loads every model, places it (`replicate` at P = 1, `spec` above), takes the
          input box of the model's first instance in instances.csv and bounds all outputs by CROWN
          (lower and upper) once, under dtensor_verify.memory's live-tensor meter (deterministic
          peak of live tensor bytes created by the call) and with the kernel's peak-RSS counter
          reset before the call (`/proc/self/clear_refs` 5, `VmHWM`). Rank 0 appends one JSON
          line per model to OUT/results.jsonl with every rank's numbers.
  report  OUT/results.jsonl -> OUT/spec_models.csv and OUT/spec_models.md: max over ranks of the
          live peak and of the RSS growth, their ratios to the P = 1 run, the targets
          (P = 2 <= 0.55x, P = 4 <= 0.30x of one process), and whether the bounds agree.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MIB = 2 ** 20
MODELS = {"vit_pgd": "vit_2023:pgd_2_3_16", "vit_ibp": "vit_2023:ibp_3_3_8", "yolo": "yolo_2023:TinyYOLO"}
TARGET = {2: 0.55, 4: 0.30}

from bench_memory_patches import _reset_peak, _status_kib  # noqa: E402 (the same /proc readings)


def bound_one(name: str, mesh, world: int, max_rows) -> dict:
    """Load, place, bound once under both meters; this rank's numbers."""
    import dtensor_verify as dv
    from bench_memory_patches import _first_instance
    from dtensor_verify.memory import LiveTensorMeter, resident_bytes
    from model_zoo import vnnlib_input_box
    from placements import apply_plan

    onnx_path, vnnlib_path = _first_instance(MODELS[name])
    model = dv.load(onnx_path)
    plan = "replicate" if world == 1 else "spec"
    apply_plan(model, plan, mesh)
    xl, xu = vnnlib_input_box(vnnlib_path, tuple(model.input_shape))
    opts = dv.CrownOptions(max_rows=max_rows)
    gc.collect()
    rss_load = _status_kib("VmRSS")
    exact = _reset_peak()
    meter = LiveTensorMeter()
    t0 = time.perf_counter()
    with torch.no_grad(), meter:
        res = model.compute_bounds(xl, xu, method="crown", crown_options=opts)
    seconds = time.perf_counter() - t0
    peak_rss = _status_kib("VmHWM") if exact else rss_load
    return {"plan": plan, "live_peak_mib": meter.peak / MIB, "rss_growth_mib": (peak_rss - rss_load) / 1024,
            "rss_after_load_mib": rss_load / 1024, "peak_reset": exact, "seconds": seconds,
            "resident_mib": sum(resident_bytes(model).values()) / MIB,
            "peak_by_kind_mib": {k: round(v / MIB, 1) for k, v in meter.peak_by_kind.items()},
            "lower_mean": float(res.lower.mean()), "upper_mean": float(res.upper.mean()),
            "width": float((res.upper - res.lower).mean())}


def run(args):
    from placements import init_mesh
    from placements.mesh import exit_now_if_distributed

    torch.set_num_threads(1)
    mesh = init_mesh()
    world = mesh.size() if mesh is not None else 1
    rank = mesh.get_rank() if mesh is not None else 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        if world not in [int(p) for p in args.ps_for.get(name, "1,2,4").split(",")]:
            continue
        try:
            mine = bound_one(name, mesh, world, args.max_rows)
        except Exception as exc:  # recorded in the table; the run goes on with the next model
            mine = {"plan": "replicate" if world == 1 else "spec", "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
        ranks = [mine]
        if world > 1:
            import torch.distributed as dist
            ranks = [None] * world
            dist.all_gather_object(ranks, mine)
        if rank == 0:
            row = {"model": name, "onnx": MODELS[name], "P": world, "plan": mine["plan"], "max_rows": args.max_rows,
                   "threads": torch.get_num_threads(), "torch": torch.__version__, "ranks": ranks}
            with open(out / "results.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            failed = [r["error"] for r in ranks if "error" in r]
            if failed:
                print(f"[P={world}] {name:<8} error: {failed[0]}", flush=True)
                continue
            print(f"[P={world}] {name:<8} live peak/rank {max(r['live_peak_mib'] for r in ranks):8.1f} MiB  "
                  f"RSS growth/rank {max(r['rss_growth_mib'] for r in ranks):8.1f} MiB  "
                  f"{max(r['seconds'] for r in ranks):7.1f} s", flush=True)
        gc.collect()
    exit_now_if_distributed(0)


def report(args):
    out = Path(args.out)
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    errors = [f"- {r['model']} P = {r['P']}: {x['error']}" for r in rows
              for x in [next((x for x in r["ranks"] if "error" in x), {})] if x]
    rows = [r for r in rows if not any("error" in x for x in r["ranks"])]
    ref = {r["model"]: r for r in rows if r["P"] == 1}
    table = []
    for r in rows:
        base = ref.get(r["model"])
        live = max(x["live_peak_mib"] for x in r["ranks"])
        rss = max(x["rss_growth_mib"] for x in r["ranks"])
        e = {"model": r["model"], "onnx": r["onnx"], "P": r["P"], "plan": r["plan"], "max_rows": r["max_rows"],
             "live_peak_mib": live, "rss_growth_mib": rss,
             "resident_mib": max(x["resident_mib"] for x in r["ranks"]),
             "seconds": max(x["seconds"] for x in r["ranks"]),
             "live_ratio": live / max(x["live_peak_mib"] for x in base["ranks"]) if base else None,
             "rss_ratio": rss / max(x["rss_growth_mib"] for x in base["ranks"]) if base else None,
             "target": TARGET.get(r["P"]),
             "width": r["ranks"][0]["width"], "width_ref": base["ranks"][0]["width"] if base else None,
             "peak_by_kind_rank0_mib": json.dumps(r["ranks"][0]["peak_by_kind_mib"]),
             "threads": r["threads"], "torch": r["torch"]}
        e["met"] = None if e["target"] is None or e["live_ratio"] is None else e["live_ratio"] <= e["target"]
        table.append(e)
    with open(out / "spec_models.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0].keys()))
        w.writeheader()
        w.writerows(table)

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["| model | P | plan | live peak MiB/rank | ratio | RSS growth MiB/rank | ratio | target | met | "
             "time s | mean width (P=1) | peak by kind, rank 0 (MiB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in table:
        met = "-" if e["met"] is None else ("yes" if e["met"] else "**no**")
        lines.append(f"| {e['model']} | {e['P']} | {e['plan']} | {e['live_peak_mib']:.1f} | {f(e['live_ratio'], '.3f')} | "
                     f"{e['rss_growth_mib']:.1f} | {f(e['rss_ratio'], '.3f')} | {f(e['target'], '.2f')} | {met} | "
                     f"{e['seconds']:.1f} | {e['width']:.5g} ({f(e['width_ref'], '.5g')}) | "
                     f"{e['peak_by_kind_rank0_mib']} |")
    lines += ["", "Errors:", *errors] if errors else []
    (out / "spec_models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default=str(ROOT / "out" / "spec_models"))
    r.add_argument("--models", default="vit_pgd,yolo", help=",".join(MODELS))
    r.add_argument("--max-rows", type=int, default=None, help="CrownOptions.max_rows")
    r.add_argument("--ps", action="append", default=[], metavar="MODEL=P,P",
                   help="run MODEL only at these P (e.g. yolo=1,2); default every P")
    p = sub.add_parser("report")
    p.add_argument("--out", default=str(ROOT / "out" / "spec_models"))
    args = ap.parse_args(argv)
    if args.cmd == "report":
        report(args)
        return
    args.ps_for = dict(item.split("=", 1) for item in args.ps)
    run(args)


if __name__ == "__main__":
    main()
