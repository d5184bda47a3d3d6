#!/usr/bin/env bash
# Runs the built-in example: trains a tiny classifier, exports it to ONNX + a VNN-LIB property,
# bounds it with IBP / CROWN / alpha-CROWN and prints the verdict (dtensor_verify/demo.py).
# Creates .venv with the pinned stack on first use. Extra arguments go to the demo, e.g.
#   scripts/demo.sh --out out/demo --eps 0.3
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_venv.sh"
cd "$ROOT"
exec python -m dtensor_verify.demo "$@"
