#!/usr/bin/env bash
# Input branch and bound on a VNN-COMP benchmark at its own limits, on one lent GPU.
# Usage (on the device machine, carrying [".whl", ".bench_data"] and optionally ".gpu_src"):
#   bash bench/gpu/input_bab_gpu.sh BENCH OUT [WORKERS] [TIMEOUT_SCALE] [WALL_S]
# BENCH is a folder under .bench_data/ (e.g. acasxu_2023). The instances are dealt round-robin to
# WORKERS processes (default 8), each `dtensor-verify --threads 2 benchmark ... --device cuda`,
# all sharing the one GPU; every process stops by WALL_S seconds (default 540), and instances left
# unrun are counted as not run. Prints one summary table; CSVs go to OUT.
# PY (default python3), DEVICE (default cuda), SKIP_WHEELS=1 (a dry run here: PY=.venv/bin/python DEVICE=cpu),
# THREADS (CPU threads per process, default 2), SHARE (the GPU share each process sizes itself for,
# default WORKERS: set it to the number of processes of all jobs sharing the GPU).
# INSTANCES=CSV: these instances (paths relative to the benchmark folder, e.g. a subset in
# bench/gpu/subsets/, or docs/benchmarks/input_bab_h100/acasxu_hard12.csv) instead of the folder's
# instances.csv.
# BENCH_DATA=DIR: the folder holding BENCH instead of .bench_data (e.g. ../shared/benchmarks).
# QUEUE=1: instead of dealing the instances out in advance, each process takes the next one from one
# shared queue (flock) as it finishes the last, one `benchmark` process per instance (a few seconds of
# start-up each), starting none with under QUEUE_MIN_S (default 40) seconds of the wall left: where a
# few instances run to their limit and most end early (yolo), no process sits idle while another
# still has a backlog. The instances start in the CSV's order: put the slow ones first.
# In QUEUE mode an instance whose row is an `error` for lack of GPU memory (OutOfMemoryError, CUDA
# out of memory, CUBLAS_STATUS_ALLOC_FAILED: a neighbour took the memory) goes once more to the end
# of the queue (at most one retry an instance, listed in OUT/parts/retried.txt, and none with under
# QUEUE_MIN_S of the wall left); its first CSV is kept as OUT/parts/oom_first_try_K_I.csv, merged
# only where the retry never ran. OOM_RETRY=0 turns this off. The summary adds `oom retried: N`.
# BENCH_ARGS: more `benchmark` options for every process (e.g. "--output-constraints last").
# The code run is .gpu_src/ when present (a staged copy of a branch), else this checkout.
set -uo pipefail
BENCH=$1; OUT=$2; WORKERS=${3:-8}; SCALE=${4:-1.0}; WALL=${5:-540}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}
[ -n "${SKIP_WHEELS:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
SRC="$ROOT"; [ -d .gpu_src ] && SRC="$ROOT/.gpu_src"
export PYTHONPATH="$SRC:/tmp/site" PYTHONUNBUFFERED=1
export DTENSOR_VERIFY_SHARE_DEVICE=${SHARE:-$WORKERS}   # each process sizes its work for 1/SHARE of the GPU
$PY -c "import torch, scipy, onnxruntime; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'scipy', scipy.__version__)"
D=${BENCH_DATA:-.bench_data}/$BENCH
mkdir -p "$OUT/parts"
tail -n +1 "${INSTANCES:-$D/instances.csv}" | grep -v '^\s*$' > "$OUT/parts/all.csv"
T0=$(date +%s)
take() {   # the next line of the queue (its number in $OUT/parts/next), empty when none is left
  (flock 9; n=$(cat "$OUT/parts/next" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$OUT/parts/next"
   sed -n "${n}p" "$OUT/parts/all.csv") 9> "$OUT/parts/queue.lock"
}
worker() {   # QUEUE=1: take instances until the queue is empty or the wall is near
  local k=$1 i=0 line
  while [ $(( $(date +%s) - T0 )) -lt $((WALL - ${QUEUE_MIN_S:-40})) ]; do
    line=$(take); [ -n "$line" ] || break
    i=$((i + 1)); echo "$line" > "$OUT/parts/q${k}_$i.csv"
    timeout -k 5 $((WALL - ($(date +%s) - T0))) $PY -m dtensor_verify --threads "${THREADS:-2}" benchmark "$D" \
      --instances "$OUT/parts/q${k}_$i.csv" --timeout-scale "$SCALE" --csv "$OUT/part${k}_$i.csv" --quiet \
      --device "$DEVICE" ${BENCH_ARGS:-} >> "$OUT/parts/log$k.txt" 2>&1
    if [ "${OOM_RETRY:-1}" != 0 ] && [ $(( $(date +%s) - T0 )) -lt $((WALL - ${QUEUE_MIN_S:-40})) ] \
       && is_oom "$OUT/part${k}_$i.csv" && requeue "$line"; then
      mv "$OUT/part${k}_$i.csv" "$OUT/parts/oom_first_try_${k}_$i.csv"
    fi
  done
}
is_oom() {   # whether the CSV $1 has a row that is an error for lack of GPU memory
  [ -s "$1" ] && $PY -c 'import csv, sys
oom = ("OutOfMemoryError", "CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
sys.exit(0 if any(r.get("verdict", r.get("result")) == "error" and any(m in (r.get("message") or "") for m in oom)
                  for r in rows) else 1)' "$1" 2>/dev/null
}
requeue() {   # appends the line $1 to the queue unless it was retried already (fails then)
  (flock 9; touch "$OUT/parts/retried.txt"; grep -qxF -- "$1" "$OUT/parts/retried.txt" && exit 1
   echo "$1" >> "$OUT/parts/retried.txt"; echo "$1" >> "$OUT/parts/all.csv"
   n=$(cat "$OUT/parts/next" 2>/dev/null || echo 0); len=$(wc -l < "$OUT/parts/all.csv")
   # a take past the end (a process that found the queue empty) moved the counter past the new line
   [ "$n" -lt "$len" ] || echo $((len - 1)) > "$OUT/parts/next") 9> "$OUT/parts/queue.lock"
}
for k in $(seq 0 $((WORKERS-1))); do
  if [ -n "${QUEUE:-}" ]; then worker "$k" & continue; fi
  awk -v n="$WORKERS" -v k="$k" 'NR % n == k' "$OUT/parts/all.csv" > "$OUT/parts/part$k.csv"
  timeout -k 5 "$WALL" $PY -m dtensor_verify --threads "${THREADS:-2}" benchmark "$D" --instances "$OUT/parts/part$k.csv" \
    --timeout-scale "$SCALE" --csv "$OUT/part$k.csv" --quiet --device "$DEVICE" ${BENCH_ARGS:-} > "$OUT/parts/log$k.txt" 2>&1 &
done
wait
$PY - "$OUT" "$OUT/parts/all.csv" <<'PY'
import csv, glob, sys
out, allcsv = sys.argv[1], sys.argv[2]
retried = [l for l in open(f"{out}/parts/retried.txt")] if glob.glob(f"{out}/parts/retried.txt") else []
n_all = sum(1 for _ in open(allcsv)) - len(retried)   # a retried instance is in the queue twice
rows = []
for f in sorted(glob.glob(f"{out}/part*.csv")):
    rows += list(csv.DictReader(open(f)))
oom = sorted(glob.glob(f"{out}/parts/oom_first_try_*.csv"))
seen = {(r.get("onnx"), r.get("vnnlib")) for r in rows}
kept = 0
for f in oom:   # a retry the wall stopped: its first try's error row stands
    for r in csv.DictReader(open(f)):
        if (r.get("onnx"), r.get("vnnlib")) not in seen:
            rows.append(r); seen.add((r.get("onnx"), r.get("vnnlib"))); kept += 1
counts = {}
for r in rows:
    counts[r.get("verdict", r.get("result", "?"))] = counts.get(r.get("verdict", r.get("result", "?")), 0) + 1
with open(f"{out}/all_results.csv", "w", newline="") as fh:
    if rows:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys())); w.writeheader(); w.writerows(rows)
print(f"| instances | run | " + " | ".join(sorted(counts)) + " |")
print(f"| {n_all} | {len(rows)} | " + " | ".join(str(counts[k]) for k in sorted(counts)) + " |")
if oom:
    print(f"oom retried: {len(oom)}" + (f" ({kept} not rerun before the wall: first try's error kept)" if kept else ""))
PY
