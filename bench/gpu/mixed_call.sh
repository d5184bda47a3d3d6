#!/usr/bin/env bash
# One device call, several jobs at once on one lent GPU host, each pinned to its own CPU cores
# (taskset), so that a CPU timing job (the dp scaling bench) runs on cores no GPU job uses.
#   bash bench/gpu/mixed_call.sh OUT WALL_S JOB...
# A JOB is `bench:BENCH:WORKERS:SCALE:CORES[:INSTANCES_CSV[:ARGS]]` (bench/gpu/input_bab_gpu.sh, one thread
# per process, the GPU share set to the number of GPU processes of all jobs; ARGS: more `benchmark`
# options with `+` for spaces, e.g. --output-constraints+last; its files then go to OUT/jobs/BENCH_args) or
# `scaling:CORES:ARGS...` (scripts/bench_bab_scaling.py --out OUT/scaling ARGS, on CORES) or
# `milp:CORES:ARGS...` (scripts/hostile_milp.py --out OUT/milp ARGS, on CORES: CPU torchrun runs) or
# `sh:CORES:NAME:COMMAND...` (any command on CORES, run by bash with OUT/jobs/NAME as $JOB_OUT; its
# output in OUT/jobs/NAME.log; e.g. scripts/bench_memory_patches_gpu.sh run "$JOB_OUT").
# CORES is a taskset list (e.g. 0-5). Every job stops by WALL_S. Everything under OUT is packed
# into OUT/results.tgz (the device tool brings back only a few files), plus one summary.txt.
# Carry [".whl", ".bench_data"] with the benchmarks the jobs name. The device copy's git metadata is stale:
# prefix the call with DTENSOR_VERIFY_COMMIT=<this checkout's commit> so the scripts' tables name the code run.
set -uo pipefail
OUT=$1; WALL=$2; shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY=${PY:-python3}
[ -n "${SKIP_WHEELS:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export SKIP_WHEELS=1 PYTHONPATH="$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
share=${SHARE_EXTRA:-0}      # GPU processes of `sh` jobs, if any (each bench process takes 1/share)
for j in "$@"; do [[ $j == bench:* ]] && share=$((share + $(cut -d: -f3 <<< "$j"))); done
mkdir -p "$OUT/jobs"
# Packed every 30 s as well: a call cut off by the device tool's limit (its budget may be less than
# WALL) still brings back what the jobs had written (the tool returns only shallow files).
( while sleep 30; do tar czf "$OUT/.partial.tgz" -C "$OUT" jobs 2>/dev/null && mv "$OUT/.partial.tgz" "$OUT/results.tgz"; done ) &
packer=$!
for j in "$@"; do
  IFS=: read -r kind a b c d e f <<< "$j"
  if [ "$kind" = bench ]; then
    name=$a; [ -z "${f:-}" ] || name=${a}_args
    (INSTANCES=${e:-} BENCH_ARGS="${f//+/ }" THREADS=1 SHARE=$share PY=$PY timeout -k 5 $((WALL + 10)) taskset -c "$d" \
       bash bench/gpu/input_bab_gpu.sh "$a" "$OUT/jobs/$name" "$b" "$c" "$WALL" > "$OUT/jobs/$name.summary.txt" 2>&1) &
  elif [ "$kind" = sh ]; then
    cmd=${j#sh:*:*:}
    (mkdir -p "$OUT/jobs/$b"; JOB_OUT="$OUT/jobs/$b" timeout -k 5 "$WALL" taskset -c "$a" bash -c "$cmd" \
       > "$OUT/jobs/$b.log" 2>&1) &
  elif [ "$kind" = milp ]; then
    args=${j#milp:*:}
    (timeout -k 5 "$WALL" taskset -c "$a" $PY scripts/hostile_milp.py --out "$OUT/jobs/milp" $args \
       > "$OUT/jobs/milp.log" 2>&1) &
  else
    args=${j#scaling:*:}
    (timeout -k 5 "$WALL" taskset -c "$a" $PY scripts/bench_bab_scaling.py --out "$OUT/jobs/scaling" \
       --bench-root .bench_data $args > "$OUT/jobs/scaling.log" 2>&1) &
  fi
done
for p in $(jobs -p); do [ "$p" = "$packer" ] || wait "$p"; done
kill "$packer" 2>/dev/null
{ nproc; uptime; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  for f in "$OUT"/jobs/*.summary.txt; do [ -f "$f" ] || continue; echo "== $f"; tail -2 "$f"; done
  [ -f "$OUT/jobs/scaling.log" ] && tail -30 "$OUT/jobs/scaling.log"
  [ -f "$OUT/jobs/milp.log" ] && tail -30 "$OUT/jobs/milp.log"
  for f in "$OUT"/jobs/*.log; do case $f in */scaling.log|*/milp.log) continue;; esac
    [ -f "$f" ] && { echo "== $f"; tail -15 "$f"; }; done; } > "$OUT/summary.txt"
find "$OUT/jobs" -name 'part*.csv' -delete
tar czf "$OUT/results.tgz" -C "$OUT" jobs && rm -rf "$OUT/jobs"
cat "$OUT/summary.txt"
