#!/usr/bin/env bash
# The GPU runs behind docs/BENCHMARKS.md, on one lent machine (the `device` tool, nvidia-h100-x1),
# as background jobs that outlive the tool's 10-minute calls:
#
#   bench/gpu/gpu_session.sh start     # install the carried wheels, check both tools start, launch:
#     job gpu: dtensor-verify vs alpha,beta-CROWN on the GPU, one after the other on the same
#              instances and limits (bench/gpu/bench_vs_abcrown.py): mnist-net_256x2 at its VNN-COMP
#              limit, 256x4 and 256x6 at SCALE_DEEP x theirs, oval21 at SCALE_OVAL x its limit;
#              then dtensor-verify alone on sri_resnet_a (cuda) at SCALE_SRI;
#     job cpu: dtensor-verify --device cpu (CPU_THREADS threads) on the same suites and limits, at
#              the same time (the GPU jobs need one core each; the machine has 16).
#   bench/gpu/gpu_session.sh start-rest   # on a second machine: oval21 vs abcrown and sri (cuda) only
#   bench/gpu/gpu_session.sh start-batch  # dtensor-verify alone on cuda, branch and bound's domain
#     batch (parents per round) BATCHES over oval21 (SCALE_OVAL) and mnist-net_256x4 (SCALE_DEEP),
#     one run after the other (carry [".whl", ".bench_data"]; abcrown not needed)
#   bench/gpu/gpu_session.sh status    # what has finished (prints the tails of the logs)
#   bench/gpu/gpu_session.sh collect   # tar.gz of everything into $OUT (one file)
#
# Carry [".whl", ".abcrown", ".bench_data"] (bench/gpu/stage_bench_data.sh; git-ignored). Results
# live in /tmp/gpu_session until the machine goes back.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
source "$ROOT/bench/gpu/lib.sh"
W=/tmp/gpu_session
PY="${DV_PYTHON:-python3}"
SCALE_SMALL="${SCALE_SMALL:-1.0}"      # mnist-net_256x2 (VNN-COMP limit 120 s)
SCALE_DEEP="${SCALE_DEEP:-0.05}"
SCALE_OVAL="${SCALE_OVAL:-0.02}"
SCALE_SRI="${SCALE_SRI:-0.02}"
CPU_THREADS="${CPU_THREADS:-8}"
BATCHES="${BATCHES:-2048 8192}"          # start-batch: --bab-batch values (BATCHES_MNIST: for 256x4)
LIMIT="${LIMIT:-}"                       # first N instances of each run (dry runs)
DEVICE="${DEVICE:-cuda}"
ABC="$ROOT/.abcrown"
B="$ROOT/.bench_data"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1

