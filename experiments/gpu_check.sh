#!/usr/bin/env bash
# The GPU measurements in one go, on a machine with one NVIDIA H100/H200 (about 8 minutes); writes one JSON file.
#
#   experiments/gpu_check.sh --fetch     # here, where pip reaches PyPI: the wheels the GPU image lacks, into .whl/
#   experiments/gpu_check.sh [OUT_DIR]   # there: installs them from .whl/ (no network), then runs the checks
#
# The GPU image (python3 3.12, jax 0.11 with CUDA, flax, optax, orbax, sentencepiece, tokenizers, pyarrow) lacks
# ml-collections and tensorboardX; they are pure Python. What is measured: experiments/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--fetch" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .whl ml-collections==1.1.0 tensorboardX
  ls .whl
  exit 0
fi
OUT_DIR=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$OUT_DIR"
if ! "$PY" -c "import ml_collections, tensorboardX" 2>/dev/null; then
  [ -d .whl ] || { echo "error: ml_collections/tensorboardX missing and no .whl/: run $0 --fetch where pip works"; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1 TRIAD_CACHE=/tmp/triad-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout 540 "$PY" -m experiments.gpu_check --out="$OUT_DIR/gpu_check.json"
