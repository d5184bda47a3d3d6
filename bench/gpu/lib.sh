# Shared pieces of the bench/gpu scripts that run alpha,beta-CROWN (sourced, not run):
#   source "$ROOT/bench/gpu/lib.sh"

# install_wheels PY TARGET: the carried wheels ($ROOT/.whl/*.whl) into TARGET, which goes first
# on PYTHONPATH; non-zero status when there are none or pip fails.
install_wheels() {
  local py=$1 target=$2
  ls "$ROOT"/.whl/*.whl >/dev/null 2>&1 || return 1
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" \
    "$ROOT"/.whl/*.whl || return 1
  export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
}

# software_versions PY: one line: python, torch, CUDA and the GPU, numpy, onnx, onnxruntime.
software_versions() {
  "$1" -c 'import sys, torch, numpy, onnx, onnxruntime; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
"numpy", numpy.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)'
}

# gpu_names: the GPUs nvidia-smi sees (nothing where there is none).
gpu_names() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
}

# abcrown_commits ABC: the COMMIT file of each tree bench/gpu/stage_abcrown.sh exported into ABC.
abcrown_commits() {
  local d
  for d in alpha-beta-CROWN auto_LiRPA onnx2pytorch; do
    echo "$d commit: $(cat "$1/$d/COMMIT" 2>/dev/null || echo unknown)"
  done
}

# abcrown_starts PY ABC LOG: alpha,beta-CROWN's --help (auto_LiRPA and onnx2pytorch from ABC's
# source trees first), its output in LOG; non-zero status when it does not start.
abcrown_starts() {
  PYTHONPATH="$2/auto_LiRPA:$2/onnx2pytorch${PYTHONPATH:+:$PYTHONPATH}" "$1" \
    "$2/alpha-beta-CROWN/complete_verifier/abcrown.py" --help >"$3" 2>&1
}

# shrink_logs FILE...: gzip those over 12 MiB (the device tool brings back files up to 16 MiB).
shrink_logs() {
  local log
  for log in "$@"; do
    if [ -f "$log" ] && [ "$(stat -c %s "$log")" -gt $((12 * 1024 * 1024)) ]; then gzip -f "$log"; fi
  done
}
