# Sourced by prepare_instance.sh and run_instance.sh (the VNN-COMP adapter): what both share.
# Sets ROOT (this checkout) and PY (its .venv's python, else python3) and puts ROOT on PYTHONPATH.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# adapter_args N USAGE "$@": exactly N arguments, the first the interface version v1; else one
# line on stderr and exit status 2.
adapter_args() {
  local n=$1 usage=$2
  shift 2
  if [ "$#" -ne "$n" ]; then
    echo "usage: $0 $usage" >&2
    exit 2
  fi
  if [ "$1" != "v1" ]; then
    echo "$0: expected interface version 'v1', got '$1'" >&2
    exit 2
  fi
}

# is_vnnlib2 FILE: status 0 when FILE is a VNN-LIB 2.0 query.
is_vnnlib2() {
  "$PY" -c 'import sys; from dtensor_verify.specs.vnnlib2 import is_vnnlib2
sys.exit(0 if is_vnnlib2(sys.argv[1]) else 1)' "$1"
}
