#!/usr/bin/env bash
# Branch and bound before / after a change, side by side in one run (CPU, gloo, one thread per
# rank): the memory half of scripts/bench_bab.sh (the same domain batch, 6 rounds, metered) from
# two checkouts, alternating, each run twice; per-rank peak memory and BaB seconds per run.
#   scripts/bench_bab_before_after.sh BEFORE_TREE [OUT_DIR]
# BEFORE_TREE: a copy of the earlier commit (e.g. `git archive REV | tar -x -C DIR`).
# Writes OUT_DIR/results.jsonl, bab_scaling.md and bab_scaling.csv (scripts/bench_bab.py report).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BEFORE="$(cd "${1:?usage: scripts/bench_bab_before_after.sh BEFORE_TREE [OUT_DIR]}" && pwd)"
if [ -z "${BENCH_PYTHON:-}" ]; then source "$ROOT/scripts/_venv.sh"; BENCH_PYTHON=python; fi
OUT="${2:-$ROOT/out/bench_bab_before_after}"
rm -f "$OUT/results.jsonl"; mkdir -p "$OUT"
export OMP_NUM_THREADS=1
BENCH="${BENCH_DIR:-$ROOT/../shared/benchmarks}/mnist_fc"
[ -d "$BENCH" ] || BENCH=/work/shared/benchmarks/mnist_fc
INST=(--onnx "$BENCH/onnx/mnist-net_256x4.onnx.gz" --vnnlib "$BENCH/vnnlib/prop_2_0.05.vnnlib.gz")
MEM=(--batch 512 --rounds 6 --meter --timeout 600)
for repeat in 1 2; do
  for side in before after; do
    tree="$ROOT"; [ "$side" = before ] && tree="$BEFORE"
    (cd "$tree" && PYTHONPATH="$tree" $BENCH_PYTHON "$tree/scripts/bench_bab.py" run --out "$OUT" \
      --label "$side, one process" "${INST[@]}" "${MEM[@]}")
    (cd "$tree" && PYTHONPATH="$tree" $BENCH_PYTHON -m torch.distributed.run --standalone --nproc-per-node 2 \
      "$tree/scripts/bench_bab.py" run --out "$OUT" --label "$side, spec" --mesh 1x2 --plan spec \
      "${INST[@]}" "${MEM[@]}")
  done
done
$BENCH_PYTHON "$ROOT/scripts/bench_bab.py" report --out "$OUT"
