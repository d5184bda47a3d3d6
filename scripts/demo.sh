#!/usr/bin/env bash
# Runs the built-in example (dtensor_verify/demo.py): trains a tiny classifier, exports it to ONNX +
# a VNN-LIB property, bounds it with IBP / CROWN / alpha-CROWN and prints the verdict; then bounds
# a wide MLP (3 x 1024) in one process and under torchrun P = 2 (CPU gloo) with --plan fsdp and
# --plan spec, printing per-rank memory next to one process and checking fsdp's bounds bitwise
# (one thread per process: the bitwise claim holds at equal thread counts) and spec's within a
# tolerance. About 30-60 s on a 2-core CPU once .venv exists.
# Creates .venv with the pinned stack on first use. Extra arguments go to the demo, e.g.
#   scripts/demo.sh --out out/demo --eps 0.3 --width 2048      (--procs 0: one process only)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_venv.sh"
cd "$ROOT"
exec python -m dtensor_verify.demo "$@"
