#!/usr/bin/env bash
# GPU validation of `--device`: `dtensor-verify benchmark` on mnist_fc (90 instances), oval21 (30)
# and sri_resnet_a (72), with --device cuda and --device cpu side by side, then a Markdown table
# (bench/gpu/bench_table.py) of verdicts, times and cuda-vs-cpu agreement.
#
#   bench/gpu/gpu_check.sh prepare          # here: copy the three benchmarks into .bench_models/
#   bench/gpu/gpu_check.sh OUT_DIR          # on the GPU machine (the `device` tool), repeatable
#
# Made for the lent machines of the `device` tool: the image has torch 2.11 + CUDA, onnx,
# onnxruntime, numpy, tqdm and torchvision; onnx2torch travels as a wheel in .whl/ (`prepare`
# prints the pip command) and the models in .bench_models/ (both git-ignored: name them in the
# tool's `carry`). The script checks the imports first and names anything missing. One call of the tool may run 10 minutes, so a
# call stops itself after GPU_CHECK_BUDGET seconds and the next call goes on where it stopped:
# the CSVs live in out/gpu_check/ (kept while the machine stays warm) and every run uses
# `benchmark --resume`. Each call copies the CSVs, logs and the table to OUT_DIR.
#
# Settings (environment):
#   GPU_CHECK_SCALE=0.1       timeout scale: each instance gets 0.1 x its VNN-COMP timeout
#                             (mnist_fc 12 / 30 s, oval21 72 s, sri_resnet_a 30 s)
#   GPU_CHECK_BUDGET=540      seconds of benchmarking per call (then stop; run again to resume)
#   GPU_CHECK_DEVICES="cuda cpu"   GPU_CHECK_SUITES="mnist_fc oval21 sri_resnet_a"
#   GPU_CHECK_LIMIT=N         first N instances per suite only (dry runs)
#   GPU_CHECK_FRESH=1         forget earlier results (default: resume them)
#   GPU_CHECK_WORK=DIR        where the CSVs live between calls (default out/gpu_check/)
#   BENCH=DIR                 benchmarks (default .bench_models/, else ../shared/benchmarks)
#   DV_PYTHON=python3         interpreter (the image's; .venv is not used)
# CPU dry run here (no GPU: the cuda runs end in one `--device cuda` error line, noted in the log):
#   GPU_CHECK_SCALE=0.01 GPU_CHECK_LIMIT=2 DV_PYTHON=.venv/bin/python bench/gpu/gpu_check.sh /tmp/gpu_check
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ $# -ne 1 ]; then
  echo "usage: bench/gpu/gpu_check.sh prepare | OUT_DIR" >&2
  exit 2
fi
SUITES="${GPU_CHECK_SUITES:-mnist_fc oval21 sri_resnet_a}"

if [ "$1" = "prepare" ]; then
  SRC="${BENCH:-$ROOT/../shared/benchmarks}"
  mkdir -p "$ROOT/.bench_models"
  for s in $SUITES; do
    cp -r "$SRC/$s" "$ROOT/.bench_models/" || exit 2
  done
  du -sh "$ROOT/.bench_models"
  echo "wheel: python3 -m pip download --no-deps --only-binary=:all: -d .whl onnx2torch==1.5.15" \
       "(pure Python; the image has onnx, onnxruntime, tqdm); carry .bench_models and .whl"
  exit 0
fi

OUT="$1"
PY="${DV_PYTHON:-python3}"
SCALE="${GPU_CHECK_SCALE:-0.1}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
DEVICES="${GPU_CHECK_DEVICES:-cuda cpu}"
WORK="${GPU_CHECK_WORK:-$ROOT/out/gpu_check}"
if [ -z "${BENCH:-}" ]; then
  if [ -d "$ROOT/.bench_models" ]; then BENCH="$ROOT/.bench_models"; else BENCH="$ROOT/../shared/benchmarks"; fi
