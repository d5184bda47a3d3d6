#!/usr/bin/env bash
# One call of the `device` tool (nvidia-h100-x1): dtensor-verify (alpha-CROWN + beta-CROWN BaB)
# and alpha,beta-CROWN side by side on one benchmark family, both on the GPU, each tool on all
# instances in one process, through bench/gpu/bench_vs_abcrown.py.
#
#   bench/gpu/gpu_bab_vs_abcrown.sh FAMILY [TIMEOUT_SCALE] [FILTERS]
#     FAMILY         mnist_fc | oval21 (a folder of .bench_data/)
#     TIMEOUT_SCALE  multiplies instances.csv's timeouts (default 0.01, see below)
#     FILTERS        comma-separated substrings of instance paths (default: all instances)
#   Results go to $OUT/FAMILY (the device tool's $OUT; OUT_DIR=... overrides): results.csv,
#   table.md, ours.csv, ours.log, abcrown.log, env.txt, runner.log (7 files: one family per call,
#   the tool brings back at most 8).
#
# The call carries [".whl", ".abcrown", ".bench_data"] (git-ignored, never committed):
#   .whl         wheels for the image's Python 3.12 that it lacks: onnx2torch (ours); gurobipy
#                (imported by abcrown.py even with MIP off), onnxoptimizer, skl2onnx, graphviz,
#                appdirs (abcrown / auto_LiRPA);
#   .abcrown     alpha-beta-CROWN, auto_LiRPA (its submodule commit) and onnx2pytorch (the fork
#                abcrown's load_model.py names) as exported source trees with a COMMIT file each;
#   .bench_data  bench/gpu/stage_bench_data.sh's copy of the benchmarks and this checkout's commit.
#
# Time: the device tool stops a command after 600 s; the runner stops by DEADLINE (default 500 s
# after it starts: ours is killed after 60 % of that, abcrown's unfinished instances are recorded
# as such). Unsolved instances cost their full limit in both tools, so the default scale 0.01
# (mnist_fc limits 1.2 s for 256x2 and 3 s for 256x4/6, oval21 7.2 s) is sized for about 8
# minutes: mnist_fc ~ 90 instances x ~1 s fixed cost + ~40 unsolved x 3 s per tool, oval21 ~ 30 x
# ~3 s + ~20 unsolved x 7 s per tool, plus ~1 min of start-up. Larger scales need FILTERS (e.g.
# `mnist_fc 0.1 256x2`: 30 instances, 12 s limits).
#
# Dry run on a CPU box (LIMIT=N: the first N selected instances only):
#   DEVICE=cpu DV_PYTHON=.venv/bin/python SKIP_WHEELS=1 OUT_DIR=/tmp/x LIMIT=4 \
#   PYTHONPATH=<site with abcrown's extra packages> bench/gpu/gpu_bab_vs_abcrown.sh mnist_fc 0.05 256x2
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
source "$ROOT/bench/gpu/lib.sh"
FAMILY="${1:?usage: bench/gpu/gpu_bab_vs_abcrown.sh mnist_fc|oval21 [TIMEOUT_SCALE] [FILTERS]}"
SCALE="${2:-0.01}"
FILTERS="${3:-}"
DEVICE="${DEVICE:-cuda}"
PY="${DV_PYTHON:-python3}"
DEADLINE="${DEADLINE:-500}"
DEST="${OUT_DIR:-${OUT:?set OUT or OUT_DIR}/$FAMILY}"
BENCH="$ROOT/.bench_data/$FAMILY"
ABC="$ROOT/.abcrown"

fail() { echo "gpu_bab_vs_abcrown: error: $*" >&2; exit 2; }
[ -f "$BENCH/instances.csv" ] || fail "$BENCH/instances.csv: no such file (run bench/gpu/stage_bench_data.sh and carry .bench_data)"
[ -f "$ABC/alpha-beta-CROWN/complete_verifier/abcrown.py" ] || fail "$ABC/alpha-beta-CROWN: no abcrown.py (carry .abcrown)"
mkdir -p "$DEST"

[ -n "${SKIP_WHEELS:-}" ] || install_wheels "$PY" /tmp/site || fail "$ROOT/.whl: no wheels, or pip could not install them (carry .whl)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1

{
  echo "family $FAMILY, timeout scale $SCALE, filters '${FILTERS:-all}', limit ${LIMIT:-none}, device $DEVICE, deadline $DEADLINE s"
  gpu_names
  software_versions "$PY"
  echo "dtensor_verify commit: $(cat "$ROOT/.bench_data/ours_commit.txt" 2>/dev/null || echo unknown)"
  abcrown_commits "$ABC"
} 2>&1 | tee "$DEST/env.txt"

# Both tools must start under this image's torch before the long run spends the call.
"$PY" -m dtensor_verify --help >/dev/null || fail "python -m dtensor_verify --help failed"
if ! abcrown_starts "$PY" "$ABC" "$DEST/runner.log"; then
  tail -5 "$DEST/runner.log" >&2
  fail "alpha,beta-CROWN does not start here (log in runner.log)"
fi

args=("$BENCH" --abcrown "$ABC/alpha-beta-CROWN" --auto-lirpa "$ABC/auto_LiRPA"
      --onnx2pytorch "$ABC/onnx2pytorch" --out "$DEST" --work "/tmp/bva_work_$FAMILY"
      --device "$DEVICE" --timeout-scale "$SCALE" --deadline "$DEADLINE")
[ -f "$ROOT/.bench_data/ours_commit.txt" ] && args+=(--ours-commit "$(cat "$ROOT/.bench_data/ours_commit.txt")")
[ -f "$BENCH/expected_256x2.csv" ] && args+=(--expected "$BENCH/expected_256x2.csv")
IFS=',' read -r -a filters <<< "$FILTERS"
for f in "${filters[@]}"; do [ -n "$f" ] && args+=(--filter "$f"); done
[ -n "${LIMIT:-}" ] && args+=(--limit "$LIMIT")

timeout -k 10 $((DEADLINE + 60)) "$PY" "$ROOT/bench/gpu/bench_vs_abcrown.py" "${args[@]}" 2>&1 | tee "$DEST/runner.log"
rc=${PIPESTATUS[0]}
shrink_logs "$DEST/abcrown.log" "$DEST/ours.log"
echo "bench_vs_abcrown exit status $rc (0 ok, 1 contradiction, 2 usage error, 124 killed by timeout)"
exit "$rc"
