#!/usr/bin/env bash
# Branch-and-bound scaling on this machine (CPU, gloo, one thread per rank), side by side in one run:
#   throughput: one process vs --mesh 2x1 (two dp workers) on a hard mnist-net_256x4 instance, 40 s each;
#   memory:     one process vs --mesh 1x2 --plan spec, the same total domain batch, 6 rounds, metered.
#   scripts/bench_bab.sh [OUT_DIR]      (default out/bench_bab; writes bab_scaling.md / .csv)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${BENCH_PYTHON:-}" ]; then source "$ROOT/scripts/_venv.sh"; BENCH_PYTHON=python; fi
OUT="${1:-$ROOT/out/bench_bab}"
rm -f "$OUT/results.jsonl"; mkdir -p "$OUT"
export OMP_NUM_THREADS=1
B=(-m torch.distributed.run --standalone)
PY="$BENCH_PYTHON $ROOT/scripts/bench_bab.py"
$BENCH_PYTHON "$ROOT/scripts/bench_bab.py" run --out "$OUT" --label "one process" --batch 1024
$BENCH_PYTHON "${B[@]}" --nproc-per-node 2 "$ROOT/scripts/bench_bab.py" run --out "$OUT" --label "dp workers" \
  --mesh 2x1 --batch 2048
$BENCH_PYTHON "$ROOT/scripts/bench_bab.py" run --out "$OUT" --label "one process" --batch 512 --rounds 6 --meter --timeout 600
$BENCH_PYTHON "${B[@]}" --nproc-per-node 2 "$ROOT/scripts/bench_bab.py" run --out "$OUT" --label "spec" \
  --mesh 1x2 --plan spec --batch 512 --rounds 6 --meter --timeout 600
$PY report --out "$OUT"
