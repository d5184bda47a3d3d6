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

if [ -z "${SKIP_WHEELS:-}" ]; then
  ls "$ROOT"/.whl/*.whl >/dev/null 2>&1 || fail "$ROOT/.whl: no wheels (carry .whl)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$ROOT"/.whl/*.whl || fail "pip could not install the carried wheels"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1    # abcrown's PGD progress bars would fill the log

{
  echo "benchmark $BENCH, $PARTS abcrown processes, timeout scale $SCALE, deadline $WALL s, device $DEVICE, $THREADS threads each"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  "$PY" -c 'import sys, torch, numpy, onnx, onnxruntime; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
"numpy", numpy.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)'
  for d in alpha-beta-CROWN auto_LiRPA onnx2pytorch; do echo "$d commit: $(cat "$ABC/$d/COMMIT" 2>/dev/null || echo unknown)"; done
  nproc; uptime
} 2>&1 | tee "$DEST/env.txt"

# abcrown must start under this image's torch before the long run spends the call.
if ! PYTHONPATH="$ABC/auto_LiRPA:$ABC/onnx2pytorch:${PYTHONPATH:-}" "$PY" \
     "$ABC/alpha-beta-CROWN/complete_verifier/abcrown.py" --help >"$DEST/runner.log" 2>&1; then
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
log="$DEST/abcrown.log"                      # the tool brings back files up to 16 MiB
if [ -f "$log" ] && [ "$(stat -c %s "$log")" -gt $((12 * 1024 * 1024)) ]; then gzip -f "$log"; fi
echo "bench_vs_abcrown exit status $rc (0 ok, 1 contradiction, 2 usage error, 124 killed by timeout)"
exit "$rc"
