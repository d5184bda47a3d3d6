#!/usr/bin/env bash
# VNN-COMP adapter: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks that the network loads and the property parses (IBP bounds over its first box), so that
# a broken instance fails here rather than during the timed run. Nothing is cached between calls.
set -euo pipefail
if [ "$#" -ne 4 ]; then
  echo "usage: $0 v1 CATEGORY ONNX VNNLIB" >&2
  exit 2
fi
VERSION="$1"; CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"
if [ "$VERSION" != "v1" ]; then
  echo "$0: expected interface version 'v1', got '$VERSION'" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
echo "preparing $CATEGORY: $ONNX $VNNLIB" >&2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if "$PY" -c 'import sys; from dtensor_verify.specs.vnnlib2 import is_vnnlib2; sys.exit(0 if is_vnnlib2(sys.argv[1]) else 1)' "$VNNLIB"; then
  # A 2.0 query (ONNX may be a list of (name, file) pairs): parse and type-check it.
  exec "$PY" -m dtensor_verify.vnncomp2 --check "$VNNLIB"
fi
exec "$PY" -m dtensor_verify bounds "$ONNX" --vnnlib "$VNNLIB" --method ibp --quiet --json /dev/null