fi
mkdir -p "$OUT" "$WORK"
[ "${GPU_CHECK_FRESH:-0}" = "1" ] && rm -f "$WORK"/*.csv "$WORK"/*.log
LOG="$WORK/gpu_check_log.txt"
say() { echo "[gpu_check] $*" | tee -a "$LOG"; }

WHEELS="${WHEELS:-$ROOT/.whl}"        # carried wheels (a dry run points this elsewhere)
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dv_site \
    "$WHEELS"/*.whl || { say "installing $WHEELS failed"; exit 2; }
  export PYTHONPATH="/tmp/dv_site:$ROOT:${PYTHONPATH:-}"
else
  export PYTHONPATH="$ROOT:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

# Everything the benchmark imports must be there; say what is not, in one line, before any run.
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "numpy", "onnx", "onnxruntime", "onnx2torch", "tqdm"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  say "missing Python packages: $missing (put their wheels in .whl/ and carry it)"
  exit 2
fi
for s in $SUITES; do
  [ -f "$BENCH/$s/instances.csv" ] || { say "$BENCH/$s/instances.csv not found (run 'bench/gpu/gpu_check.sh prepare' and carry .bench_models)"; exit 2; }
done

{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c 'import torch, os; print("torch", torch.__version__, "cuda devices", torch.cuda.device_count(), "cpus", os.cpu_count(), "threads", torch.get_num_threads())'
  echo "timeout scale $SCALE; devices $DEVICES; suites $SUITES; limit ${GPU_CHECK_LIMIT:-all}"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

deadline=$((SECONDS + BUDGET))
finished=1
failed=0
for s in $SUITES; do
  expected=()
  [ -f "$BENCH/$s/expected_256x2.csv" ] && expected=(--expected "$BENCH/$s/expected_256x2.csv")
  for dev in $DEVICES; do
    left=$((deadline - SECONDS))
    if [ "$left" -le 15 ]; then
      say "budget of ${BUDGET} s used up before $s on $dev: run again to resume"
      finished=0
      continue
    fi
    say "$s on $dev (timeout scale $SCALE, ${left} s left in this call)"
    timeout --kill-after=10 "$left" "$PY" -m dtensor_verify benchmark "$BENCH/$s" --csv "$WORK/${s}_${dev}.csv" \
      --resume --timeout-scale "$SCALE" --device "$dev" --quiet "${expected[@]}" \
      ${GPU_CHECK_LIMIT:+--limit "$GPU_CHECK_LIMIT"} > "$WORK/${s}_${dev}.log" 2>&1
    rc=$?
    case $rc in
      0) say "$s on $dev: done" ;;
      1) say "$s on $dev: done, a verdict CONTRADICTS the expected one (see ${s}_${dev}.log)" ;;
      124|137) say "$s on $dev: stopped by the budget; run again to resume"; finished=0 ;;
      *) say "$s on $dev: exit $rc: $(grep 'dtensor-verify: error' "$WORK/${s}_${dev}.log" | tail -1)"; failed=1 ;;
    esac
  done
done

cp -f "$WORK"/*.csv "$WORK"/*.log "$OUT"/ 2>/dev/null
csvs=$(ls "$WORK"/*.csv 2>/dev/null)
if [ -n "$csvs" ]; then
  # shellcheck disable=SC2086
  "$PY" "$ROOT/bench/gpu/bench_table.py" $csvs --bench "$BENCH" --out "$OUT/table.md" \
    --title "benchmark --device cuda vs cpu, timeout scale $SCALE$([ $finished = 1 ] || echo ' (unfinished: run again)')"
  table_rc=$?
else
  say "no results yet"
  table_rc=1
fi
if [ $finished = 0 ]; then
  say "not finished: run the same command again to resume"
elif [ $failed = 1 ]; then
  say "finished, but some runs failed (see above and the .log files)"
else
  say "all suites finished"
fi
[ $failed = 1 ] && exit 2
exit $table_rc
