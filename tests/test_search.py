"""Real searches with tiny models on the shipped SMS data within small budgets: the budget is
respected, resume after SIGKILL of the search re-runs nothing finished, the replay evaluator answers
from the log, and the reports are written."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from xlog.store import LocalStore
from xsearch.replay import NotLogged, ReplayEvaluator
from xsearch.runner import manifest_path, own_records, run_loop, run_search
from xsearch.search import EvolutionarySearch, SearchSettings, pareto_front, update_distribution
from xsearch.evaluator import Outcome
from xsearch.space import SearchSpace, config_key

REPO = Path(__file__).resolve().parent.parent
SMS = REPO / "examples" / "data" / "sms_spam_600.parquet"
TINY = Path(__file__).parent / "data" / "tiny_space.yaml"
BUDGET = 60.0


@pytest.fixture(scope="module")
def budget_search(tmp_path_factory):
    """One real search: budget 60 s, tiny models, epochs 1 or 40 (40 cannot fit once the cost of
    an epoch is known), everything recorded in a fresh store. Seed 3 draws two 1-epoch candidates
    first, then a 40-epoch one."""
    root = tmp_path_factory.mktemp("search")
    events = []
    t0 = time.monotonic()
    result, paths = run_search(data=str(SMS), budget_s=BUDGET, space_path=str(TINY), out_dir=str(root / "out"),
                               store_root=str(root / "home"), seed=3, max_train=150, max_eval=80, energy=False,
                               max_candidate_s=25,
                               on_event=lambda kind, info: events.append((kind, dict(info))))
    elapsed = time.monotonic() - t0
    return root, result, paths, events, elapsed


def test_budget_is_respected(budget_search):
    root, result, paths, events, elapsed = budget_search
    assert result.stop_reason in ("time_budget", "no_candidate")
    assert len(result.evaluations) >= 2
    # Stops in time: the accounted budget and the real time (plus writing the reports).
    assert result.used_s <= BUDGET
    assert elapsed <= BUDGET + 10
    # Never starts a candidate predicted to overrun what was left at its start.
    starts = [info for kind, info in events if kind == "start"]
    assert len(starts) == len(result.evaluations)
    for info in starts:
        wall = info["predicted"].get("wall_s")
        assert wall is None or wall <= info["timeout_s"]
    # 40-epoch candidates are predicted to overrun once the cost of an epoch is known.
    assert result.skipped["predicted_overrun"] >= 1
    skipped = [info for kind, info in events if kind == "skipped" and info["reason"] == "predicted_overrun"]
    assert all(s["predicted"]["wall_s"] > 0 for s in skipped)
    # Every evaluation is a record of this search in the store.
    recs = own_records(LocalStore(root / "home"), result.search_id)
    assert {r["record_id"] for r in recs} == {o.record_id for o in result.outcomes}
    assert all(r["task_name"] == "sms_spam_600" for r in recs)


def test_reports_are_written(budget_search):
    root, result, paths, events, elapsed = budget_search
    board = pd.read_csv(paths["leaderboard"])
    assert len(board) == len(result.evaluations)
    assert list(board["rank"]) == list(range(1, len(board) + 1))
    front = pd.read_csv(paths["pareto_csv"])
    assert len(front) >= 1 and front["pareto"].all()
    assert paths["pareto_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    snippet = paths["best_config"].read_text()
    compile(snippet, "best_config.py", "exec")
    assert repr(result.incumbent.config["model_name"]) in snippet
    summary = json.loads(paths["summary"].read_text())
    assert summary["evaluations"] == len(result.evaluations) and summary["best_f1"] == result.incumbent.quality
    man = json.loads(manifest_path(root / "home", result.search_id).read_text())
    assert man["status"] == "finished"


def test_replay_evaluator_answers_from_the_log(budget_search):
    root, result, paths, events, elapsed = budget_search
    space = SearchSpace.load(TINY)
    recs = own_records(LocalStore(root / "home"), result.search_id)
    rep = ReplayEvaluator(recs, space, task_name="sms_spam_600")
    done = [o for o in result.outcomes if o.status == "completed"]
    # Pruned runs have no end to replay (xsearch.replay): every other logged candidate is answered.
    assert len(rep) == len({o.key for o in result.outcomes if o.status != "pruned"})
    o = done[0]
    got = rep.evaluate(o.config, timeout_s=1e9)
    assert got.quality == o.quality and got.record_id == o.record_id and got.wall_s == pytest.approx(o.runtime_s)
    assert rep.evaluate(o.config, timeout_s=0.5 * o.runtime_s).status == "timeout"
    unseen = next(c for c in space.iter_configs() if config_key(c) not in {x.key for x in result.outcomes})
    with pytest.raises(NotLogged):
        rep.evaluate(unseen, timeout_s=1e9)
    # A whole search on the replayed log: budget charged as logged, evaluations only of logged configs.
    res = run_loop(space, rep, SearchSettings(budget_s=1e6, max_evals=len(rep), population=3, seed=1,
                                              max_idle_generations=50, max_draws=50), "replay")
    assert {e.outcome.key for e in res.evaluations} <= set(rep.index)
    assert res.skipped["not_logged"] > 0
    assert sum(e.charged_s for e in res.evaluations) == pytest.approx(sum(e.outcome.wall_s for e in res.evaluations), rel=0.01)


def test_search_among_candidates_evaluates_each_once(budget_search):
    root, result, paths, events, elapsed = budget_search
    space = SearchSpace.load(TINY)
    rep = ReplayEvaluator(own_records(LocalStore(root / "home"), result.search_id), space, task_name="sms_spam_600")
    res = run_loop(space, rep, SearchSettings(budget_s=1e6, population=2, seed=1), "among",
                   candidates=rep.configs())
    assert sorted(e.outcome.key for e in res.evaluations) == sorted(rep.index)  # each listed config once
    assert res.skipped["not_logged"] == 0 and res.stop_reason == "no_candidate"


def _predictor(table):
    """A predictor from a dict config-key -> prediction columns."""
    def predict(cfgs):
        return pd.DataFrame([table.get(config_key(c), {}) for c in cfgs])
    return predict


def _configs(space, n):
    return [c for _, c in zip(range(n), space.iter_configs())]


def test_gain_per_second_ranks_cheap_good_runs_first_then_improvements():
    space = SearchSpace.load(TINY)
    s = EvolutionarySearch(space, SearchSettings(quality_sd=0.05))
    cheap, slow = {"quality": 0.80, "wall_s": 10.0}, {"quality": 0.85, "wall_s": 100.0}
    g = s.gain_per_s([cheap, slow])
    assert g[0] > g[1]  # nothing run yet: a slightly worse run 10x cheaper comes first
    risky, safe = {"quality": 0.9, "wall_s": 10.0, "p_fail": 0.9}, {"quality": 0.9, "wall_s": 10.0}
    g = s.gain_per_s([risky, safe])
    assert g[0] < g[1]
    # A failure costs its time to fail: a risky run that fails fast beats one that fails late.
    fast, late = dict(risky, fail_wall_s=1.0), dict(risky, fail_wall_s=10.0)
    g = s.gain_per_s([fast, late])
    assert g[0] > g[1]
    no_cost = s.gain_per_s([{"quality": 0.9}, {"quality": 0.85, "wall_s": 1.0}])
    assert no_cost[0] > no_cost[1]  # without a cost for every candidate, quality alone decides


def test_estimators_order_candidates_instead_of_discarding_them():
    """A 70% failure base rate: likely failures are run later, not skipped; only a near-certain
    failure backed by enough records of its model is skipped, or a run that cannot fit the time
    left once a run of this search calibrated the transferred runtimes, with its reason logged."""
    space = SearchSpace.load(TINY)
    one_epoch = [c for c in space.iter_configs() if c["train_epochs"] == 1]  # the same cost per run
    other_model = next(c for c in one_epoch if c["model_name"] != one_epoch[0]["model_name"])
    cfgs = one_epoch[:5] + [other_model]  # whose runtime only the estimators know
    keys = [config_key(c) for c in cfgs]
    table = {keys[0]: {"quality": 0.9, "p_fail": 0.8, "runtime_s": 10.0, "fail_support": 50},
             keys[1]: {"quality": 0.5, "p_fail": 0.2, "runtime_s": 10.0, "fail_support": 50},
             keys[2]: {"quality": 0.7, "p_fail": 0.97, "runtime_s": 10.0, "fail_support": 50},
             keys[3]: {"quality": 0.7, "p_fail": 0.97, "runtime_s": 10.0, "fail_support": 1},
             keys[4]: {"quality": 0.6, "p_fail": 0.6, "runtime_s": 10.0, "fail_support": 50},
             keys[5]: {"quality": 0.4, "p_fail": 0.7, "runtime_s": 500.0, "fail_support": 50}}
    s = EvolutionarySearch(space, SearchSettings(choose_from=10, fail_prior_n=1e9), predictor=_predictor(table),
                           candidates=cfgs)
    asked = []
    while (p := s.ask(remaining_s=100.0)) is not None:
        asked.append(p.key)
        ok = p.key == keys[1]  # its runtime calibrates the transferred ones (observed = predicted)
        s.tell(p.config, Outcome(p.config, "completed" if ok else "failed", 0.5 if ok else None, {}, 10.0, 10.0))
    assert set(asked) == {keys[0], keys[1], keys[3], keys[4]}  # p_fail 0.8 and 0.6 still run
    assert {(sk.key, sk.reason) for sk in s.skip_log} == {(keys[2], "predicted_failure"),
                                                          (keys[5], "predicted_overrun")}
    assert s.skipped == {"predicted_failure": 1, "predicted_overrun": 1}


def test_a_predicted_overrun_comes_back_when_the_calibration_says_it_fits():
    """A candidate ruled too long after one run (an outlier: 20x its prediction) is asked again
    once more runs recalibrate the transferred runtimes (log-median ratio 1): only predicted
    failures stay out for good."""
    space = SearchSpace.load(TINY)
    one_epoch = [c for c in space.iter_configs() if c["train_epochs"] == 1]
    m1 = [c for c in one_epoch if c["model_name"] == one_epoch[0]["model_name"]]
    other = next(c for c in one_epoch if c["model_name"] != one_epoch[0]["model_name"])
    first, later_a, later_b = m1[0], m1[1], m1[2]  # run elsewhere (told, not asked)
    keys = [config_key(c) for c in (first, other, later_a, later_b)]
    table = {keys[0]: {"quality": 0.9, "runtime_s": 10.0}, keys[1]: {"quality": 0.4, "runtime_s": 50.0},
             keys[2]: {"quality": 0.5, "runtime_s": 10.0}, keys[3]: {"quality": 0.5, "runtime_s": 10.0}}
    s = EvolutionarySearch(space, SearchSettings(choose_from=10), predictor=_predictor(table),
                           candidates=[first, other])
    p = s.ask(remaining_s=100.0)
    assert p.key == keys[0]
    s.tell(p.config, Outcome(p.config, "completed", 0.5, {}, 200.0, 200.0))  # 20x its prediction
    assert s.ask(remaining_s=100.0) is None  # the other model: 50 s x 20 cannot fit in 100 s
    assert s.skipped == {"predicted_overrun": 1}
    s.tell(later_a, Outcome(later_a, "completed", 0.5, {}, 5.0, 5.0))  # 0.5x
    s.tell(later_b, Outcome(later_b, "completed", 0.5, {}, 10.0, 10.0))  # 1x: the median ratio is 1
    p = s.ask(remaining_s=100.0)
    assert p is not None and p.key == keys[1]  # now predicted to fit: asked again, and run
    assert s.skipped == {"predicted_overrun": 1}  # counted once


def test_runtime_ratio_is_the_median_on_the_log_scale():
    space = SearchSpace.load(TINY)
    a, b = _configs(space, 2)
    table = {config_key(a): {"runtime_s": 10.0}, config_key(b): {"runtime_s": 10.0}}
    s = EvolutionarySearch(space, SearchSettings(), predictor=_predictor(table), candidates=[a, b])
    s.tell(a, Outcome(a, "completed", 0.5, {}, 5.0, 5.0))
    s.tell(b, Outcome(b, "completed", 0.5, {}, 80.0, 80.0))
    ratio, n = s._runtime_ratio()
    assert n == 2 and ratio == pytest.approx(2.0)  # sqrt(0.5 x 8), not their mean 4.25


def test_quality_is_recalibrated_online_against_the_tasks_own_results():
    """Relative predictions map to this task's scale once three runs completed (F1 ten times
    smaller than anything in the store), and predictions that rank the task backwards stop counting."""
    space = SearchSpace.load(TINY)
    cfgs = _configs(space, 8)
    rel = [0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.2, 0.4]
    table = {config_key(c): {"quality": q, "quality_sd": 0.1} for c, q in zip(cfgs, rel)}
    s = EvolutionarySearch(space, SearchSettings(), predictor=_predictor(table), candidates=cfgs)
    assert s.calibration().mode == "relative"
    for c, q in zip(cfgs[:4], rel[:4]):
        s.tell(c, Outcome(c, "completed", 0.01 + 0.02 * q, {}, 1.0, 1.0))  # observed F1 0.012-0.024
    cal = s.calibration()
    assert cal.mode == "calibrated" and cal.slope == pytest.approx(0.02) and cal.intercept == pytest.approx(0.01)
    g = s.gain_per_s([table[config_key(cfgs[5])], table[config_key(cfgs[6])]])
    assert g[0] > g[1] > 0 or (g[0] > 0 and g[1] < g[0] * 1e-3)
    s2 = EvolutionarySearch(space, SearchSettings(), predictor=_predictor(table), candidates=cfgs)
    for c, q in zip(cfgs[:4], rel[:4]):
        s2.tell(c, Outcome(c, "completed", 1.0 - q, {}, 1.0, 1.0))  # the task ranks runs the other way
    assert s2.calibration().mode == "uninformative"


def test_failure_probability_is_calibrated_by_the_tasks_failures():
    space = SearchSpace.load(TINY)
    cfgs = _configs(space, 12)
    table = {config_key(c): {"quality": 0.5, "p_fail": 0.2} for c in cfgs}
    s = EvolutionarySearch(space, SearchSettings(fail_prior_n=2.0), predictor=_predictor(table), candidates=cfgs)
    before = s.predict(cfgs[-1])["p_fail"]
    for c in cfgs[:8]:
        s.tell(c, Outcome(c, "oom", None, {}, 1.0, 1.0))  # this machine fails far more often
    assert s.predict(cfgs[-1])["p_fail"] > 0.7 > before


def test_seeds_run_first_then_the_ranking():
    space = SearchSpace.load(TINY)
    cfgs = _configs(space, 6)
    table = {config_key(c): {"quality": 0.1 * i} for i, c in enumerate(cfgs)}
    s = EvolutionarySearch(space, SearchSettings(n_seeds=2, choose_from=10), predictor=_predictor(table),
                           candidates=cfgs, seeds=[cfgs[1], cfgs[0], cfgs[2]])
    order = []
    while (p := s.ask()) is not None:
        order.append((p.source, p.key))
        s.tell(p.config, Outcome(p.config, "completed", 0.5, {}, 1.0, 1.0))
    assert order[:2] == [("seed", config_key(cfgs[1])), ("seed", config_key(cfgs[0]))]
    # Then the ranking: the best predicted per expected second (40-epoch configs cost 40x here).
    assert order[2] == ("ranked", config_key(cfgs[3]))
    assert len(order) == len(cfgs)  # never stops while admissible candidates remain


def test_replay_charges_failures_their_logged_or_imputed_time():
    space = SearchSpace.load(TINY)
    cfgs = _configs(space, 4)
    base = {"task_name": "t", "created_at": "2026-01-01"}
    recs = [dict(base, status="completed", outcome_primary_value=0.5, outcome_total_runtime_s=100.0),
            dict(base, status="completed", outcome_primary_value=0.6, outcome_total_runtime_s=60.0),
            dict(base, status="timeout", outcome_total_runtime_s=400.0),
            dict(base, status="oom")]
    for r, c in zip(recs, cfgs):
        r.update({k: v for k, v in c.items()})
    rep = ReplayEvaluator(recs, space, task_name="t")
    assert rep.evaluate(cfgs[2], 1e9).wall_s == 400.0  # a timeout costs its logged runtime
    oom = rep.evaluate(cfgs[3], 1e9)
    assert oom.status == "oom" and oom.wall_s == pytest.approx(0.5 * 80.0)  # half the median success
    assert rep.imputed == {config_key(cfgs[3])}
    assert ReplayEvaluator(recs, space, task_name="t", failure_cost_s=7.0).evaluate(cfgs[3], 1e9).wall_s == 7.0


def test_distribution_moves_towards_the_elite():
    space = SearchSpace.load(TINY)
    d0 = space.normalise(space.uniform(), floor=0.1)
    elite = [dict(model_name="tiny:bert-1x16", ft_method="lora", peft_lora_r=8, peft_lora_alpha=16,
                  ft_trainable_layers=None, train_learning_rate=3e-3, train_epochs=1, train_batch_size=16,
                  train_max_seq_length=32)]
    d1 = update_distribution(space, d0, elite, learning_rate=0.5, exploration=0.1)
    assert d1["ft_method"]["lora"] > d0["ft_method"]["lora"] and d1["peft_lora_r"][8] > d0["peft_lora_r"][8]
    assert d1["ft_trainable_layers"] == d0["ft_trainable_layers"]  # inactive in the elite: unchanged
    for _ in range(30):
        d1 = update_distribution(space, d1, elite, learning_rate=0.5, exploration=0.1)
    assert min(d1["ft_method"].values()) >= 0.1 / 3 - 1e-9  # the exploration floor


def test_pareto_front():
    def o(q, t, status="completed"):
        return Outcome({"k": q, "t": t}, status, q, {}, t, t)
    a, b, c, d = o(0.9, 10.0), o(0.8, 5.0), o(0.7, 20.0), o(None, 1.0, "oom")
    assert {id(x) for x in pareto_front([a, b, c, d])} == {id(a), id(b)}


def test_resume_after_killing_the_search_reruns_nothing_finished(tmp_path):
    from searchproc import kill_after, resume_and_check
    man = kill_after(tmp_path / "home", tmp_path / "out", ["--budget", "120s", "--max-train", "150", "--seed", "3",
                                                           "--max-candidate-time", "20s"])
    resume_and_check(tmp_path / "home", tmp_path / "out", man)


def test_failure_heavy_imported_experience_does_not_stop_the_search(tmp_path):
    """A store of another system's GPU runs (89% failed, runtimes of ~800 s per run) must not rule
    out every candidate of a small CPU task: transferred runtimes only order candidates until a
    run calibrates them, so the search uses its budget and ends with a leaderboard."""
    from xlog.importers.autogoal import import_autogoal
    home = tmp_path / "home"
    summary = import_autogoal(REPO / "benchmarks" / "data" / "xautolm_dev" / "experience_store", LocalStore(home))
    assert summary.imported >= 100
    result, paths = run_search(data=str(SMS), budget_s=45.0, space_path=str(TINY), out_dir=str(tmp_path / "out"),
                               store_root=str(home), seed=1, max_train=120, max_eval=60, energy=False,
                               max_candidate_s=20)
    assert len([e for e in result.evaluations if e.outcome.ok]) >= 1
    assert result.stop_reason in ("time_budget", "max_evals") or result.used_s >= 0.8 * 45.0
    assert pd.read_csv(paths["leaderboard"]).shape[0] == len(result.evaluations)
