#!/usr/bin/env bash
# VNN-COMP adapter: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT
# Writes RESULTS (first line sat/unsat/unknown/timeout/error; for sat the counterexample).
# Extra options for the verifier can be given in DTENSOR_VERIFY_ARGS (e.g. "--plan fsdp").
set -euo pipefail
if [ "$#" -ne 6 ]; then
  echo "usage: $0 v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT" >&2
  exit 2
fi
VERSION="$1"; CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"; RESULTS="$5"; TIMEOUT="$6"
if [ "$VERSION" != "v1" ]; then
  echo "$0: expected interface version 'v1', got '$VERSION'" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
echo "running $CATEGORY: $ONNX $VNNLIB (timeout $TIMEOUT s)" >&2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck disable=SC2086
exec "$PY" -m dtensor_verify run --onnx "$ONNX" --vnnlib "$VNNLIB" --results "$RESULTS" \
  --timeout "$TIMEOUT" ${DTENSOR_VERIFY_ARGS:-}
