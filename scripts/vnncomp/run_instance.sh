#!/usr/bin/env bash
# VNN-COMP adapter: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT
# Writes RESULTS (first line sat/unsat/unknown/timeout/error; for sat the counterexample).
# VNNLIB may be a 1.0 property (ONNX: one file; counterexample in the 1.0 format) or a VNN-LIB 2.0
# query (ONNX: one file, or VNN-COMP 2026's list "[('f','a.onnx'),('g','b.onnx')]"; the
# assignment in the 2.0 text format).
# Extra options for the verifier can be given in DTENSOR_VERIFY_ARGS (e.g. "--plan fsdp").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adapter.sh"
adapter_args 6 "v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT" "$@"
CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"; RESULTS="$5"; TIMEOUT="$6"
echo "running $CATEGORY: $ONNX $VNNLIB (timeout $TIMEOUT s)" >&2
if is_vnnlib2 "$VNNLIB"; then
  # shellcheck disable=SC2086
  exec "$PY" -m dtensor_verify.vnncomp2 "$ONNX" "$VNNLIB" "$RESULTS" "$TIMEOUT" ${DTENSOR_VERIFY_ARGS:-}
fi
# shellcheck disable=SC2086
exec "$PY" -m dtensor_verify run --onnx "$ONNX" --vnnlib "$VNNLIB" --results "$RESULTS" \
  --timeout "$TIMEOUT" ${DTENSOR_VERIFY_ARGS:-}
