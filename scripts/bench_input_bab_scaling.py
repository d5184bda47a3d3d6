#!/usr/bin/env python
"""Input branch and bound over ranks: time to verdict and sub-boxes per second, 1 process vs --mesh 2x1.

    scripts/bench_input_bab_scaling.py --out OUT [--timeout 60] [--bench DIR] [INSTANCE ...]

Each INSTANCE is `ONNX,VNNLIB` relative to --bench (default: acasxu_2023 instances whose one-
process run spends seconds in branch and bound), run with `--bab-split input`. Kept for the
commands in docs/BENCHMARKS.md: it is `scripts/bench_bab_scaling.py` (the one scaling command, ReLU
and input splitting, its columns and files: OUT/bab_scaling.md, bab_scaling.csv, bab_scaling_runs.csv)
on these instances.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_bab_scaling  # noqa: E402

DEFAULT = ["onnx/ACASXU_run2a_1_1_batch_2000.onnx.gz,vnnlib/prop_1.vnnlib.gz",
           "onnx/ACASXU_run2a_4_4_batch_2000.onnx.gz,vnnlib/prop_1.vnnlib.gz",
           "onnx/ACASXU_run2a_3_1_batch_2000.onnx.gz,vnnlib/prop_3.vnnlib.gz"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--bench", type=Path, default=bench_bab_scaling.default_bench_root() / "acasxu_2023")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("instances", nargs="*", default=DEFAULT)
    args = p.parse_args()
    bench = args.bench.resolve()
    insts = [f"{bench.name}/{inst},input" for inst in args.instances]
    sys.argv = [sys.argv[0], "--out", args.out, "--bench-root", str(bench.parent), "--timeout", str(args.timeout), *insts]
    return bench_bab_scaling.main()


if __name__ == "__main__":
    sys.exit(main())
