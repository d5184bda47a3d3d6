#!/usr/bin/env python
"""Operator coverage on real models: the first model + first property of each benchmark folder.

For each folder of ../shared/benchmarks (default: the folders added for the operator library),
in a fresh subprocess with a time limit: load the model (the load-time onnxruntime self-check
runs), read the first property's first input box, bound the outputs with CROWN, and check
soundness: onnxruntime outputs of the box centre, its corners (up to 64 random ones) and
random points (--samples) must lie inside [lower, upper] (1e-4 absolute slack for float32
rounding). Prints a table and writes a CSV.

    .venv/bin/python scripts/bench_ops_models.py [--root ../shared/benchmarks] [--folders a,b]
        [--method crown] [--timeout 600] [--samples 200] [--csv out/bench_ops_models.csv]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

FOLDERS = ("acasxu_2023", "vit_2023", "dist_shift_2023", "yolo_2023", "linearizenn", "nn4sys_2023",
           "ml4acopf_2024", "cgan_2023", "tllverifybench_2023", "reach_prob_density", "rl_benchmarks", "safenlp",
           "collins_rul_cnn_2023")
MAX_A_BYTES = 4 << 30
COLUMNS = ("benchmark", "model", "loads", "self_check", "sound", "load_s", "bound_s", "mean_width", "note")


def first_instance(root, folder):
    with open(os.path.join(root, folder, "instances.csv")) as fh:
        model, prop = [p.strip() for p in fh.readline().split(",")[:2]]
    paths = []
    for rel in (model, prop):
        p = os.path.normpath(os.path.join(root, folder, rel))
        if not os.path.exists(p) and os.path.exists(p + ".gz"):
            p += ".gz"
        paths.append(p)
    return paths


def child(model_path, prop_path, method, samples):
    """Runs in the subprocess: one JSON line with the row's fields."""
    import numpy as np
    import torch

    import dtensor_verify as dv
    from dtensor_verify.model_loading import read_bytes
    from dtensor_verify.specs import read_vnnlib

    row = {"loads": "no", "self_check": "-", "sound": "-", "load_s": "", "bound_s": "", "mean_width": "", "note": ""}
    t = time.perf_counter()
    try:
        m = dv.load(model_path)
    except Exception as exc:        # the refusal line is the result (without the list of supported ops)
        row["note"] = " ".join(str(exc).split()).split(". Supported ONNX operators")[0][:300]
        return row
    row.update(loads="yes", self_check=f"ok ({m.self_check_deviation:.1e})"
               if isinstance(m.self_check_deviation, float) else "ok", load_s=f"{time.perf_counter() - t:.2f}")
    prop = read_vnnlib(prop_path, n_inputs=m.n_inputs, n_outputs=m.n_outputs)
    region = prop.regions[0]
    lo = torch.tensor(np.asarray(region.lower), dtype=torch.float32).reshape(1, *m.input_shape)
    hi = torch.tensor(np.asarray(region.upper), dtype=torch.float32).reshape(1, *m.input_shape)
    # Dense CROWN keeps A-matrices of (rows of a layer) x (neurons of an upstream layer): refuse
    # to start what cannot fit (conv A-matrices as patches are not implemented yet).
    sizes = [m.graph[n].numel for n in m.graph.preactivation_nodes()] + [m.graph.output.numel]
    need = max(sizes) * max(n.numel for n in m.graph.nodes) * (8 if m.dtype == torch.float64 else 4)
    if method != "ibp" and need > MAX_A_BYTES:
        row["note"] = (f"{method} not run: a dense A-matrix would need {need / 2**30:.0f} GiB "
                       f"(conv A-matrices as patches not implemented); soundness checked on IBP")
        method = "ibp"
    t = time.perf_counter()
    try:
        r = m.compute_bounds(lo, hi, method)
    except Exception as exc:
        row["note"] = f"bounding failed: {type(exc).__name__}: {' '.join(str(exc).split())[:250]}"
        return row
    row["bound_s"] = f"{time.perf_counter() - t:.2f}"
    lower, upper = r.lower.flatten(), r.upper.flatten()
    row["mean_width"] = f"{float((upper - lower).mean()):.4g}"
    # Soundness against onnxruntime on the original file.
    import onnx
    import onnxruntime as ort

    proto = onnx.load_model_from_string(read_bytes(model_path))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    dtype = np.float64 if "double" in inp.type else np.float32
    gen = np.random.default_rng(0)
    l, h = lo.flatten().numpy(), hi.flatten().numpy()
    pts = [(l + h) / 2] + [np.where(gen.random(l.size) < 0.5, l, h) for _ in range(64)] + \
          [l + (h - l) * gen.random(l.size) for _ in range(samples)]
    worst = 0.0
    for p in pts:
        y = sess.run(None, {inp.name: p.reshape(shape).astype(dtype)})[0].flatten().astype(np.float64)
        worst = max(worst, float(np.max(lower.double().numpy() - y)), float(np.max(y - upper.double().numpy())))
    # float32 rounding: the bounds and onnxruntime's outputs each carry rounding relative to the
    # outputs' scale.
    scale = max(1.0, float(lower.abs().max()), float(upper.abs().max()))
    row["sound"] = "yes" if worst <= 1e-4 + 1e-6 * scale else f"NO (by {worst:.3g}; scale {scale:.3g})"
    return row


def run_one(root, folder, method, timeout, samples):
    model_path, prop_path = first_instance(root, folder)
    row = {"benchmark": folder, "model": os.path.basename(model_path)}
    cmd = [sys.executable, __file__, "--child", model_path, prop_path, "--method", method, "--samples", str(samples)]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if lines:
            row.update(json.loads(lines[-1]))
        else:
            row.update(loads="error", note=" ".join(out.stderr.split())[-300:])
    except subprocess.TimeoutExpired:
        row.update(loads="?", note=f"timeout after {timeout} s")
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "benchmarks"))
    ap.add_argument("--folders", default=",".join(FOLDERS))
    ap.add_argument("--method", default="crown")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--csv", default="out/bench_ops_models.csv")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "PROPERTY"))
    args = ap.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(child(*args.child, args.method, args.samples)))
        return 0
    root = os.path.abspath(args.root)
    rows = []
    for folder in [f for f in args.folders.split(",") if f]:
        row = run_one(root, folder, args.method, args.timeout, args.samples)
        rows.append(row)
        print(" | ".join(str(row.get(c, "")) for c in COLUMNS), flush=True)
    print()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")).replace("|", "/") for c in COLUMNS) + " |")
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"CSV: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
