"""The search race machinery (benchmarks/search_race.py, benchmarks/race/) on a small constructed
meta-dataset: a fixed grid of configurations run on every task by the simulator of tests/stores.py.
Checks that the held-out task's records never reach what the contestants learn from, that the
budget is charged exactly as the logged runs took, and that the figures mean what they say."""
from __future__ import annotations

import json
import math
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

import stores
from xsearch.space import SearchSpace, config_key

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import search_race  # noqa: E402
from race.contestants import Evolutionary, KnnWarmStart, OptunaTPE, RandomSearch, default_contestants  # noqa: E402
from race.metrics import best_by, on_or_above, pareto_points, time_to_reach  # noqa: E402
from race.pool import ERROR_STATUSES, HeldOut, Step, TaskPool, Trace, hold_out  # noqa: E402

MODELS = stores.MODELS[:2]  # 11M and 22M parameter encoders
SPACE = SearchSpace.from_dict({"parameters": {
    "model_name": {"values": [m.name for m in MODELS]},
    "ft_method": {"values": ["lora", "partial", "full"]},
    "peft_lora_r": {"values": [8, 16], "when": {"ft_method": "lora"}},
    "ft_trainable_layers": {"values": [1, 2], "when": {"ft_method": "partial"}},
    "train_learning_rate": {"values": [3e-5, 1e-4, 5e-4, 5e-3], "log": True},
    "train_batch_size": {"values": [16, 256]},
    "train_max_seq_length": {"values": [128, 512]},
}})


def grid() -> list[dict]:
    """Ten configurations shared by all tasks, two of which run out of memory on a 16 GB GPU
    (batch 256 x length 512) and one that diverges (full fine-tuning at 5e-3)."""
    rows = [  # (models, method, LoRA r, trainable layers, learning rate, batch, max length)
        ((0, 1), "lora", 8, None, 5e-4, 16, 128), ((0, 1), "lora", 16, None, 1e-4, 16, 128),
        ((0,), "partial", None, 2, 1e-4, 16, 128), ((1,), "partial", None, 1, 5e-4, 16, 128),
        ((0,), "full", None, None, 3e-5, 16, 128), ((1,), "full", None, None, 5e-3, 16, 128),
        ((1,), "full", None, None, 3e-5, 256, 512), ((1,), "lora", 8, None, 5e-4, 256, 512),
    ]
    out = []
    for models, method, r, layers, lr, bs, seq in rows:
        for m in models:
            out.append({"model_name": MODELS[m].name, "ft_method": method, "peft_lora_r": r,
                        "ft_trainable_layers": layers, "train_learning_rate": lr, "train_batch_size": bs,
                        "train_max_seq_length": seq})
    return out


