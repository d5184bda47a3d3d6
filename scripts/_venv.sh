#!/usr/bin/env bash
# Sourced by the entry scripts: creates .venv if missing, installs the pinned stack, activates it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.pinned-$(sha1sum "$ROOT/requirements-pinned.txt" | cut -c1-12)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV (python3.11)" >&2
  "${PYTHON:-python3.11}" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing the pinned stack into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-pinned.txt"
  # auto_LiRPA 0.3 pins torch<1.13; it is only the test reference, so it goes in without its pins.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps auto-LiRPA==0.3
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
  rm -f "$VENV"/.pinned-*
  touch "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
