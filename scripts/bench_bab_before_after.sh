#!/usr/bin/env bash
# Branch and bound before / after a change, side by side in one run (CPU, gloo, one thread per
# rank), from two checkouts, alternating, each run twice:
#   memory: the memory half of scripts/bench_bab.sh (the same domain batch, 6 rounds, metered):
#           per-rank peak memory and BaB seconds per run (OUT_DIR/results.jsonl, bab_scaling.md
#           and bab_scaling.csv from scripts/bench_bab.py report);
#   cpu:    the spec run unmetered under /usr/bin/time: CPU seconds (user + sys, both ranks, the
#           whole process) and BaB seconds (OUT_DIR/cpu.csv, and a table on stdout).
#   scripts/bench_bab_before_after.sh BEFORE_TREE [OUT_DIR] [memory|cpu|both (default)]
# BEFORE_TREE: a copy of the earlier commit (e.g. `git archive REV | tar -x -C DIR`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BEFORE="$(cd "${1:?usage: scripts/bench_bab_before_after.sh BEFORE_TREE [OUT_DIR]}" && pwd)"
if [ -z "${BENCH_PYTHON:-}" ]; then source "$ROOT/scripts/_venv.sh"; BENCH_PYTHON=python; fi
OUT="${2:-$ROOT/out/bench_bab_before_after}"
PARTS="${3:-both}"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
BENCH="${BENCH_DIR:-$ROOT/../shared/benchmarks}/mnist_fc"
[ -d "$BENCH" ] || BENCH=/work/shared/benchmarks/mnist_fc
INST=(--onnx "$BENCH/onnx/mnist-net_256x4.onnx.gz" --vnnlib "$BENCH/vnnlib/prop_2_0.05.vnnlib.gz")
MEM=(--batch 512 --rounds 6 --meter --timeout 600)
tree_of() { if [ "$1" = before ]; then echo "$BEFORE"; else echo "$ROOT"; fi; }

if [ "$PARTS" != cpu ]; then
  rm -f "$OUT/results.jsonl"
  for repeat in 1 2; do
    for side in before after; do
      tree="$(tree_of $side)"
      (cd "$tree" && PYTHONPATH="$tree" $BENCH_PYTHON "$tree/scripts/bench_bab.py" run --out "$OUT" \
        --label "$side, one process" "${INST[@]}" "${MEM[@]}")
      (cd "$tree" && PYTHONPATH="$tree" $BENCH_PYTHON -m torch.distributed.run --standalone --nproc-per-node 2 \
        "$tree/scripts/bench_bab.py" run --out "$OUT" --label "$side, spec" --mesh 1x2 --plan spec \
        "${INST[@]}" "${MEM[@]}")
    done
  done
  $BENCH_PYTHON "$ROOT/scripts/bench_bab.py" report --out "$OUT"
fi

if [ "$PARTS" != memory ]; then
  echo "side,repeat,cpu_seconds,wall_seconds,bab_seconds" > "$OUT/cpu.csv"
  for repeat in 1 2; do
    for side in before after; do
      tree="$(tree_of $side)"
      rm -rf "$OUT/cpu_run"
      (cd "$tree" && PYTHONPATH="$tree" /usr/bin/time -o "$OUT/time.txt" -f "%U %S %e" \
        $BENCH_PYTHON -m torch.distributed.run --standalone --nproc-per-node 2 "$tree/scripts/bench_bab.py" run \
        --out "$OUT/cpu_run" --label "$side, spec" --mesh 1x2 --plan spec "${INST[@]}" --batch 512 --rounds 6 \
        --timeout 600 > /dev/null)
      bab=$($BENCH_PYTHON -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['bab_seconds'])" \
        "$OUT/cpu_run/results.jsonl")
      read -r user sys wall < "$OUT/time.txt"
      echo "$side,$repeat,$(echo "$user + $sys" | bc),$wall,$bab" >> "$OUT/cpu.csv"
    done
  done
  echo "| side | repeat | CPU s (user + sys, both ranks) | wall s | BaB s |"
  echo "| --- | --- | --- | --- | --- |"
  tail -n +2 "$OUT/cpu.csv" | while IFS=, read -r side rep cpu wall bab; do
    printf '| %s | %s | %s | %s | %.1f |\n' "$side" "$rep" "$cpu" "$wall" "$bab"
  done
fi
