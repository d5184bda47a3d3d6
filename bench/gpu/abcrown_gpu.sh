#!/usr/bin/env bash
# alpha,beta-CROWN alone on one VNN-COMP benchmark at its own limits on one lent GPU, its
# instances dealt round-robin to several abcrown processes sharing the GPU (as input_bab_gpu.sh
# deals ours), through bench/gpu/bench_vs_abcrown.py --tools abcrown --parts K. Ours runs in a
# call of its own (input_bab_gpu.sh); give its merged CSV as OURS_CSV here, or compare afterwards
# on any machine with `bench_vs_abcrown.py BENCH --ours-csv OURS --abcrown-csv abcrown.csv`.
#
#   bash bench/gpu/abcrown_gpu.sh BENCH [PARTS] [TIMEOUT_SCALE] [WALL_S] [OURS_CSV]
#     BENCH          a folder of .bench_data/ whose name bench_vs_abcrown.py has a released
#                    config for (acasxu_2023: vnncomp21/acasxu.yaml; vit_2023: vnncomp23/vit.yaml)
#     PARTS          abcrown processes side by side (default 8)
#     TIMEOUT_SCALE  multiplies instances.csv's timeouts (default 1.0: the VNN-COMP limits)
#     WALL_S         the runner's deadline from its start (default 470): unfinished instances are
#                    recorded as `error` "not finished before --deadline"
#     OURS_CSV       optional: ours' verdicts (dtensor-verify benchmark --csv, or input_bab_gpu.sh's
#                    all_results.csv); a sat/unsat clash is a CONTRADICTION (exit status 1)
#   Environment: OUT_DIR (default $OUT/BENCH), DEVICE (default cuda), PY (default python3),
#   THREADS (CPU threads per abcrown process, default 2), FILTERS (comma-separated substrings of
#   instance paths), LIMIT (first N selected instances), SKIP_WHEELS=1 (do not install .whl),
#   BENCH_DATA / ABCROWN_DIR (instead of .bench_data / .abcrown), ABCROWN_CONFIG (a YAML for all
#   instances instead of the released one), INSTANCES (a CSV of instances relative to the
#   benchmark folder instead of its instances.csv, e.g. bench/gpu/subsets/vit_2023_every5.csv).
#   Results (6 files, the device tool brings back 8): env.txt, runner.log, results.csv, table.md,
#   abcrown.csv (onnx, vnnlib, verdict, seconds, status, message), abcrown.log(.gz).
#
# The call carries [".whl", ".abcrown", ".bench_data"] (git-ignored; bench/gpu/stage_abcrown.sh
# stages them): .whl holds onnx2torch and vnnlib (ours) and gurobipy (abcrown.py imports it even
# with MIP off), onnxoptimizer, skl2onnx, graphviz, appdirs (abcrown / auto_LiRPA) for the
# image's Python 3.12; .abcrown the source trees with a COMMIT file each.
#
# Dry run on this CPU (abcrown's other packages from a local site folder):
#   DEVICE=cpu PY=.venv/bin/python SKIP_WHEELS=1 THREADS=1 OUT_DIR=/tmp/x LIMIT=3 \
#   PYTHONPATH=<site> nice -n 10 bash bench/gpu/abcrown_gpu.sh acasxu_2023 2 0.1 200
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
source "$ROOT/bench/gpu/lib.sh"
BENCH="${1:?usage: bench/gpu/abcrown_gpu.sh BENCH [PARTS] [TIMEOUT_SCALE] [WALL_S] [OURS_CSV]}"
PARTS="${2:-8}"; SCALE="${3:-1.0}"; WALL="${4:-470}"; OURS_CSV="${5:-}"
DEVICE="${DEVICE:-cuda}"; PY="${PY:-python3}"; THREADS="${THREADS:-2}"
DEST="${OUT_DIR:-${OUT:?set OUT or OUT_DIR}/$BENCH}"
D="${BENCH_DATA:-$ROOT/.bench_data}/$BENCH"
ABC="${ABCROWN_DIR:-$ROOT/.abcrown}"

fail() { echo "abcrown_gpu: error: $*" >&2; exit 2; }
[ -f "$D/instances.csv" ] || fail "$D/instances.csv: no such file (run bench/gpu/stage_abcrown.sh and carry .bench_data)"
[ -f "$ABC/alpha-beta-CROWN/complete_verifier/abcrown.py" ] || fail "$ABC/alpha-beta-CROWN: no abcrown.py (carry .abcrown)"
[ -z "$OURS_CSV" ] || [ -f "$OURS_CSV" ] || fail "$OURS_CSV: no such file"
mkdir -p "$DEST"

[ -n "${SKIP_WHEELS:-}" ] || install_wheels "$PY" /tmp/site || fail "$ROOT/.whl: no wheels, or pip could not install them (carry .whl)"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1    # abcrown's PGD progress bars would fill the log

{
  echo "benchmark $BENCH, $PARTS abcrown processes, timeout scale $SCALE, deadline $WALL s, device $DEVICE, $THREADS threads each"
  gpu_names
  software_versions "$PY"
  abcrown_commits "$ABC"
  nproc; uptime
} 2>&1 | tee "$DEST/env.txt"

# abcrown must start under this image's torch before the long run spends the call.
if ! abcrown_starts "$PY" "$ABC" "$DEST/runner.log"; then
  tail -5 "$DEST/runner.log" >&2
  fail "alpha,beta-CROWN does not start here (log in runner.log)"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/abcrown_gpu_work.XXXXXX")"   # not under $OUT: only 8 files come back
tools=abcrown
args=("$D" --abcrown "$ABC/alpha-beta-CROWN" --auto-lirpa "$ABC/auto_LiRPA" --onnx2pytorch "$ABC/onnx2pytorch"
      --out "$DEST" --work "$WORK" --device "$DEVICE" --threads "$THREADS"
      --timeout-scale "$SCALE" --deadline "$WALL" --parts "$PARTS" --hang-grace 30)
[ -n "$OURS_CSV" ] && { tools=ours,abcrown; args+=(--ours-csv "$OURS_CSV"); }
args+=(--tools "$tools")
IFS=',' read -r -a filters <<< "${FILTERS:-}"
for f in "${filters[@]}"; do [ -n "$f" ] && args+=(--filter "$f"); done
[ -n "${LIMIT:-}" ] && args+=(--limit "$LIMIT")
[ -n "${ABCROWN_CONFIG:-}" ] && args+=(--abcrown-config "$ABCROWN_CONFIG")
[ -n "${INSTANCES:-}" ] && args+=(--instances "$INSTANCES")

timeout -k 10 $((WALL + 60)) "$PY" "$ROOT/bench/gpu/bench_vs_abcrown.py" "${args[@]}" 2>&1 | tee -a "$DEST/runner.log"
rc=${PIPESTATUS[0]}
# abcrown runs in sessions of its own, which the device tool does not end with this command: if the
# runner was killed before it could end them, end them here (the process groups it recorded).
if [ -f "$WORK/abcrown_pids.txt" ]; then
  while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null; done < "$WORK/abcrown_pids.txt"
fi
shrink_logs "$DEST/abcrown.log"
echo "bench_vs_abcrown exit status $rc (0 ok, 1 contradiction, 2 usage error, 124 killed by timeout)"
exit "$rc"
