#!/usr/bin/env bash
# GPU memory/time runs for docs/MEMORY.md, made through the `device` tool on lent H100/H200 machines.
# The image there has torch but not onnx2torch / auto_LiRPA: they travel as wheels in .whl/ and the
# ONNX models in .bench_models/ (both git-ignored, named in the tool's `carry`).
#   bench/gpu/gpu_bench.sh OUT_DIR PS [bench_memory.py run args...]     e.g.  bench/gpu/gpu_bench.sh $OUT "1 2" --widths 4096,8192
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$1"; PS="$2"; shift 2
if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl
  export PYTHONPATH="/tmp/site:$ROOT:${PYTHONPATH:-}"
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda devices", torch.cuda.device_count())' | tee -a "$OUT/gpus.txt"
BENCH_PYTHON=python3 BENCH_PS="$PS" OMP_NUM_THREADS=4 bash "$ROOT/scripts/bench_memory.sh" "$OUT" --device cuda \
  --benchmarks "$ROOT/.bench_models" "$@" 2>&1 | grep -v -i warn | tee "$OUT/log.txt"