setup_env() {
  [ -n "${SKIP_WHEELS:-}" ] || install_wheels "$PY" /tmp/site \
    || { echo "gpu_session: $ROOT/.whl: no wheels, or pip could not install them" >&2; exit 2; }
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

vs_abcrown() {   # NAME FAMILY SCALE FILTER
  local name=$1 family=$2 scale=$3 filter=$4
  local args=("$B/$family" --abcrown "$ABC/alpha-beta-CROWN" --auto-lirpa "$ABC/auto_LiRPA"
              --onnx2pytorch "$ABC/onnx2pytorch" --out "$W/$name" --work "$W/work_$name"
              --device "$DEVICE" --timeout-scale "$scale" --deadline 100000)
  [ -n "$filter" ] && args+=(--filter "$filter")
  [ -n "${LIMIT:-}" ] && args+=(--limit "$LIMIT")
  [ -f "$B/ours_commit.txt" ] && args+=(--ours-commit "$(cat "$B/ours_commit.txt")")
  [ -f "$B/$family/expected_256x2.csv" ] && args+=(--expected "$B/$family/expected_256x2.csv")
  "$PY" "$ROOT/bench/gpu/bench_vs_abcrown.py" "${args[@]}" > "$W/$name.log" 2>&1
  echo "$name exit $?" >> "$W/progress.txt"
}

ours() {   # NAME DEVICE SUITE SCALE FILTER THREADS [more benchmark args]
  local name=$1 dev=$2 suite=$3 scale=$4 filter=$5 threads=$6
  shift 6
  local args=(--threads "$threads" benchmark "$B/$suite" --device "$dev" --timeout-scale "$scale"
              --csv "$W/$name.csv" --quiet "$@")
  [ -n "$filter" ] && args+=(--filter "$filter")
  [ -n "${LIMIT:-}" ] && args+=(--limit "$LIMIT")
  [ -f "$B/$suite/expected_256x2.csv" ] && [ "$filter" = "mnist-net_256x2" ] && args+=(--expected "$B/$suite/expected_256x2.csv")
  "$PY" -m dtensor_verify "${args[@]}" > "$W/$name.log" 2>&1
  echo "$name exit $?" >> "$W/progress.txt"
}

job_gpu() {
  vs_abcrown vs_abcrown_256x2 mnist_fc "$SCALE_SMALL" mnist-net_256x2
  vs_abcrown vs_abcrown_256x4 mnist_fc "$SCALE_DEEP" mnist-net_256x4
  vs_abcrown vs_abcrown_256x6 mnist_fc "$SCALE_DEEP" mnist-net_256x6
  vs_abcrown vs_abcrown_oval21 oval21 "$SCALE_OVAL" ""
  ours sri_resnet_a_cuda cuda sri_resnet_a "$SCALE_SRI" "" 1
  echo "job gpu done" >> "$W/progress.txt"
}

job_gpu_rest() {   # a second machine: what job gpu had not reached when the first went back
  vs_abcrown vs_abcrown_oval21 oval21 "$SCALE_OVAL" ""
  ours sri_resnet_a_cuda cuda sri_resnet_a "$SCALE_SRI" "" 1
  echo "job gpu-rest done" >> "$W/progress.txt"
}

job_batch() {   # the same suites at several domain batches, one run at a time on the GPU
  for batch in $BATCHES; do ours "oval21_${DEVICE}_b$batch" "$DEVICE" oval21 "$SCALE_OVAL" "" 1 --bab-batch "$batch"; done
  for batch in ${BATCHES_MNIST:-$BATCHES}; do
    ours "mnist_256x4_${DEVICE}_b$batch" "$DEVICE" mnist_fc "$SCALE_DEEP" mnist-net_256x4 1 --bab-batch "$batch"
  done
  echo "job batch done" >> "$W/progress.txt"
}

job_cpu() {
  ours mnist_256x2_cpu cpu mnist_fc "$SCALE_SMALL" mnist-net_256x2 "$CPU_THREADS"
  ours mnist_256x4_cpu cpu mnist_fc "$SCALE_DEEP" mnist-net_256x4 "$CPU_THREADS"
  ours mnist_256x6_cpu cpu mnist_fc "$SCALE_DEEP" mnist-net_256x6 "$CPU_THREADS"
  ours oval21_cpu cpu oval21 "$SCALE_OVAL" "" "$CPU_THREADS"
  ours sri_resnet_a_cpu cpu sri_resnet_a "$SCALE_SRI" "" "$CPU_THREADS"
  echo "job cpu done" >> "$W/progress.txt"
}

case "${1:-}" in
  start|start-rest|start-batch)
    setup_env
    rm -rf "$W"; mkdir -p "$W"
    {
      date -u
      gpu_names
      nproc
      software_versions "$PY"
      echo "scales: deep $SCALE_DEEP oval $SCALE_OVAL sri $SCALE_SRI; cpu threads $CPU_THREADS"
      echo "dtensor_verify commit: $(cat "$B/ours_commit.txt" 2>/dev/null)"
      abcrown_commits "$ABC"
    } > "$W/env.txt" 2>&1
    cat "$W/env.txt"
    "$PY" -m dtensor_verify --help > /dev/null || { echo "gpu_session: dtensor_verify does not start" >&2; exit 2; }
    [ "$1" = start-batch ] || abcrown_starts "$PY" "$ABC" "$W/abcrown_help.log" \
      || { tail -5 "$W/abcrown_help.log"; echo "gpu_session: abcrown does not start" >&2; exit 2; }
    export -f vs_abcrown ours job_gpu job_gpu_rest job_cpu job_batch
    export W PY B ABC DEVICE LIMIT SCALE_SMALL SCALE_DEEP SCALE_OVAL SCALE_SRI CPU_THREADS BATCHES BATCHES_MNIST ROOT PYTHONPATH
    if [ "$1" = start ]; then
      setsid bash -c job_gpu > "$W/job_gpu.out" 2>&1 < /dev/null &
      setsid bash -c job_cpu > "$W/job_cpu.out" 2>&1 < /dev/null &
    elif [ "$1" = start-batch ]; then
      setsid bash -c job_batch > "$W/job_batch.out" 2>&1 < /dev/null &
    else
      setsid bash -c job_gpu_rest > "$W/job_gpu.out" 2>&1 < /dev/null &
    fi
    sleep 2
    echo "started $1 (results in $W)"
    ;;
  status)
    date -u
    cat "$W/progress.txt" 2>/dev/null
    for f in "$W"/*.log; do echo "== $f"; tail -c 600 "$f" | tr '\r' '\n' | tail -4; done
    ;;
  collect)
    mkdir -p "${OUT:?}"
    tar -czf "$OUT/gpu_session.tar.gz" -C /tmp --exclude='gpu_session/work_*' gpu_session
    ls -la "$OUT"
    ;;
  *)
    echo "usage: bench/gpu/gpu_session.sh start | start-rest | start-batch | status | collect" >&2
    exit 2
    ;;
esac
