#!/usr/bin/env bash
# Runs the test suite (default: everything but the slow benchmark-style tests).
# Extra arguments go to pytest, e.g. scripts/test.sh -m slow   or   scripts/test.sh tests/test_ops.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_venv.sh"
cd "$ROOT"
exec python -m pytest -n auto "$@"
