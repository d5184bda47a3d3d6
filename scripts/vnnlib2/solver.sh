#!/usr/bin/env bash
# The VNN-LIB 2.0 solver executable for tools that take one path (vnnlib-satisfactory --solver):
# `solver.sh verify QUERY --network N=FILE ...`, `solver.sh supports --onnx-operators`, ...
# Extra options for `verify` can be given in DTENSOR_VERIFY_ARGS (e.g. "--device cpu --quiet"), global
# ones (before the command) in DTENSOR_VERIFY_GLOBAL (e.g. "--threads 1").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "verify" ]; then
  # shellcheck disable=SC2086
  exec "$PY" -m dtensor_verify ${DTENSOR_VERIFY_GLOBAL:-} "$@" ${DTENSOR_VERIFY_ARGS:-}
fi
exec "$PY" -m dtensor_verify "$@"
