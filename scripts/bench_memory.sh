#!/usr/bin/env bash
# Memory/time scaling table: P = 1, 2, 4 in one run, then the report (CSV, Markdown, PNG).
#   scripts/bench_memory.sh [OUT_DIR] [extra args for 'bench_memory.py run', e.g. --widths 1024,2048]
# Uses the repo's .venv when present (CPU, gloo), else the current python (GPU machines, nccl).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${BENCH_PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then source "$ROOT/scripts/_venv.sh"; fi
  BENCH_PYTHON=python
fi
OUT="${1:-$ROOT/out/bench_memory}"; shift || true
PS="${BENCH_PS:-1 2 4}"
rm -f "$OUT/results.jsonl"; mkdir -p "$OUT"
for P in $PS; do
  if [ "$P" = 1 ]; then
    "$BENCH_PYTHON" "$ROOT/scripts/bench_memory.py" run --out "$OUT" "$@"
  else
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$BENCH_PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$P" \
      "$ROOT/scripts/bench_memory.py" run --out "$OUT" "$@"
  fi
done
"$BENCH_PYTHON" "$ROOT/scripts/bench_memory.py" report --out "$OUT"
