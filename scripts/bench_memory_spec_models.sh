#!/usr/bin/env bash
# CROWN under --plan spec on the ViT and TinyYOLO: P = 1, 2, 4 (CPU gloo, one thread a rank), then the report.
#   scripts/bench_memory_spec_models.sh [OUT_DIR] [extra args for 'bench_memory_spec_models.py run']
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${BENCH_PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then source "$ROOT/scripts/_venv.sh"; fi
  BENCH_PYTHON=python
fi
OUT="${1:-$ROOT/out/spec_models}"; shift || true
PS="${BENCH_PS:-1 2 4}"
rm -f "$OUT/results.jsonl"; mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for P in $PS; do
  if [ "$P" = 1 ]; then
    "$BENCH_PYTHON" "$ROOT/scripts/bench_memory_spec_models.py" run --out "$OUT" "$@"
  else
    "$BENCH_PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$P" \
      "$ROOT/scripts/bench_memory_spec_models.py" run --out "$OUT" "$@"
  fi
done
"$BENCH_PYTHON" "$ROOT/scripts/bench_memory_spec_models.py" report --out "$OUT"
