"""Branch and bound's first step on a vit_2023 instance at an emulated GPU share, on a CPU: the
largest single allocation and the peak of live bytes (issue 21: two ibp_3_3_8 rows of the H100 run
at SHARE=8 ended "Tried to allocate 38.85 GiB").

The roots' intermediate bounds come from IBP on the instance's box (scaled by --eps-scale around its
centre; CROWN takes ~1,000 s on this CPU): the shapes of every tensor, and so the sizes asked for,
do not depend on the bound values. Then `BabSolver.add_roots` runs as in the pipeline (the roots
bounded, branching's trial splits: `mixed_fsb` on a ViT, each candidate's layers behind the cut
bounded again) under `alloc_cap.AllocationCap` (a device of --device-gib / --share GiB: an
allocation above it is refused as CUDA would) and a deadline of --seconds without the CPU's short
row chunks (as on a GPU). Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_alpha_bab_memory.py --instance ibp_3_3_8_5600 --share 8 \\
        --device-gib 80 --seconds 60 --out bab_memory.csv [--threads 2] [--src DIR]

`--per-node [--rows 32 --batch 4]`: instead, one sweep per carried node, its peak of live bytes in
A-matrices of the widest node (what `alpha_budget.CROWN_COPIES` is calibrated on).

`--src DIR`: run another checkout's package (e.g. `git archive BASE dtensor_verify | tar -x -C DIR`)
with this script's cap (copied next to it when that checkout has none).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "..", "shared", "benchmarks", "vit_2023")
FIELDS = ["code", "instance", "share_gib", "pairs", "status", "largest_gib", "largest_op", "largest_where",
          "peak_live_gib", "seconds", "message"]


def _roots(model, vnnlib: str, eps_scale: float, n_pairs: int):
    """(problem, roots): the first `n_pairs` pairs of the instance, IBP bounds as their roots."""
    import torch

    from dtensor_verify.bab import BabProblem, make_roots
    from dtensor_verify.bab.roots import RootState
    from dtensor_verify.methods.ibp import ibp
    from dtensor_verify.specs.vnnlib import read_vnnlib
    from dtensor_verify.verify.instance import Pairs, region_boxes

    prop = read_vnnlib(vnnlib, model.n_inputs, model.n_outputs)
    pairs = Pairs(prop, model.n_outputs)
    lo, hi = region_boxes(prop, model.input_shape)
    mid, rad = (lo + hi) / 2, (hi - lo) / 2 * eps_scale
    idx = list(range(min(n_pairs, len(pairs))))
    region = torch.tensor([pairs.index[p][0] for p in range(len(pairs))])
    plo, phi = (mid - rad)[region], (mid + rad)[region]
    graph = model.graph
    with torch.no_grad():
        b = ibp(graph, (plo[idx], phi[idx]), model.layout)
    pre = graph.preactivation_nodes()
    states = [RootState({n: (b[n][0][i], b[n][1][i]) for n in pre}) for i in range(len(idx))]
    out_lo, out_hi = b[graph.output_name]
    y_lo, y_hi = out_lo.flatten(1), out_hi.flatten(1)
    lowers = []
    for i, p in enumerate(idx):
        C, d = pairs.C[p, :pairs.rows_of[p]], pairs.d[p, :pairs.rows_of[p]]
        lowers.append(C.clamp(min=0) @ y_lo[i] + C.clamp(max=0) @ y_hi[i] - d)
    problem = BabProblem(graph, model.layout, model.forward, pairs.C, pairs.d, pairs.mask, plo, phi)
    return problem, make_roots(problem, idx, states, lowers)


def _paths(args) -> tuple[str, str]:
    """(onnx, vnnlib) of the instance: --onnx / --vnnlib (another benchmark), else vit_2023's."""
    onnx_path = args.onnx or os.path.join(BENCH, "onnx", args.instance.rsplit("_", 1)[0] + ".onnx.gz")
    return onnx_path, args.vnnlib or os.path.join(BENCH, "vnnlib", args.instance + ".vnnlib")


def _where() -> str:
    """The innermost frames of the package on the stack (the stage asking)."""
    import traceback

    frames = [f for f in traceback.extract_stack() if "dtensor_verify" in f.filename and "alloc_cap" not in f.filename]
    return " < ".join(f"{os.path.basename(f.filename)}:{f.name}" for f in reversed(frames[-6:]))


def run_one(args) -> dict:
    """One measurement in this process (its package: whatever PYTHONPATH gives)."""
    import torch

    import dtensor_verify as dv
    from dtensor_verify import deadline
    from dtensor_verify.alloc_cap import GIB, AllocationCap
    from dtensor_verify.bab import BabOptions, BabSolver
    from dtensor_verify.errors import TimeLimitReached

    torch.set_num_threads(args.threads)
    share = int(args.device_gib * GIB) // args.share
    os.environ["DTENSOR_VERIFY_DEVICE_BYTES"] = str(int(args.device_gib * GIB))
    os.environ["DTENSOR_VERIFY_SHARE_DEVICE"] = str(args.share)
    onnx_path, vnnlib_path = _paths(args)
    model = dv.load(onnx_path)
    problem, roots = _roots(model, vnnlib_path, args.eps_scale, args.pairs)
    end = time.perf_counter() + args.seconds

    def check():
        if time.perf_counter() >= end:
            raise TimeLimitReached()

    solver = BabSolver(problem, BabOptions(), lambda: 1e9, lambda *a: None)
    cap = AllocationCap(share)
    note = cap._note

    def note_where(need, func):
        if need > cap.largest:
            cap.where = _where()
        note(need, func)
    cap._note, cap.where = note_where, ""
    t0, status, message = time.perf_counter(), "done", ""
    try:
        with deadline.checking(check, lambda: end - time.perf_counter(), problem.layout, short_sweeps=False), cap:
            solver.add_roots(roots)
    except torch.OutOfMemoryError as exc:
        status, message = "out of memory", str(exc).split(". ", 1)[-1][:200]
    except TimeLimitReached:
        status = f"stopped at {args.seconds:g} s"
    return {"instance": args.instance, "share_gib": round(share / GIB, 2), "pairs": len(roots), "status": status,
            "largest_gib": round(cap.largest / GIB, 3), "largest_op": cap.largest_op, "largest_where": cap.where,
            "peak_live_gib": round(cap.peak / GIB, 3), "seconds": round(time.perf_counter() - t0, 1),
            "message": message}


