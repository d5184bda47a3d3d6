#!/usr/bin/env bash
# Stages what bench/gpu/gpu_bab_vs_abcrown.sh reads on the device machine, which receives only this
# repository (../shared/benchmarks stays behind): copies the mnist_fc and oval21 benchmark folders
# (and the tiny test one) into .bench_data/, records this checkout's commit there, and prints the
# size of everything a device call carries (.whl, .abcrown, .bench_data; the limit is 64 MiB
# with the repository).
#   bench/gpu/stage_bench_data.sh [BENCHMARKS_DIR]        (default: ../shared/benchmarks)
# .bench_data/ must be git-ignored (add `/.bench_data/` to .git/info/exclude): it is data, never
# committed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SRC="${1:-$ROOT/../shared/benchmarks}"
DEST="$ROOT/.bench_data"
FAMILIES="mnist_fc oval21 sri_resnet_a test"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

if ! git -C "$ROOT" check-ignore -q "$DEST/"; then
  echo "stage_bench_data: error: $DEST is not git-ignored: add /.bench_data/ to .git/info/exclude" >&2
  exit 2
fi
for f in $FAMILIES; do
  if [ ! -f "$SRC/$f/instances.csv" ]; then
    echo "stage_bench_data: error: $SRC/$f/instances.csv: no such file" >&2
    exit 2
  fi
done

rm -rf "$DEST"
mkdir -p "$DEST"
for f in $FAMILIES; do
  cp -r "$SRC/$f" "$DEST/$f"
done
commit="$(git -C "$ROOT" rev-parse HEAD)"
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
  commit="$commit (with uncommitted changes)"
fi
echo "$commit" > "$DEST/ours_commit.txt"

echo "staged in $DEST (commit $commit):"
du -sh "$DEST"/* | sed 's/^/  /'
echo "carried by a device call:"
total=0
for d in .whl .abcrown .bench_data; do
  if [ -e "$ROOT/$d" ]; then
    kib=$(du -sk "$ROOT/$d" | cut -f1)
    total=$((total + kib))
    printf '  %-12s %6s MiB\n' "$d" "$(mib "$kib")"
  else
    printf '  %-12s missing\n' "$d"
  fi
done
repo_kib=$(git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && xargs -0 du -ck 2>/dev/null) | tail -1 | cut -f1)
total=$((total + repo_kib))
printf '  %-12s %6s MiB\n' "repository" "$(mib "$repo_kib")"
printf '  %-12s %6s MiB (limit 64 MiB)\n' "total" "$(mib "$total")"
if [ "$total" -gt $((60 * 1024)) ]; then
  echo "stage_bench_data: warning: more than 60 MiB would travel" >&2
fi
