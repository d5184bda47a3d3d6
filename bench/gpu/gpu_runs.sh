#!/usr/bin/env bash
# The GPU runs behind docs/MEMORY.md, as made through the `device` tool (see bench/gpu/gpu_bench.sh).
#   bench/gpu/gpu_runs.sh scaling OUT   wide MLPs 4096/8192, all plans, P = 1, 2, ours and auto_LiRPA 0.3
#   bench/gpu/gpu_runs.sh models  OUT   the oval21 CNN and the SRI ResNet, all plans, P = 1, 2
#   bench/gpu/gpu_runs.sh deep    OUT   a depth-8 MLP (8 x 8192), all plans, P = 1, 2 (alpha-CROWN: 5 iterations)
#   bench/gpu/gpu_runs.sh widest  OUT   the widest MLPs for CROWN on one GPU, ours vs auto_LiRPA 0.3
#   bench/gpu/gpu_runs.sh beyond  OUT   alpha-CROWN on an MLP that does not fit one GPU, then on two
#   bench/gpu/gpu_runs.sh streaming OUT fsdp vs fsdp-prefetch vs spec (streamed weights) time, CROWN, 3 repeats
# GPU_PS="1 2 4" overrides every part's list of world sizes (on nvidia-h200-x4).
# Each part leaves OUT/<part>_results.jsonl (+ log); `python scripts/bench_memory.py report --out DIR`
# turns a results.jsonl into the tables and plot. Parts run under time limits so that a call of the
# device tool (10 minutes) always returns what finished.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PART="$1"; OUT="$2"
WORK="${TMPDIR:-/tmp}/gpu_runs"; mkdir -p "$OUT"

segment() {   # segment NAME SECONDS PS ARGS...
  local name="$1" limit="$2" ps="${GPU_PS:-$3}"; shift 3
  mkdir -p "$WORK/$name"
  timeout "$limit" bash "$ROOT/bench/gpu/gpu_bench.sh" "$WORK/$name" "$ps" "$@"
  echo "[$name] exit $?" | tee -a "$OUT/${PART}_log.txt"
  cat "$WORK/$name/results.jsonl" >> "$OUT/${PART}_results.jsonl" 2>/dev/null
  cat "$WORK/$name/log.txt" >> "$OUT/${PART}_log.txt" 2>/dev/null
  cp -f "$WORK/$name/gpus.txt" "$OUT/gpus.txt" 2>/dev/null
}

case "$PART" in
  scaling)
    segment scaling 560 "1 2" --models mlp --widths 4096,8192 --methods crown,alpha-crown --repeats 1 --lirpa ;;
  models)
    segment models 170 "1 2" --models cnn,resnet --methods crown,alpha-crown --repeats 1 ;;
  deep)
    segment deep 420 "1 2" --models mlp --widths 8192 --depth 8 --methods crown,alpha-crown --alpha-iters 5 --repeats 1 ;;
  widest)
    segment crown_p1 240 "1" --models mlp --widths 16384,32768 --methods crown --repeats 1 --lirpa ;;
  streaming)
    segment streaming 400 "1 2" --models mlp --widths 4096,8192 --methods crown --plans replicate,fsdp,fsdp-prefetch,spec --repeats 3 ;;
  beyond)
    segment alpha_p1 100 "1" --models mlp --widths 16384,24576 --methods alpha-crown --alpha-iters 5 --repeats 1
    segment alpha_p2 170 "2" --models mlp --widths 24576 --methods alpha-crown --plans spec,tp --alpha-iters 5 --repeats 1 ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
esac
