-- Helper views over `experiences` (one row per run, all schema versions, unique by record_id).
-- xsearch.db creates `experiences` (with the source_* provenance columns) and `conflicts` from the
-- Parquet files, then runs this file.
-- A "task" is (task_name, outcome_primary_metric): runs are only compared on the same metric.
-- Quality is oriented so that higher is better: outcome_greater_is_better = false flips it, and so
-- does a primary metric named as a loss, perplexity or error rate (records without a direction).

-- metric(outcome_metrics, 'eval_f1'): one metric's value from the list of (name, value) structs.
CREATE OR REPLACE MACRO metric(metrics, metric_name) AS
    list_extract(list_filter(metrics, lambda m: m.name = metric_name), 1).value;

-- Completed runs with a primary metric, with an oriented quality score.
CREATE OR REPLACE VIEW completed_runs AS
SELECT *,
       CASE WHEN outcome_greater_is_better IS FALSE
                 OR (outcome_greater_is_better IS NULL AND regexp_matches(lower(outcome_primary_metric),
                     '(^|[_./-])(loss|perplexity|ppl|nll|error|err|wer|cer|mse|mae|rmse)([_./-]|$)'))
            THEN -outcome_primary_value
            ELSE outcome_primary_value END AS quality
FROM experiences
WHERE status = 'completed' AND outcome_primary_value IS NOT NULL;

-- The best completed run of each task (ties: the fastest). One aggregate pass with arg_max,
-- not a window sort: it stays fast at millions of rows.
CREATE OR REPLACE VIEW task_best AS
SELECT task_name, task_type, outcome_primary_metric, b.model_name, b.ft_method,
       b.outcome_primary_value, b.outcome_total_runtime_s, b.energy_kwh, b.train_learning_rate,
       b.train_batch_size, b.record_id, n_runs
FROM (
    SELECT task_name, outcome_primary_metric, any_value(task_type) AS task_type, count(*) AS n_runs,
           arg_max({'model_name': model_name, 'ft_method': ft_method,
                    'outcome_primary_value': outcome_primary_value,
                    'outcome_total_runtime_s': outcome_total_runtime_s, 'energy_kwh': energy_kwh,
                    'train_learning_rate': train_learning_rate, 'train_batch_size': train_batch_size,
                    'record_id': record_id},
                   (quality, -coalesce(outcome_total_runtime_s, 1e308))) AS b
    FROM completed_runs
    GROUP BY task_name, outcome_primary_metric
);

-- How runs fail: counts by status and error type (and the models involved). Pruned runs (stopped
-- early by a search because they could not win) are not failures and are left out.
CREATE OR REPLACE VIEW failures_by_cause AS
SELECT status, coalesce(error_type, '?') AS error_type, count(*) AS n_runs,
       count(DISTINCT model_name) AS n_models, count(DISTINCT task_name) AS n_tasks,
       round(avg(outcome_total_runtime_s), 1) AS mean_runtime_s, sum(energy_kwh) AS energy_kwh
FROM experiences
WHERE status NOT IN ('completed', 'pruned')
GROUP BY ALL;

-- Failure rate of each model and fine-tuning method.
CREATE OR REPLACE VIEW failure_rates_by_model AS
SELECT model_name, ft_method, count(*) AS n_runs,
       count(*) FILTER (WHERE status NOT IN ('completed', 'pruned')) AS n_failed,
       count(*) FILTER (WHERE status = 'oom') AS n_oom,
       round(count(*) FILTER (WHERE status NOT IN ('completed', 'pruned')) / count(*), 4) AS failure_rate
FROM experiences
GROUP BY ALL;

-- Pareto front of quality (higher is better) vs run time (lower is better), per task.
-- A run is on the front if no run of its task is at least as fast and strictly better: scanning
-- by time (best quality first among equal times), a run is on the front when its quality beats
-- every run before it. O(n log n) instead of comparing all pairs.
CREATE OR REPLACE VIEW pareto_time AS
SELECT task_name, outcome_primary_metric, model_name, ft_method, outcome_primary_value,
       outcome_total_runtime_s, energy_kwh, record_id
FROM (
    SELECT *, max(quality) OVER (PARTITION BY task_name, outcome_primary_metric
                                 ORDER BY outcome_total_runtime_s, quality DESC, record_id
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
    FROM completed_runs WHERE outcome_total_runtime_s IS NOT NULL
) WHERE best_before IS NULL OR quality > best_before;

-- Pareto front of quality vs energy (kWh), per task.
CREATE OR REPLACE VIEW pareto_energy AS
SELECT task_name, outcome_primary_metric, model_name, ft_method, outcome_primary_value,
       energy_kwh, outcome_total_runtime_s, record_id
FROM (
    SELECT *, max(quality) OVER (PARTITION BY task_name, outcome_primary_metric
                                 ORDER BY energy_kwh, quality DESC, record_id
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
    FROM completed_runs WHERE energy_kwh IS NOT NULL
) WHERE best_before IS NULL OR quality > best_before;

-- Pareto front of quality vs trainable parameters, per task, with the PEFT structure of each
-- point (where the adapters went, on which kinds of module, how large): the cheapest structures
-- that hold their quality. Same scan as pareto_time.
CREATE OR REPLACE VIEW pareto_params AS
SELECT task_name, outcome_primary_metric, model_name, ft_method, outcome_primary_value, ft_trainable_params,
       ft_trainable_fraction, peft_layer_pattern, peft_module_kinds, peft_lora_r, peft_rank_ffn, peft_use_dora,
       outcome_total_runtime_s, record_id
FROM (
    SELECT *, max(quality) OVER (PARTITION BY task_name, outcome_primary_metric
                                 ORDER BY ft_trainable_params, quality DESC, record_id
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
    FROM completed_runs WHERE ft_trainable_params IS NOT NULL
) WHERE best_before IS NULL OR quality > best_before;

-- Learning curves: one row per point of each run's `curve` (kind 'train': the logged training
-- loss; 'eval': each evaluation's metrics), with the run's identity and how it ended.
-- `fraction` is the share of the planned training steps done at the point (null if unknown).
CREATE OR REPLACE VIEW curves AS
SELECT record_id, task_name, search_id, model_name, ft_method, status, outcome_primary_metric,
       p.step, p.epoch, p.elapsed_s, p.kind, p.name, p.value,
       CASE WHEN train_max_steps > 0 THEN p.step / train_max_steps END AS fraction
FROM (SELECT *, unnest(curve) AS p FROM experiences WHERE curve IS NOT NULL);

-- Where each record came from: the local store (source_remote = 'local') or a pulled remote, the
-- file (its path on the remote), and the commit and pull request that added it, where known.
-- A maintainer drops one contributor's files with `xsearch sql --exclude-source PATTERN`.
CREATE OR REPLACE VIEW provenance AS
SELECT record_id, source_remote, source_file, source_commit, source_pr, source_date, contributor
FROM experiences;

-- Records per source file: how much each file (each contributor's push) brings.
CREATE OR REPLACE VIEW sources AS
SELECT source_remote, source_file, any_value(source_commit) AS source_commit, any_value(source_pr) AS source_pr,
       any_value(source_date) AS source_date, count(*) AS n_records
FROM experiences
GROUP BY source_remote, source_file;
