#!/usr/bin/env python
"""Bytes one open domain takes in branch and bound's store, kept whole and kept without its
intermediate bounds (`bab/domain_codec.py`, the default for ReLU splitting), per model and rows kept.

    scripts/bench_domain_store_bytes.py --instances BENCH:ONNX_STEM:VNNLIB_STEM ... [--memory-gib 8]
                                        [--csv OUT] [--bench-root ../shared/benchmarks]

Each instance's root domain is built from CROWN's intermediate bounds (--bounds ibp: IBP's, looser,
so more neurons unstable: more bytes kept), with 1 row and with every row of its first disjunct;
"domains in N GiB" is how many of them that much memory holds. Prints a table and, with --csv,
writes its rows.
"""
from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _find(bench_root: Path, spec: str) -> tuple[Path, Path]:
    bench, onnx_stem, vnnlib_stem = spec.split(":")
    d = bench_root / bench
    onnx = next((p for p in d.rglob("*.onnx*") if p.name.split(".onnx")[0] == onnx_stem), None)
    vnnlib = next((p for p in d.rglob("*.vnnlib*") if p.name.split(".vnnlib")[0] == vnnlib_stem), None)
    if onnx is None or vnnlib is None:
        raise SystemExit(f"{spec}: no {onnx_stem}.onnx or {vnnlib_stem}.vnnlib under {d}")
    return onnx, vnnlib


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", nargs="+", required=True, metavar="BENCH:ONNX:VNNLIB")
    ap.add_argument("--bench-root", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    ap.add_argument("--memory-gib", type=float, default=8.0)
    ap.add_argument("--bounds", choices=["crown", "ibp"], default="crown")
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import dtensor_verify as dv
    from dtensor_verify.bab.domain_codec import DerivedBounds, codec_for
    from dtensor_verify.bab.problem import BabProblem
    from dtensor_verify.bab.roots import RootState, make_roots
    from dtensor_verify.methods.crown import intermediate_bounds
    from dtensor_verify.methods.ibp import ibp
    from dtensor_verify.specs import read_vnnlib

    memory = args.memory_gib * 2**30
    rows = []
    for spec in args.instances:
        onnx, vnnlib = _find(args.bench_root, spec)
        model = dv.load(str(onnx))
        prop = read_vnnlib(str(vnnlib), n_inputs=model.n_inputs, n_outputs=model.n_outputs)
        region = prop.regions[0]
        disjunct = region.disjuncts[0]
        lo = torch.as_tensor(region.lower, dtype=torch.float32).reshape(1, *model.input_shape)
        hi = torch.as_tensor(region.upper, dtype=torch.float32).reshape(1, *model.input_shape)
        t = time.perf_counter()
        with torch.no_grad():
            bounds = ibp(model.graph, (lo, hi)) if args.bounds == "ibp" else intermediate_bounds(model.graph, (lo, hi))[0]
        seconds = time.perf_counter() - t
        pre = model.graph.preactivation_nodes()
        C_all = torch.as_tensor(disjunct.C, dtype=torch.float32)
        d_all = torch.as_tensor(disjunct.d, dtype=torch.float32)
        for k in sorted({1, C_all.shape[0]}):
            C, d = C_all[:k].unsqueeze(0), d_all[:k].unsqueeze(0)
            problem = BabProblem(model.graph, model.layout, model.forward, C, d,
                                 torch.ones(d.shape, dtype=torch.bool), lo, hi)
            roots = make_roots(problem, [0], [RootState({n: (bounds[n][0][0], bounds[n][1][0]) for n in pre})],
                               [torch.full((k,), -1.0)])
            codec = codec_for(problem, "relu", roots)
            whole = roots.nbytes()
            derived = codec.pack(roots).nbytes() if isinstance(codec, DerivedBounds) else whole
            neurons = sum(roots.signs[r][0].numel() for r in problem.relus)
            unstable = sum(int(((bounds[problem.pre_of[r]][0] < 0) & (bounds[problem.pre_of[r]][1] > 0)).sum())
                           for r in problem.relus)
            rows.append({"instance": spec, "bounds": args.bounds, "rows": k, "relu_neurons": neurons,
                         "unstable": unstable, "whole_bytes": whole,
                         "derived_bytes": derived, "ratio": round(whole / derived, 2),
                         "whole_in_memory": int(memory // whole), "derived_in_memory": int(memory // derived)})
            print(f"# {spec}, {k} row(s): {whole} -> {derived} bytes ({args.bounds} root in {seconds:.1f} s)",
                  flush=True)
    g = f"{args.memory_gib:g}"
    print()
    print(f"| instance | rows | ReLU neurons | unstable at the root ({args.bounds}) | bytes a domain, whole | "
          f"derived | whole / derived | domains in {g} GiB, whole | derived |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['instance']} | {r['rows']} | {r['relu_neurons']:,} | {r['unstable']:,} | {r['whole_bytes']:,} | "
              f"{r['derived_bytes']:,} | {r['ratio']} | {r['whole_in_memory']:,} | {r['derived_in_memory']:,} |")
    print(f"\n- torch {torch.__version__}, Python {platform.python_version()}; `{' '.join(sys.argv)}`")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
