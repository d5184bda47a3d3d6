#!/usr/bin/env bash
# CROWN on the full TinyYOLO (all 21125 outputs, first property box) on one GPU: ours (patches)
# and auto_LiRPA 0.3 (conv_mode 'patches'), each in a fresh process, peaks from the CUDA caching
# allocator (torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus
# memory_allocated before the call), same bounds compared per output
# (scripts/bench_memory_patches.py --device cuda; docs/MEMORY.md, "TinyYOLO vs auto_LiRPA").
#
#   scripts/bench_memory_patches_gpu.sh stage          # here: copies what the device machine lacks
#   scripts/bench_memory_patches_gpu.sh run OUT_DIR    # there: carry [".device_site", ".bench_models"]
#
# `stage` fills two git-ignored folders (about 16 MiB): .bench_models/yolo_2023 (the benchmark,
# from ../shared/benchmarks) and .device_site/ (auto_LiRPA 0.3, onnx2torch, tqdm and appdirs from
# this venv: pure Python; the device image has torch, onnx and onnxruntime). `run` takes at most
# about 2 x CELL_TIMEOUT plus start-up (default 140 s a cell: the call ends within ~300 s). Overrides: MODELS (e.g.
# yolo_2023:TinyYOLO@input.52, the CPU prefix), DEVICE (cpu for a dry run here), TOOLS, MAX_ROWS
# (ours only; default none, as auto_LiRPA), BENCH_DIR, PY.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-}"

if [ "$cmd" = stage ]; then
  src="${BENCH_DIR:-$ROOT/../shared/benchmarks}"
  site="$("${PY:-$ROOT/.venv/bin/python}" -c 'import importlib.util as u, os; print(os.path.dirname(os.path.dirname(u.find_spec("auto_LiRPA").origin)))')"
  for d in .bench_models .device_site; do
    git -C "$ROOT" check-ignore -q "$ROOT/$d/" || { echo "stage: error: $d is not git-ignored" >&2; exit 2; }
  done
  mkdir -p "$ROOT/.bench_models" "$ROOT/.device_site"
  rm -rf "$ROOT/.bench_models/yolo_2023"
  cp -r "$src/yolo_2023" "$ROOT/.bench_models/yolo_2023"
  for pkg in auto_LiRPA onnx2torch tqdm appdirs.py; do
    rm -rf "$ROOT/.device_site/$pkg"
    cp -r "$site/$pkg" "$ROOT/.device_site/$pkg"
  done
  find "$ROOT/.device_site" -name __pycache__ -prune -exec rm -rf {} +
  du -sh "$ROOT/.bench_models" "$ROOT/.device_site"
  exit 0
fi
if [ "$cmd" != run ] || [ -z "${2:-}" ]; then
  echo "usage: $0 stage | run OUT_DIR" >&2
  exit 2
fi
OUT="$2"
mkdir -p "$OUT"
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
export PYTHONPATH="$ROOT/.device_site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$OUT/gpus.txt" || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >> "$OUT/gpus.txt"
args=(--models "${MODELS:-yolo_2023:TinyYOLO}" --tools "${TOOLS:-ours-patches,lirpa-patches}"
      --device "$DEVICE" --benchmarks "${BENCH_DIR:-$ROOT/.bench_models}" --timeout "${CELL_TIMEOUT:-140}" --out "$OUT")
if [ -n "${MAX_ROWS:-}" ]; then args+=(--max-rows "$MAX_ROWS"); fi
"$PY" "$ROOT/scripts/bench_memory_patches.py" "${args[@]}" 2>&1 | grep -v -i warn | tee "$OUT/log.txt"
