#!/usr/bin/env bash
# VNN-COMP adapter: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks that the network loads and the property parses (IBP bounds over its first box), so that
# a broken instance fails here rather than during the timed run. Nothing is cached between calls.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adapter.sh"
adapter_args 4 "v1 CATEGORY ONNX VNNLIB" "$@"
CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"
echo "preparing $CATEGORY: $ONNX $VNNLIB" >&2
if is_vnnlib2 "$VNNLIB"; then
  # A 2.0 query (ONNX may be a list of (name, file) pairs): parse and type-check it.
  exec "$PY" -m dtensor_verify.vnncomp2 --check "$VNNLIB"
fi
exec "$PY" -m dtensor_verify bounds "$ONNX" --vnnlib "$VNNLIB" --method ibp --quiet --json /dev/null