def meta_records(n_tasks: int = 5, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    start = datetime(2025, 5, 1, tzinfo=timezone.utc)
    by_name = {m.name: m for m in MODELS}
    recs = []
    for t in range(n_tasks):
        task = stores.make_task(f"task_{t}", t % 2 == 0, rng)
        for i, cfg in enumerate(grid()):
            full = dict(cfg, peft_lora_alpha=None if cfg["peft_lora_r"] is None else 2 * cfg["peft_lora_r"],
                        peft_lora_dropout=None if cfg["peft_lora_r"] is None else 0.1, train_epochs=2.0,
                        train_warmup_ratio=0.0, train_weight_decay=0.0, train_lr_scheduler="linear")
            recs.append(stores.simulate_run(task, by_name[cfg["model_name"]], stores.HARDWARE[1], full, rng,
                                            start + timedelta(hours=t, minutes=i)))
    return recs


@pytest.fixture(scope="module")
def records():
    return meta_records()


@pytest.fixture(scope="module")
def experiences(records):
    from xsearch.estimators import records_frame
    return records_frame(records)


def test_pool_is_the_tasks_logged_grid_and_regret_is_normalised(records):
    pool = TaskPool(records, SPACE, "task_1")
    assert len(pool) == len(grid()) and {config_key(c) for c in grid()} == set(pool.keys)
    own = [r for r in records if r["task_name"] == "task_1"]
    assert pool.grid_time_s == pytest.approx(sum(r["outcome_total_runtime_s"] for r in own))
    assert pool.n_errors == sum(r["status"] in ERROR_STATUSES for r in own) >= 2  # the grid's OOMs at least
    done = [r["outcome_primary_value"] for r in own if r["status"] == "completed"]
    assert pool.best_quality == max(done) and pool.worst_quality == min(done)
    assert pool.regret(max(done)) == 0.0 and pool.regret(min(done)) == 1.0 and pool.regret(None) == 1.0
    mid = (max(done) + min(done)) / 2
    assert pool.regret(mid) == pytest.approx(0.5)


def test_held_out_records_never_reach_estimators_warm_start_or_knn(records, experiences):
    task = "task_2"
    held = hold_out(experiences, task)
    assert task not in set(held.experience["task_name"])
    assert len(held.experience) == len(experiences) - len(grid())
    pool = TaskPool(records, SPACE, task)
    xs, knn = Evolutionary("xsearch", warm=True, estimators=True), KnnWarmStart()
    xs.prepare(held, pool)
    knn.prepare(held, pool)
    assert xs.predictions is not None and xs.initial is not None
    assert task not in xs.fitted_on and len(xs.fitted_on) == 4
    assert task not in [n for n, _ in xs.similar] and task not in [n for n, _ in knn.similar]
    search_race.check_no_leak(task, held, [xs, knn])

    # Whatever the held-out task's logged outcomes are, what the contestants learned is the same.
    flipped = experiences.copy()
    own = flipped["task_name"] == task
    flipped.loc[own, "outcome_primary_value"] = 1.0 - flipped.loc[own, "outcome_primary_value"]
    flipped.loc[own, "status"] = "oom"
    flipped.loc[own, "outcome_total_runtime_s"] = 1.0
    xs2, knn2 = Evolutionary("xsearch", warm=True, estimators=True), KnnWarmStart()
    held2 = hold_out(flipped, task)
    xs2.prepare(held2, pool)
    knn2.prepare(held2, pool)
    pd.testing.assert_frame_equal(xs.predictions, xs2.predictions)
    assert xs.initial == xs2.initial and [config_key(c) for c in knn.first] == [config_key(c) for c in knn2.first]

    # A leak is caught.
    leaky = HeldOut(task, held.features, held.hardware, experiences)
    with pytest.raises(search_race.LeakError):
        search_race.check_no_leak(task, leaky, [])


def _check_budget(trace: Trace, pool: TaskPool) -> None:
    keys = [s.key for s in trace.steps]
    assert len(keys) == len(set(keys)) and set(keys) <= set(pool.keys)  # each pool config at most once
    t = 0.0
    for i, s in enumerate(trace.steps):
        entry = pool.entries[s.key]
        t += s.cost_s
        assert s.t_end == pytest.approx(t)
        if s.cut:  # only the last run can be cut, and it takes exactly what was left
            assert i == len(trace.steps) - 1 and s.cost_s < entry.cost_s and s.quality is None
            assert s.t_end == pytest.approx(trace.budget_s)
        else:  # charged its logged runtime; a failed logged run is an error and gives no quality
            assert s.cost_s == pytest.approx(entry.cost_s) and s.status == entry.status
            assert s.error == (entry.status in ERROR_STATUSES) and (s.quality is None) == (not entry.ok)
    assert trace.used_s <= trace.budget_s + 1e-6


@pytest.mark.parametrize("contestant", [RandomSearch(), KnnWarmStart(), OptunaTPE(),
                                        Evolutionary("zero-shot", warm=False, estimators=False),
                                        Evolutionary("xsearch", warm=True, estimators=True)],
                         ids=lambda c: c.name)
def test_budget_is_charged_as_the_logged_runs_took(records, experiences, contestant):
    task = "task_3"
    pool = TaskPool(records, SPACE, task)
    contestant.prepare(hold_out(experiences, task), pool)
    budget = 0.4 * pool.grid_time_s
    traces = [contestant.run(pool, budget, seed) for seed in range(4)]
    for tr in traces:
        _check_budget(tr, pool)
        assert tr.evaluations  # something was evaluated
        # It ran until the budget (or the pool) was exhausted.
        left = budget - tr.used_s
        assert left < 1.0 or tr.stop_reason in ("pool_exhausted", "no_candidate") or tr.skipped
    # A generous budget evaluates the whole pool (non-skipping contestants), each config once.
    if contestant.name != "xsearch":
        whole = contestant.run(pool, 10 * pool.grid_time_s, 0)
        assert sorted(s.key for s in whole.steps) == sorted(pool.keys)
        assert not any(s.cut for s in whole.steps)
        assert sum(s.error for s in whole.steps) == pool.n_errors


def test_sampling_among_the_pool_follows_the_distribution(records):
    pool = TaskPool(records, SPACE, "task_0")
    dist = SPACE.normalise(SPACE.uniform())
    dist["model_name"] = {MODELS[0].name: 1.0, MODELS[1].name: 0.0}
    rng = random.Random(0)
    draws = [SPACE.sample(dist, rng, among=pool.configs) for _ in range(50)]
    assert all(config_key(d) in set(pool.keys) for d in draws)
    assert {d["model_name"] for d in draws} == {MODELS[0].name}
    # Evaluated configs are not drawn again; once all of a model's are evaluated, the other one comes.
    done = {k for k, c in zip(pool.keys, pool.configs) if c["model_name"] == MODELS[0].name}
    assert {SPACE.sample(dist, rng, among=pool.configs, exclude=done)["model_name"] for _ in range(20)} \
        == {MODELS[1].name}
    # The LoRA branch keeps its probability although it needs a matching rank.
    dist = SPACE.normalise(SPACE.uniform())
    methods = [SPACE.sample(dist, rng, among=pool.configs)["ft_method"] for _ in range(600)]
    assert 0.2 < methods.count("lora") / 600 < 0.45


def test_metrics_on_a_hand_made_trace(records):
    pool = TaskPool(records, SPACE, "task_4")
    ok = sorted((e for e in pool.entries.values() if e.ok), key=lambda e: e.quality)
    worst, best = ok[0], ok[-1]
    tr = Trace("x", "task_4", 0, 100.0, [Step(worst.key, "completed", worst.quality, 20.0, 0.1, 20.0),
                                          Step("k-oom", "oom", None, 10.0, 0.01, 30.0),
                                          Step(best.key, "completed", best.quality, 50.0, 0.2, 80.0),
                                          Step("k-cut", "cut", None, 20.0, 0.05, 100.0)])
    assert best_by(tr, 10.0) is None and best_by(tr, 25.0) == worst.quality and best_by(tr, 100.0) == best.quality
    assert pool.regret(best_by(tr, 25.0)) == 1.0 and pool.regret(best_by(tr, 80.0)) == 0.0
    assert time_to_reach(tr, best.quality) == pytest.approx(0.8) and time_to_reach(tr, 2.0) == math.inf
    assert len(tr.evaluations) == 3 and sum(s.error for s in tr.evaluations) == 1
    front = pareto_points([tr])
    assert set(front) == {(worst.quality, 20.0), (best.quality, 50.0)}
    assert on_or_above(tr, front) == 2
    assert on_or_above(tr, [(best.quality, 20.0)]) == 0  # better and as cheap: dominates both
    assert on_or_above(tr, [(best.quality, 30.0)]) == 1  # the cheap one is beyond that front, the best not


def test_whole_race_end_to_end(records, tmp_path):
    result, traces = search_race.run_race(records, SPACE, seeds=3, budget_fraction=0.4, min_pool=3)
    names = [c.name for c in default_contestants()]
    assert result["meta"]["n_tasks"] == 5 and result["meta"]["contestants"] == names
    for task, t in result["per_task"].items():
        assert t["budget_s"] == pytest.approx(0.4 * t["grid_time_s"])
        assert t["experience_records"] == 4 * len(grid())
        for n in names:
            assert len(traces[task][n]) == 3
            assert 0.0 <= t[n]["regret_at"]["0.25"] <= 1.0 and t[n]["regret_at"]["1.00"] <= t[n]["regret_at"]["0.25"]
            assert 0.0 <= t[n]["error_rate"] <= 1.0
    assert set(result["targets"]) == {"lower_regret_than_every_peer_at_25pct", "lower_regret_than_every_peer_at_100pct",
                                      "error_rate_at_most_third_of_zero_shot",
                                      "never_more_than_10pct_unspent_with_candidates_left"}
    text = search_race.format_tables(result)
    assert "xsearch" in text and "Targets" in text
    json.loads(json.dumps(search_race._jsonable(result), allow_nan=False))
    result["meta"].update(data="constructed", elapsed_s=0.0)
    from race.plot import plot_anytime
    png = plot_anytime(result, tmp_path / "race.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_external_store_races_with_every_failure_charged(records, tmp_path):
    """The shipped XAutoLM store (AG News searched twice: one task) is imported, mapped to the
    space of its logged values, and raced with the constructed tasks as experience; every
    failure costs time, so the grid time counts failures."""
    ext = search_race.load_dataset(search_race.EXTERNAL)
    assert {r["task_name"] for r in ext} == {"ag_news"}  # both searches of the same data: one task
    from xsearch.space import SearchSpace
    space = SearchSpace.from_records(ext)
    assert {"model_name", "ft_method", "train_learning_rate", "peft_lora_r"} <= set(space.names)
    result, traces = search_race.run_race(ext, space, seeds=2, budget_fraction=0.3, extra_experience=records)
    t = result["per_task"]["ag_news"]
    from race.pool import TaskPool
    pool = TaskPool(ext, space, "ag_news")
    assert pool.n_errors > 0.7 * len(pool) and all(e.cost_s > 0 for e in pool.entries.values())
    assert t["grid_time_s"] == pytest.approx(sum(e.cost_s for e in pool.entries.values()))
    for tr in traces["ag_news"]["xsearch"]:
        assert tr.used_s <= tr.budget_s + 1e-6


def test_tasks_too_small_or_unknown_are_reported(records):
    with pytest.raises(ValueError, match="no records of task"):
        search_race.run_race(records, SPACE, seeds=1, tasks=["nope"])
    with pytest.raises(ValueError, match="no task has at least"):
        search_race.run_race(records, SPACE, seeds=1, tasks=["task_0"], min_pool=len(grid()) + 1)
    result, _ = search_race.run_race(records, SPACE, seeds=1, tasks=["task_0", "task_1"],
                                     contestants=[RandomSearch()])
    assert result["meta"]["tasks"] == ["task_0", "task_1"] and result["targets"] == {}


# ---- the race on data with learning curves (meta-dataset v2) ---------------------------------------
from race.contestants import ExpertDefault, RECIPES, eval_curve, has_early_stop, recipe_distance, v2_contestants  # noqa: E402


def with_curves(records: list[dict], evals_per_epoch: int = 4, seed: int = 0) -> list[dict]:
    """The records with a learning curve each, as the v2 harness logs it: eval_f1 (and the training
    loss) every 1/4 epoch, rising towards the run's final F1 with noise; a failed run's curve ends
    early. Elapsed seconds are spread evenly over the logged runtime."""
    rng = random.Random(seed)
    out = []
    for r in records:
        r = dict(r)
        epochs = float(r.get("train_epochs") or 1)
        n = int(epochs * evals_per_epoch)
        final, rt = r.get("outcome_primary_value"), float(r.get("outcome_total_runtime_s") or 0.0)
        if r["status"] != "completed" or final is None:
            n = max(1, n // 3)
            final = 0.2
        pts = []
        # Steps as the Trainer counts them: the record's planned steps (train_max_steps) x fraction.
        total = int(r.get("train_max_steps") or 5 * epochs * evals_per_epoch)
        for i in range(1, n + 1):
            frac = i / (epochs * evals_per_epoch)
            v = final * (1 - 0.6 * math.exp(-4 * frac)) + rng.gauss(0, 0.01)
            common = {"step": max(1, round(total * frac)), "epoch": i / evals_per_epoch, "elapsed_s": rt * frac * 0.95}
            pts.append({**common, "kind": "train", "name": "loss", "value": 1.0 - 0.5 * frac})
            pts.append({**common, "kind": "eval", "name": "eval_f1", "value": float(min(max(v, 0.0), 1.0))})
        if r["status"] == "completed":
            pts[-1]["value"] = float(final)  # the last evaluation is the final one
        r["curve"] = pts
        out.append(r)
    return out


@pytest.fixture(scope="module")
def curve_records(records):
    return with_curves(records)


def _check_budget_v2(trace: Trace, pool: TaskPool) -> None:
    """As _check_budget, where a pruned run costs its logged time up to a logged evaluation."""
    t = 0.0
    for s in trace.steps:
        entry = pool.entries[s.key]
        t += s.cost_s
        assert s.t_end == pytest.approx(t)
        if s.status == "pruned":
            stops = [e for _, e, _ in eval_curve(pool.record(entry.config))]
            assert any(s.cost_s == pytest.approx(e) for e in stops) and s.cost_s < entry.cost_s
            assert s.quality is None and not s.error and entry.ok
        elif not s.cut:
            assert s.cost_s == pytest.approx(entry.cost_s) and s.status == entry.status
    assert trace.used_s <= trace.budget_s + 1e-6


def test_tpe_with_median_pruner_replays_the_logged_curves(curve_records):
    from xsearch.estimators import records_frame
    task = "task_1"
    pool = TaskPool(curve_records, SPACE, task)
    tpe = OptunaTPE(pruner=True)
    assert tpe.name == "optuna-tpe-pruned"
    tpe.prepare(hold_out(records_frame(curve_records), task), pool)
    traces = [tpe.run(pool, 10 * pool.grid_time_s, s) for s in range(6)]
    pruned = [s for tr in traces for s in tr.steps if s.status == "pruned"]
    assert pruned  # the median pruner stops some runs once 5 trials have finished
    for tr in traces:
        _check_budget_v2(tr, pool)
        assert sorted(s.key for s in tr.steps) == sorted(pool.keys)  # a large budget sees the whole pool
    # Pruning saves time: the whole pool costs less than its logged time.
    assert min(tr.used_s for tr in traces) < pool.grid_time_s


def test_expert_default_runs_the_recipes_nearest_configs(curve_records):
    pool = TaskPool(curve_records, SPACE, "task_0")
    expert = ExpertDefault()
    picks = expert.picks(pool)
    assert len(picks) == len(RECIPES) == 2
    # The BERT recipe (full fine-tuning, lr 2e-5): the pool's full fine-tuning at the nearest rate.
    full = [c for c in pool.configs if c["ft_method"] == "full"]
    assert picks[0]["ft_method"] == "full"
    assert recipe_distance(SPACE, RECIPES[0]["config"], picks[0]) == min(
        recipe_distance(SPACE, RECIPES[0]["config"], c) for c in full)
    assert picks[0]["train_learning_rate"] == 3e-5 and picks[1]["ft_method"] == "lora"
    tr = expert.run(pool, 10 * pool.grid_time_s, 0)
    assert [s.key for s in tr.steps] == [config_key(c) for c in picks] and tr.stop_reason == "recipes_done"
    assert all(r["source"] for r in RECIPES)


@pytest.mark.skipif(not has_early_stop(), reason="this xsearch has no early stopping")
def test_early_stopping_xsearch_replays_stops_from_the_curves(curve_records):
    from xsearch.estimators import records_frame
    task = "task_2"
    pool = TaskPool(curve_records, SPACE, task)
    es = Evolutionary("xsearch-es", warm=True, estimators=True, early_stop=True)
    es.prepare(hold_out(records_frame(curve_records), task), pool)
    assert es.curve_model is not None
    traces = [es.run(pool, 0.6 * pool.grid_time_s, s) for s in range(4)]
    for tr in traces:
        _check_budget_v2(tr, pool)
    no_es = Evolutionary("xsearch", warm=True, estimators=True, early_stop=False)
    no_es.prepare(hold_out(records_frame(curve_records), task), pool)
    assert not any(s.status == "pruned" for s in no_es.run(pool, 0.6 * pool.grid_time_s, 0).steps)
    # The race's early-stopping figures: every stop counted, a wrong stop is one whose logged final
    # quality beats everything found before it, the budget saved is logged minus charged cost.
    from race.metrics import pruning
    for tr in traces:
        n, wrong, saved = pruning(tr, pool)
        stopped = [s for s in tr.steps if s.status == "pruned"]
        assert n == len(stopped) and 0 <= wrong <= n
        assert saved == pytest.approx(sum(pool.entries[s.key].cost_s - s.cost_s for s in stopped))
        best, expect = None, 0
        for s in tr.steps:
            q = pool.entries[s.key].quality
            if s.status == "pruned":
                expect += q is not None and (best is None or q > best)
            elif s.quality is not None:
                best = s.quality if best is None else max(best, s.quality)
        assert wrong == expect
    assert any(pruning(tr, pool)[0] for tr in traces)  # the figures saw stops


def test_v2_race_from_one_command(curve_records, tmp_path):
    """``search_race.py --metadataset FILE``: the v2 contestants on every task, targets and the
    runtime estimator's leave-one-task-out Spearman, on wall and on CPU time."""
    from xlog import schema as S
    if "curve" not in S.field_names():
        pytest.skip("this record schema has no learning curves")
    rng = random.Random(1)
    recs = []
    for r in curve_records:
        r = dict(r)
        if r.get("outcome_total_runtime_s") is not None:
            r["train_cpu_time_s"] = float(r["outcome_total_runtime_s"]) * rng.uniform(0.9, 1.1)
        recs.append(r)
    path = tmp_path / "v2.parquet"
    import pyarrow.parquet as pq
    pq.write_table(S.records_to_table(recs), path)
    space_file = tmp_path / "space.yaml"
    import yaml
    space_file.write_text(yaml.safe_dump(SPACE.to_dict()))
    out = search_race.main(["--metadataset", str(path), "--space", str(space_file), "--seeds", "1",
                            "--tasks", "task_3", "--out-dir", str(tmp_path)])
    result = out["metadataset_v2"]
    names = [c.name for c in v2_contestants()]
    assert result["meta"]["contestants"] == names and {"expert", "optuna-tpe-pruned"} <= set(names)
    assert result["meta"]["tasks"] == ["task_3"]
    assert any(k.endswith("_within_25pct") for k in result["targets"]) == ("xsearch-es" in names)
    # Runs are charged their CPU seconds (the default): the pool's time is the task's CPU time.
    assert result["meta"]["charge"] == "cpu"
    own = [r for r in recs if r["task_name"] == "task_3"]
    assert result["per_task"]["task_3"]["grid_time_s"] == pytest.approx(sum(r["train_cpu_time_s"] for r in own))
    rt = result["runtime_estimator"]
    assert set(rt) == {"wall", "cpu"} and "CPU" in rt["cpu"]["learns"]
    assert rt["wall"]["spearman"] is not None and -1 <= rt["cpu"]["spearman"] <= 1
    saved = json.loads((tmp_path / "search_race_metadataset_v2.json").read_text())
    assert saved["meta"]["expert_recipes"][0]["source"].startswith("BERT")


def generative_records() -> list[dict]:
    """The constructed grid as a generative data set: tasks 0-2 causal LM (primary eval_loss, lower is
    better, loss = 2 - the simulated F1, so the same configurations win), tasks 3-4 question answering
    (eval_f1); each kind with meta-features of its own."""
    out = []
    for r in meta_records(n_tasks=5, seed=3):
        r = dict(r)
        t = int(r["task_name"].split("_")[1])
        if t <= 2:
            r.update(task_name=f"lm_{t}", task_type="causal-lm", task_n_classes=None,
                     task_answer_tokens_mean=20.0 + t, task_prompt_tokens_mean=0.0)
            if r["status"] == "completed":
                loss = 2.0 - r["outcome_primary_value"]
                r.update(outcome_primary_metric="eval_loss", outcome_primary_value=loss, outcome_greater_is_better=False,
                         outcome_metrics={"eval_loss": loss, "eval_perplexity": math.exp(loss)})
        else:
            r.update(task_name=f"qa_{t}", task_type="question-answering", task_n_classes=None,
                     task_answer_tokens_mean=4.0, task_prompt_tokens_mean=150.0 + t)
            if r["status"] == "completed":
                f1 = r["outcome_primary_value"]
                r.update(outcome_metrics={"eval_f1": f1, "eval_exact_match": f1 / 2, "eval_loss": 3.0 - f1})
        out.append(r)
    return out


def test_generative_tasks_race_within_their_kind(tmp_path):
    from xsearch.estimators import records_frame
    from xlog import schema as S
    recs = generative_records()
    assert search_race.tasks_by_kind(recs) == {"causal-lm": ["lm_0", "lm_1", "lm_2"],
                                               "question-answering": ["qa_3", "qa_4"]}
    exp = records_frame(recs)
    # A causal-LM pool scores the signed loss: the best is the lowest loss.
    pool = TaskPool(recs, SPACE, "lm_1")
    losses = [r["outcome_primary_value"] for r in recs if r["task_name"] == "lm_1" and r["status"] == "completed"]
    assert pool.best_quality == pytest.approx(-min(losses)) and pool.worst_quality == pytest.approx(-max(losses))
    held = hold_out(exp, "lm_1")
    knn, xs = KnnWarmStart(), Evolutionary("xsearch", warm=True, estimators=True)
    knn.prepare(held, pool)
    xs.prepare(held, pool)
    # Only the other causal-LM tasks are similar; the QA tasks (F1) never are.
    assert {n for n, _ in knn.similar} == {"lm_0", "lm_2"} == {n for n, _ in xs.similar}
    first_task = knn.similar[0][0]
    best = min((r for r in recs if r["task_name"] == first_task and r["status"] == "completed"),
               key=lambda r: r["outcome_primary_value"])  # the lowest loss comes first
    assert config_key(knn.first[0]) == config_key(SPACE.config_from_record(best))
    assert xs.predictions is not None and xs.predictions["quality"].notna().all()
    # The estimators learn quality on the held-out task's own metric family: the loss.
    from race.contestants import objective
    assert objective(pool) == ("eval_loss", False) and objective(TaskPool(recs, SPACE, "qa_3")) == ("eval_f1", True)
    assert "lm_1" not in xs.fitted_on
    # TPE runs on losses (negative signed values) without treating a failure as the best value.
    tr = OptunaTPE().run(pool, budget_s=pool.grid_time_s, seed=0)
    assert tr.steps and all(s.quality is None or s.quality < 0 for s in tr.steps)

    # End to end: one results file per kind.
    import pyarrow.parquet as pq
    import yaml
    path, space = tmp_path / "gen.parquet", tmp_path / "space.yaml"
    pq.write_table(S.records_to_table(recs), path)
    space.write_text(yaml.safe_dump(SPACE.to_dict()), encoding="utf-8")
    results = search_race.main(["--data", str(path), "--space", str(space), "--seeds", "1", "--tasks", "lm_1,qa_4",
                                "--mo-seeds", "1", "--out-dir", str(tmp_path / "out")])
    # The multi-objective race (issue 17) runs per kind too, on the signed quality (minus the loss).
    assert set(results) == {"gen_causal-lm", "gen_question-answering", "gen_causal-lm:hypervolume",
                            "gen_question-answering:hypervolume"}
    assert 0.0 <= results["gen_causal-lm:hypervolume"]["per_task"]["lm_1"]["xsearch"]["hv_at"]["1.00"] <= 1.0 + 1e-9
    assert results["gen_causal-lm"]["meta"]["tasks"] == ["lm_1"]
    assert results["gen_question-answering"]["meta"]["tasks"] == ["qa_4"]
    assert (tmp_path / "out" / "search_race_gen_causal-lm.json").is_file()