def per_node(args) -> list[dict]:
    """One sweep of --rows rows of every carried node at batch --batch: its peak of live bytes and
    largest allocation in A-matrices of the widest node (`alpha_budget.CROWN_COPIES` per row)."""
    import torch

    import dtensor_verify as dv
    from dtensor_verify.alloc_cap import AllocationCap
    from dtensor_verify.methods.crown import CrownOptions, node_bound_rows
    from dtensor_verify.ops.softmax_sum import best_of_shifts

    torch.set_num_threads(args.threads)
    onnx_path, vnnlib_path = _paths(args)
    model = dv.load(onnx_path)
    problem, roots = _roots(model, vnnlib_path, args.eps_scale, 1)
    g, batch = model.graph, args.batch
    bounds = problem.bounds_of(roots.index(torch.zeros(batch, dtype=torch.long)))
    widest = max(n.numel for n in g.nodes)
    out = []
    for node in g.nodes:
        if node.name not in bounds or node.name == g.input_name or g.affine_from_input(node.name):
            continue
        rows = torch.arange(min(args.rows, node.numel))
        t0 = time.perf_counter()
        with torch.no_grad(), AllocationCap(1 << 50) as cap:
            best_of_shifts(g, node.name, lambda: node_bound_rows(g, node.name, rows, bounds, model.layout,
                                                                 CrownOptions(max_rows=len(rows)), batch))
        unit = 4 * batch * len(rows) * widest
        out.append({"instance": args.instance, "node": node.name, "numel": node.numel, "rows": len(rows),
                    "batch": batch, "widest": widest, "peak_per_A": round(cap.peak / unit, 2),
                    "largest_per_A": round(cap.largest / unit, 2), "seconds": round(time.perf_counter() - t0, 1)})
        print(out[-1], flush=True)
    return out


def _in_process(args, code: str, src: str) -> dict:
    """`run_one` in a child process whose package is `src`'s."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, ROOT]))
    if not os.path.exists(os.path.join(src, "dtensor_verify", "alloc_cap.py")):
        import shutil
        shutil.copy(os.path.join(ROOT, "dtensor_verify", "alloc_cap.py"), os.path.join(src, "dtensor_verify"))
    argv = [sys.executable, os.path.abspath(__file__), "--one", "--instance", args.instance, "--share", str(args.share),
            "--device-gib", str(args.device_gib), "--seconds", str(args.seconds), "--threads", str(args.threads),
            "--eps-scale", str(args.eps_scale), "--pairs", str(args.pairs), "--onnx", args.onnx, "--vnnlib", args.vnnlib]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"code": code, "instance": args.instance, "status": f"failed (rc {proc.returncode})",
                "message": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else ""}
    return {"code": code, **json.loads(lines[-1])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instance", default="ibp_3_3_8_5600")
    ap.add_argument("--share", type=int, default=8)
    ap.add_argument("--device-gib", type=float, default=80.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eps-scale", type=float, default=2.0,
                    help="the box widened around its centre (at 1.0 IBP's roots already prove ibp_3_3_8_5600)")
    ap.add_argument("--pairs", type=int, default=1, help="open pairs (roots): 1, as in the failed runs")
    ap.add_argument("--onnx", default="", help="another benchmark's model (with --vnnlib; --instance names the row)")
    ap.add_argument("--vnnlib", default="")
    ap.add_argument("--src", default="", help="another checkout's package to measure first (code 'before')")
    ap.add_argument("--out", default="bab_memory.csv")
    ap.add_argument("--per-node", action="store_true", help="one sweep per carried node (--rows, --batch): "
                    "peak live bytes in A-matrices of the widest node")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    if args.per_node:
        rows = per_node(args)
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return
    rows = ([_in_process(args, "before", args.src)] if args.src else []) + [_in_process(args, "this", ROOT)]
    fmt = "{:<7} {:<15} {:>9} {:<22} {:>11} {:>10} {:>8}  {}"
    print(fmt.format("code", "instance", "share_GiB", "status", "largest_GiB", "peak_GiB", "seconds", "largest at"))
    for r in rows:
        print(fmt.format(r["code"], r["instance"], r.get("share_gib", ""), r["status"], r.get("largest_gib", ""),
                         r.get("peak_live_gib", ""), r.get("seconds", ""), r.get("largest_where", "")))
        if r.get("message"):
            print("        " + r["message"])
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in FIELDS} for r in rows)


if __name__ == "__main__":
    main()
