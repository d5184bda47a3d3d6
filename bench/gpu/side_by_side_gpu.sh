#!/usr/bin/env bash
# One device call: dtensor-verify, then alpha,beta-CROWN, on the same instances of one VNN-COMP
# benchmark, one process each, one tool after the other on the same card (nothing else on it).
#   bash bench/gpu/side_by_side_gpu.sh OUT BENCH INSTANCES_CSV OURS_WALL_S ABCROWN_WALL_S [SCALE]
# Ours: bench/gpu/input_bab_gpu.sh with 1 worker, 2 CPU threads, the whole card (SHARE=1).
# alpha,beta-CROWN: bench/gpu/abcrown_gpu.sh with 1 process, 2 CPU threads, its released config,
# given ours' rows so that its table.md / results.csv set the two side by side (a sat/unsat clash
# is a CONTRADICTION, exit status 1).
# Everything is packed into OUT/results.tgz plus OUT/summary.txt (the device tool returns few files).
# Carry [".whl", ".abcrown", ".bench_data"]; prefix DTENSOR_VERIFY_COMMIT=<commit> (the copy's git
# metadata is stale).
set -uo pipefail
OUT=$1; BENCH=$2; INST=$3; WALL_OURS=$4; WALL_ABC=$5; SCALE=${6:-1.0}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
mkdir -p "$OUT/jobs"
( while sleep 30; do tar czf "$OUT/.partial.tgz" -C "$OUT" jobs 2>/dev/null && mv "$OUT/.partial.tgz" "$OUT/results.tgz"; done ) &
packer=$!
t0=$(date +%s)
INSTANCES=$INST THREADS=2 SHARE=1 timeout -k 5 $((WALL_OURS + 10)) \
  bash bench/gpu/input_bab_gpu.sh "$BENCH" "$OUT/jobs/ours" 1 "$SCALE" "$WALL_OURS" > "$OUT/jobs/ours.summary.txt" 2>&1
t1=$(date +%s)
INSTANCES=$INST OUT_DIR=$OUT/jobs/abcrown THREADS=2 \
  bash bench/gpu/abcrown_gpu.sh "$BENCH" 1 "$SCALE" "$WALL_ABC" "$OUT/jobs/ours/all_results.csv" > "$OUT/jobs/abcrown.summary.txt" 2>&1
t2=$(date +%s)
kill "$packer" 2>/dev/null
{ echo "ours ran $((t1 - t0)) s, alpha,beta-CROWN $((t2 - t1)) s"; nproc; uptime
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  echo "== ours"; tail -3 "$OUT/jobs/ours.summary.txt"
  echo "== alpha,beta-CROWN"; tail -25 "$OUT/jobs/abcrown.summary.txt"; } > "$OUT/summary.txt"
find "$OUT/jobs" -name 'part*.csv' -delete
tar czf "$OUT/results.tgz" -C "$OUT" jobs && rm -rf "$OUT/jobs"
cat "$OUT/summary.txt"
