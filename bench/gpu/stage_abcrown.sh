#!/usr/bin/env bash
# Stages what bench/gpu/abcrown_gpu.sh (and gpu_bab_vs_abcrown.sh) read on the device machine,
# which receives only this repository and the carried, git-ignored folders:
#   .abcrown/    alpha-beta-CROWN, auto_LiRPA (the commit abcrown's submodule names) and
#                onnx2pytorch (Verified-Intelligence's fork, which abcrown's load_model.py needs:
#                ConvertModel with `quirks`, and Shape traced so that ViT's reshapes keep the batch
#                dimension), exported from git repositories, each with a COMMIT file; their
#                bundled datasets, models, tests and examples are left out (abcrown runs on the
#                benchmark files it is given);
#   .whl/        cp312 manylinux wheels the device image lacks, pinned: gurobipy (abcrown.py
#                imports it even with MIP off; no licence is needed for that), onnxoptimizer,
#                skl2onnx, graphviz, appdirs (needs pip with network here);
#   .bench_data/ copies of the named benchmark folders of BENCHMARKS_DIR.
#
#   bench/gpu/stage_abcrown.sh ABCROWN_GIT AUTO_LIRPA_GIT ONNX2PYTORCH_GIT [BENCH ...]
#     *_GIT      git directories (a clone, or a bare mirror) of Verified-Intelligence/alpha-beta-CROWN,
#                Verified-Intelligence/auto_LiRPA and Verified-Intelligence/onnx2pytorch (or a fork
#                holding its commit, e.g. Winlere/onnx2pytorch)
#     BENCH      benchmark folders to copy from BENCHMARKS_DIR (default ../shared/benchmarks),
#                e.g. acasxu_2023 vit_2023
#   ABCROWN_COMMIT (default the mirror's HEAD), ONNX2PYTORCH_COMMIT (default 8afb224: the fork's
#   "make Shape traced correctly" merge of 2025-06-29, its last commit before the Dec 2025 abcrown
#   release; KaidiXu's 8447c42 of the earlier runs lacks it and abcrown crashes on vit's BaB with
#   it), PY (python with pip, default python3).
# Prints the size of everything a device call carries (the limit is 64 MiB with the repository).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ABC_GIT="${1:?usage: bench/gpu/stage_abcrown.sh ABCROWN_GIT AUTO_LIRPA_GIT ONNX2PYTORCH_GIT [BENCH ...]}"
LIRPA_GIT="${2:?auto_LiRPA git directory}"; O2P_GIT="${3:?onnx2pytorch git directory}"; shift 3
SRC="${BENCHMARKS_DIR:-$ROOT/../shared/benchmarks}"
PY="${PY:-python3}"
WHEELS="gurobipy==13.0.3 onnxoptimizer==0.4.2 skl2onnx==1.20.0 graphviz==0.21 appdirs==1.4.4"
fail() { echo "stage_abcrown: error: $*" >&2; exit 2; }

for d in .abcrown .whl .bench_data; do
  git -C "$ROOT" check-ignore -q "$ROOT/$d/" || fail "$ROOT/$d is not git-ignored (add /$d/ to .gitignore)"
done

export_tree() {   # GIT_DIR COMMIT DEST: the commit's files (blobs the mirror lacks are skipped)
  local git="$1" commit dest="$3"
  commit="$(git -C "$git" rev-parse "$2^{commit}")" || fail "$git: no commit $2"
  rm -rf "$dest"; mkdir -p "$dest"
  git -C "$git" ls-tree -r "$commit" | while read -r mode type obj path; do
    [ "$type" = blob ] || continue
    mkdir -p "$dest/$(dirname "$path")"
    if [ "$mode" = 120000 ]; then
      ln -s "$(git -C "$git" cat-file blob "$obj")" "$dest/$path"
    elif ! git -C "$git" cat-file blob "$obj" > "$dest/$path" 2>/dev/null; then
      rm -f "$dest/$path"; echo "  (not in the mirror, skipped: $path)"
    fi
  done
  echo "$commit" > "$dest/COMMIT"
}

abc_commit="${ABCROWN_COMMIT:-HEAD}"
lirpa_commit="$(git -C "$ABC_GIT" ls-tree "$abc_commit" auto_LiRPA | awk '{print $3}')"
[ -n "$lirpa_commit" ] || fail "$ABC_GIT: no auto_LiRPA submodule at $abc_commit"
export_tree "$ABC_GIT" "$abc_commit" "$ROOT/.abcrown/alpha-beta-CROWN"
export_tree "$LIRPA_GIT" "$lirpa_commit" "$ROOT/.abcrown/auto_LiRPA"
export_tree "$O2P_GIT" "${ONNX2PYTORCH_COMMIT:-8afb2243fddd1a4732883f1e2959f7e83f8201c5}" "$ROOT/.abcrown/onnx2pytorch"
rm -rf "$ROOT"/.abcrown/alpha-beta-CROWN/complete_verifier/{datasets,models} \
       "$ROOT"/.abcrown/auto_LiRPA/{tests,examples} "$ROOT"/.abcrown/onnx2pytorch/tests
[ -f "$ROOT/.abcrown/alpha-beta-CROWN/complete_verifier/abcrown.py" ] || fail "no complete_verifier/abcrown.py in $ABC_GIT"

mkdir -p "$ROOT/.whl"
for w in $WHEELS; do
  name="${w%%==*}"
  ls "$ROOT"/.whl/"${name}"-*.whl >/dev/null 2>&1 && continue
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$ROOT/.whl" "$w" \
    || fail "pip could not download $w"
done

for b in "$@"; do
  [ -f "$SRC/$b/instances.csv" ] || fail "$SRC/$b/instances.csv: no such file"
  rm -rf "$ROOT/.bench_data/$b"; mkdir -p "$ROOT/.bench_data"; cp -r "$SRC/$b" "$ROOT/.bench_data/$b"
  chmod -R u+w "$ROOT/.bench_data/$b"
done

echo "carried by a device call:"
total=0
for d in .whl .abcrown .bench_data; do
  kib=$(du -sk "$ROOT/$d" 2>/dev/null | cut -f1); kib=${kib:-0}; total=$((total + kib))
  printf '  %-12s %6s MiB\n' "$d" "$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')"
done
repo_kib=$(git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && xargs -0 du -ck 2>/dev/null) | tail -1 | cut -f1)
total=$((total + repo_kib))
printf '  %-12s %6s MiB\n  %-12s %6s MiB (limit 64 MiB)\n' repository "$(awk -v k="$repo_kib" 'BEGIN { printf "%.1f", k / 1024 }')" \
  total "$(awk -v k="$total" 'BEGIN { printf "%.1f", k / 1024 }')"
[ "$total" -le $((60 * 1024)) ] || echo "stage_abcrown: warning: more than 60 MiB would travel" >&2
