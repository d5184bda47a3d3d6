#!/usr/bin/env bash
# One `dtensor-verify run --json` under cProfile, then its 45 costliest calls (cumulative), to see
# where a stage spends its time on the device (e.g. nn4sys mscn_128d's CROWN on a shared GPU).
#   bash bench/gpu/profile_run.sh OUT_PREFIX ONNX VNNLIB TIMEOUT [run args...]
# Writes OUT_PREFIX.json (the run's stages), OUT_PREFIX.prof and OUT_PREFIX.txt (the table).
set -uo pipefail
PREFIX=$1; ONNX=$2; VNNLIB=$3; LIMIT=$4; shift 4
PY=${PY:-python3}
# (in-process: `python -m dtensor_verify` ends by os._exit, which would skip cProfile's dump)
$PY - "$PREFIX" --threads "${THREADS:-2}" run --onnx "$ONNX" --vnnlib "$VNNLIB" --results "$PREFIX.result.txt" \
  --timeout "$LIMIT" --json "$PREFIX.json" --device "${DEVICE:-cuda}" "$@" > "$PREFIX.log" 2>&1 <<'PY'
import cProfile, sys
from dtensor_verify.cli import main
prefix, args = sys.argv[1], sys.argv[2:]
prof = cProfile.Profile()
try:
    prof.runcall(main, args)
finally:
    prof.dump_stats(prefix + ".prof")
PY
$PY - "$PREFIX" <<'PY'
import json, pstats, sys
prefix = sys.argv[1]
with open(prefix + ".txt", "w") as out:
    try:
        d = json.load(open(prefix + ".json"))
        print("verdict", d.get("verdict"), "seconds", d.get("seconds"), "phases", d.get("phases"), file=out)
    except Exception as exc:  # a run that left no JSON still has its profile
        print("no JSON:", exc, file=out)
    pstats.Stats(prefix + ".prof", stream=out).sort_stats("cumtime").print_stats(60)
    pstats.Stats(prefix + ".prof", stream=out).sort_stats("tottime").print_stats(30)
PY
head -60 "$PREFIX.txt"
