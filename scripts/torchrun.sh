#!/usr/bin/env bash
# Run a dtensor-verify sub-command (bounds, run, benchmark) on P processes with torchrun.
#   scripts/torchrun.sh P bounds MODEL.onnx.gz --vnnlib SPEC.vnnlib.gz --method alpha-crown --plan spec
#   scripts/torchrun.sh P run --onnx M.onnx.gz --vnnlib S.vnnlib.gz --results out.txt --timeout 60 --plan fsdp
#   scripts/torchrun.sh P benchmark DIR --csv out.csv --shard-instances   (rank r runs instances r, r+P, ...)
# CPU: gloo, one thread per rank unless OMP_NUM_THREADS says otherwise. CUDA: nccl, one GPU per rank.
# Uses the repo's .venv (created on first use); set DV_PYTHON to use another interpreter (GPU images).
# Launches through dtensor_verify.launch (torchrun itself, run in-process): a failed run is reported
# in one line and the exit status is the ranks' (2 error, 124 watchdog timeout), not torchrun's 1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/torchrun.sh P {bounds|run|benchmark} ARGS..." >&2
  exit 2
fi
P="$1"; shift
if [ -z "${DV_PYTHON:-}" ]; then
  source "$ROOT/scripts/_venv.sh"
  DV_PYTHON=python
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$DV_PYTHON" -m dtensor_verify.launch --standalone --nproc-per-node "$P" -m dtensor_verify "$@"
