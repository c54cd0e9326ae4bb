"""Learning curves in records (real tiny Trainer runs), the curve model and stopping rules on
synthetic curves, and early stopping in a real tiny search (a doomed candidate is pruned, the
search goes on, estimators do not count it as a failure), turned off by ``--no-early-stop``, and
replayed from logged curves at the cost of the time up to the stop."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tiny
from transformers import Trainer, TrainerCallback

from xlog import LocalStore, XLogCallback
from xlog import schema as S
from xlog.callback import MAX_CURVE_POINTS
from xsearch.curves import CurveModel, StopSpec, eval_series, replay_stop, should_stop



@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLOG_ENERGY", "0")
    return LocalStore()


def _train(tmp_path, callbacks, **args):
    train, evald = tiny.classification_datasets(n=120)
    trainer = Trainer(model=tiny.bert_classifier(layers=1, hidden_size=16),
                      args=tiny.training_args(tmp_path / "out", **args), train_dataset=train, eval_dataset=evald,
                      processing_class=tiny.tokenizer(), compute_metrics=tiny.compute_metrics, callbacks=callbacks)
    trainer.train()
    return trainer


# ---- curves in records ----------------------------------------------------------------------------
def test_record_carries_a_bounded_curve_cpu_time_and_load(store, tmp_path):
    # 60 logged losses + 4 evaluations x 3 metrics: more than the 30 points this record keeps (the
    # default is 200; fewer here to keep the run short).
    assert MAX_CURVE_POINTS == 200
    _train(tmp_path, [XLogCallback(task_name="sms", max_curve_points=30)], max_steps=60,
           per_device_train_batch_size=4, logging_steps=1, eval_strategy="steps", eval_steps=15)
    (r,) = store.records()
    assert S.validate_record(r) == []
    curve = r["curve"]
    assert len(curve) == 30
    loss = [p for p in curve if p["kind"] == "train"]
    evals = [p for p in curve if p["kind"] == "eval"]
    assert {p["name"] for p in loss} == {"loss"} and loss[0]["step"] == 1 and loss[-1]["step"] == 60
    steps = [p["step"] for p in loss]
    assert steps == sorted(steps) and len(steps) == 30 - len(evals)  # the rest of the share: the loss
    assert max(b - a for a, b in zip(steps, steps[1:])) <= 3 * (60 / len(steps))  # evenly thinned
    # Every evaluation is kept (few points), with its metrics and no timing ones.
    assert {p["name"] for p in evals} == {"eval_loss", "eval_accuracy", "eval_f1"}
    assert sorted({p["step"] for p in evals}) == [15, 30, 45, 60]
    assert all(p["elapsed_s"] > 0 and p["epoch"] > 0 for p in evals)
    assert [p["elapsed_s"] for p in evals if p["name"] == "eval_f1"] == \
        sorted(p["elapsed_s"] for p in evals if p["name"] == "eval_f1")
    assert r["train_cpu_time_s"] > 0 and r["hw_load_avg"] >= 0

    # DuckDB: one row per point in the `curves` view; datasets reads the nested column as is.
    from xsearch import db
    rows = db.query("SELECT kind, name, count(*) AS n, max(fraction) AS f FROM curves GROUP BY ALL",
                    home=store.root).to_pylist()
    got = {(x["kind"], x["name"]): (x["n"], x["f"]) for x in rows}
    assert got[("eval", "eval_f1")] == (4, 1.0) and got[("train", "loss")][0] == len(loss)
    import datasets
    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in store.records_dir.rglob("*.parquet")],
                               split="train")
    assert ds[0]["curve"] == curve and ds[0]["train_cpu_time_s"] == r["train_cpu_time_s"]


def test_curve_bounds_share_points_between_metrics():
    from xlog.callback import bounded_curve, downsample
    pts = [{"step": i, "kind": "train", "name": "loss", "value": 1.0} for i in range(1, 5001)]
    kept = downsample(pts, 200)
    assert len(kept) == 200 and kept[0]["step"] == 1 and kept[-1]["step"] == 5000
    evals = [{"step": i * 500, "kind": "eval", "name": "eval_f1", "value": 0.5} for i in range(1, 11)]
    curve = bounded_curve({("train", "loss"): pts, ("eval", "eval_f1"): evals})
    assert len(curve) == MAX_CURVE_POINTS and sum(p["kind"] == "eval" for p in curve) == 10  # all kept
    assert [p["step"] for p in curve] == sorted(p["step"] for p in curve)


class _Boom(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 7:
            raise RuntimeError("boom at step 7")


class _ReadProvisional(TrainerCallback):
    """Reads the provisional record (what a SIGKILL would leave) during training."""

    def __init__(self, store: LocalStore):
        self.store, self.seen = store, []

    def on_step_end(self, args, state, control, **kw):
        for f in self.store.provisional_dir.glob("*.json"):
            self.seen.append(json.loads(f.read_text())["record"].get("curve") or [])


def test_a_failed_run_keeps_its_curve_up_to_the_failure(store, tmp_path):
    probe = _ReadProvisional(store)
    with pytest.raises(RuntimeError, match="boom"):
        _train(tmp_path, [XLogCallback(task_name="sms", heartbeat_s=0), probe, _Boom()], num_train_epochs=3,
               eval_strategy="steps", eval_steps=3, logging_steps=1)
    (r,) = store.records()
    assert r["status"] == "failed" and S.validate_record(r) == []
    steps = {p["step"] for p in r["curve"]}
    # Step 7 failed before it was logged: the curve holds every point logged before the failure.
    assert max(steps) == 6 and {p["step"] for p in r["curve"] if p["kind"] == "eval"} == {3, 6}
    assert r["train_cpu_time_s"] > 0 and r["hw_load_avg"] is not None
    # The provisional record carried the curve so far at its heartbeats.
    assert any(any(p["kind"] == "eval" for p in c) for c in probe.seen)


# ---- the curve model and the rules, on synthetic curves -------------------------------------------
def _synthetic(n: int, gain: float, seed: int = 0) -> list[dict]:
    """Completed records whose F1 rises to final = value at half-way + ``gain`` (+ noise)."""
    rng = random.Random(seed)
    recs = []
    for _ in range(n):
        final = rng.uniform(0.5, 0.9)
        curve = []
        for step in range(10, 101, 10):
            f = step / 100
            v = final - gain * (1 - f) / 0.5 + rng.gauss(0, 0.005) if f < 1 else final
            curve.append({"step": step, "epoch": f, "elapsed_s": float(step), "kind": "eval", "name": "eval_f1",
                          "value": v})
        recs.append({"status": "completed", "train_max_steps": 100, "curve": curve})
    return recs


def test_curve_model_learns_final_values_from_partial_curves():
    model = CurveModel().fit(_synthetic(30, gain=0.2) + [{"status": "pruned", "train_max_steps": 100,
                                                             "curve": _synthetic(1, 0.2)[0]["curve"][:5]}])
    assert model.n_curves_ == 30 and model.is_fitted  # the pruned curve has no end to learn from
    mu, sd, n = model.predict(0.5, 0.6)
    assert mu == pytest.approx(0.8, abs=0.02) and 0 < sd < 0.05 and n == 30
    assert CurveModel.from_dict(json.loads(json.dumps(model.to_dict()))).predict(0.5, 0.6) == (mu, sd, n)
    assert CurveModel(min_curves=50).fit(_synthetic(30, 0.2)).predict(0.5, 0.6) is None


def test_learned_prediction_overrides_the_rules_and_rules_apply_without_experience():
    flat = [(f / 10, 0.6, float(f), f) for f in range(1, 7)]  # flat at 0.6 up to 60 % of training
    rules = StopSpec(incumbent=0.75)
    assert should_stop(rules, []) is None  # never before the first evaluation
    assert should_stop(rules, flat[:4]) is None  # rules: never before half-way
    why = should_stop(rules, flat)
    assert why and "rule" in why
    assert should_stop(StopSpec(incumbent=0.62), flat) is None  # within the noise of the incumbent
    rising = flat[:5] + [(0.6, 0.68, 6.0, 6)]  # +0.08 in the last 10 %: may still get there
    assert should_stop(rules, rising) is None
    assert should_stop(StopSpec(incumbent=None), flat) is None  # no incumbent: never
    # One evaluation that dips is not enough (patience 2): the verdict must hold at the one before.
    done = CurveModel().fit(_synthetic(30, gain=0.0))
    spec = StopSpec(incumbent=0.75, model=done.to_dict())
    dip = [(0.1, 0.74, 1.0, 1), (0.2, 0.74, 2.0, 2), (0.3, 0.5, 3.0, 3)]
    assert should_stop(spec, dip) is None and should_stop(StopSpec(incumbent=0.75, model=done.to_dict(), patience=1), dip)
    assert "2 evaluations in a row" in should_stop(spec, dip + [(0.4, 0.5, 4.0, 4)])
    # Learned: such curves still gain 0.2 from half-way, so 0.6 -> ~0.8 beats 0.75: go on...
    late = CurveModel().fit(_synthetic(30, gain=0.2))
    assert should_stop(StopSpec(incumbent=0.75, model=late.to_dict()), flat) is None
    # ... while curves that are done by half-way predict ~0.6: stopped, saying it was learned.
    early = CurveModel().fit(_synthetic(30, gain=0.0))
    why = should_stop(StopSpec(incumbent=0.75, model=early.to_dict()), flat[:3])
    assert why and "learned from 30 curves" in why
    # Replay walks a logged curve and stops where the live run would have.
    rec = {"status": "completed", "train_max_steps": 10, "curve": [
        {"step": s, "epoch": s / 10, "elapsed_s": 2.0 * s, "kind": "eval", "name": "eval_f1", "value": 0.6}
        for s in range(1, 11)]}
    stop = replay_stop(rec, rules)  # the rule says stop from 50 %; confirmed at the next evaluation
    assert (stop.step, stop.elapsed_s, stop.fraction) == (6, 12.0, 0.6)
    assert "2 evaluations in a row" in stop.reason
    once = replay_stop(rec, StopSpec(incumbent=0.75, patience=1))
    assert (once.step, once.elapsed_s, once.fraction) == (5, 10.0, 0.5)
    assert eval_series(rec["curve"], max_steps=10)[-1] == (1.0, 0.6, 20.0, 10)


# ---- early stopping in a real tiny search ---------------------------------------------------------
SPACE = """
name: es-test
parameters:
  model_name: {values: ["tiny:bert-2x32"]}
  ft_method: {values: [full]}
  train_learning_rate: {values: [1.0e-7, 1.0e-2], log: true}
  train_epochs: {values: [2]}
  train_batch_size: {values: [8, 16]}
  train_max_seq_length: {values: [32]}
"""


def _cfg(lr: float, bs: int = 8) -> dict:
    return {"model_name": "tiny:bert-2x32", "ft_method": "full", "train_learning_rate": lr, "train_epochs": 2,
            "train_batch_size": bs, "train_max_seq_length": 32}


def _toy_task(path: Path, n: int = 240) -> Path:
    """A task a tiny model learns in a few steps (two words of the class's vocabulary among noise
    words), so that a good candidate clearly beats a doomed one."""
    import pandas as pd
    rng = random.Random(0)
    pos, neg = "great wonderful excellent lovely superb".split(), "awful terrible horrible dreadful poor".split()
    noise = "the a movie film plot actor scene story it was and very".split()
    rows = []
    for i in range(n):
        words = [rng.choice(pos if i % 2 else neg) for _ in range(2)] + [rng.choice(noise) for _ in range(5)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if i % 2 else "neg"})
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """One fork server; a search with early stopping (a good candidate, a doomed one with a
    learning rate of 1e-7, another good one), then the doomed one without early stopping."""
    from xsearch.data import load_task
    from xsearch.evaluator import SubprocessEvaluator
    from xsearch.runner import run_loop
    from xsearch.search import SearchSettings
    from xsearch.space import SearchSpace
    root = tmp_path_factory.mktemp("es")
    (root / "space.yaml").write_text(SPACE)
    space = SearchSpace.load(root / "space.yaml")
    load_task(str(_toy_task(root / "toy.parquet")), max_train=160, max_eval=48).save(root / "task")
    store = LocalStore(root / "home")
    ev = SubprocessEvaluator(root / "task", space, store, "es-on", energy=False, work_dir=root / "work")
    try:
        settings = SearchSettings(budget_s=1e5, max_evals=3, population=10, n_seeds=3, early_stop_after=1)
        on = run_loop(space, ev, settings, "es-on", seeds=[_cfg(1e-2), _cfg(1e-7), _cfg(1e-2, 16)])
        ev.search_id = "es-off"
        off = run_loop(space, ev, SearchSettings(budget_s=1e5, max_evals=1, population=10, n_seeds=1,
                                                 early_stop_after=0, early_stop=False),
                       "es-off", seeds=[_cfg(1e-7)])
    finally:
        ev.close()
    return root, space, store, on, off


def test_a_doomed_candidate_is_pruned_and_the_search_goes_on(searches):
    root, space, store, on, off = searches
    good, doomed, after = on.outcomes
    assert good.status == "completed" and good.quality > 0.6, good
    assert doomed.status == "pruned" and after.status == "completed"  # the search went on
    assert 0.5 <= doomed.stopped_at < 1.0 and doomed.quality < good.quality
    assert on.incumbent is not doomed and on.n_failed == 0 and on.n_pruned == 1
    recs = {r["record_id"]: r for r in store.records()}
    r = recs[doomed.record_id]
    assert S.validate_record(r) == []
    assert (r["status"], r["error_type"]) == ("pruned", "Pruned") and "incumbent" in r["error_message"]
    f1 = [p for p in r["curve"] if p["name"] == "eval_f1"]
    assert 2 <= len(f1) and r["outcome_steps_completed"] < r["train_max_steps"]
    assert max(p["step"] for p in r["curve"]) == r["outcome_steps_completed"]
    # Candidates that may be stopped are evaluated 4 times per epoch (the first one, with nothing to
    # beat yet, once per epoch: extra evaluations cost time).
    n_evals = {o.record_id: len([p for p in recs[o.record_id]["curve"] if p["name"] == "eval_f1"]) for o in on.outcomes}
    assert n_evals[good.record_id] == 2 and n_evals[after.record_id] >= 8
    # Estimators learn from it without counting it as a failure.
    from xsearch.estimators import failure_target, records_frame
    frame = records_frame(store.records())
    y = failure_target(frame)
    assert y[frame["status"] == "pruned"].isna().all() and (y[frame["status"] == "completed"] == 0).all()
    from xsearch import db
    assert db.query("SELECT count(*) AS n FROM failures_by_cause", home=store.root).to_pylist() == [{"n": 0}]


def test_without_early_stopping_the_doomed_candidate_runs_to_its_end(searches):
    root, space, store, on, off = searches
    (doomed,) = off.outcomes
    assert doomed.status == "completed" and off.n_pruned == 0
    (r,) = [r for r in store.records() if r["record_id"] == doomed.record_id]
    assert r["outcome_steps_completed"] == r["train_max_steps"]
    assert len([p for p in r["curve"] if p["name"] == "eval_f1"]) == 2  # one evaluation per epoch


def test_replay_stops_from_logged_curves_and_charges_the_partial_time(searches):
    from xsearch.replay import ReplayEvaluator
    from xsearch.runner import own_records, run_loop
    from xsearch.search import SearchSettings
    root, space, store, on, off = searches
    logged = store.records()  # the pruned run of es-on is not replayed: es-off's full run of it is
    rep = ReplayEvaluator(logged, space)
    good, (doomed,) = on.outcomes[0], off.outcomes
    # es-off's run was evaluated once per epoch: one evaluation before its end, so a stop there
    # cannot be confirmed by a second one (patience 2, the default): these replays ask at patience 1.
    assert rep.evaluate(dict(doomed.config), 1e9, early_stop=StopSpec(incumbent=good.quality).to_dict()).status == "completed"
    spec = StopSpec(incumbent=good.quality, patience=1).to_dict()
    out = rep.evaluate(dict(doomed.config), 1e9, early_stop=spec)
    (rec,) = [r for r in logged if r["record_id"] == doomed.record_id]
    stop = [p for p in rec["curve"] if p["name"] == "eval_f1"][0]  # the first epoch's evaluation: 50 %
    assert out.status == "pruned" and out.stopped_at == 0.5 and out.wall_s == pytest.approx(stop["elapsed_s"])
    assert out.wall_s < rec["outcome_total_runtime_s"]
    assert rep.evaluate(dict(doomed.config), 1e9).status == "completed"  # no spec: its logged end
    # A replayed search tells the pruned outcome and charges only its partial time.
    res = run_loop(space, rep, SearchSettings(budget_s=1e5, max_evals=2, population=10, n_seeds=2,
                                              early_stop_after=1, early_stop_patience=1),
                   "replay", seeds=[good.config, doomed.config])
    assert [o.status for o in res.outcomes] == ["completed", "pruned"]
    assert res.evaluations[1].charged_s == pytest.approx(stop["elapsed_s"])
    # Pruned logs are not replayed (they have no end).
    assert len(ReplayEvaluator(own_records(store, "es-on"), space)) == 2 and len(rep) == 3


def test_cli_no_early_stop_is_recorded_in_the_manifest(tmp_path):
    from click.testing import CliRunner
    from xsearch.cli import main
    (tmp_path / "space.yaml").write_text(SPACE.replace("[1.0e-7, 1.0e-2]", "[1.0e-2]").replace("[2]", "[1]")
                                         .replace("2x32", "1x16").replace("[8, 16]", "[16]"))
    res = CliRunner().invoke(main, ["run", "--data", str(_toy_task(tmp_path / "toy.parquet", 80)),
                                    "--space", str(tmp_path / "space.yaml"),
                                    "--max-evals", "1", "--no-energy", "--plain",
                                    "--home", str(tmp_path / "home"), "--out", str(tmp_path / "out"),
                                    "--no-early-stop", "--zero-shot"])
    assert res.exit_code == 0, res.output
    (man,) = (tmp_path / "home" / "searches").glob("*.json")
    assert json.loads(man.read_text())["options"]["early_stop"] is False
    (r,) = LocalStore(tmp_path / "home").records()
    assert r["status"] == "completed"
    assert [p["step"] for p in r["curve"] if p["name"] == "eval_f1"] == [r["train_max_steps"]]  # per epoch only


def test_curves_and_pruned_records_pass_a_readers_intake_and_compaction(searches, tmp_path):
    """The records of the real search above (one pruned, all with curves), published one file each
    to a directory remote: a fresh reader's intake (schema, bounds, strings, content hash) accepts
    them all, and after compaction another fresh reader gets the same records, curves intact."""
    from xlog.compact import compact
    from xlog.intake import content_hashes
    from xlog.remotes import layout as L
    from xlog.remotes import open_remote
    from xlog.remotes.sync import pull
    from xsearch import db
    root, space, store, on, off = searches
    recs = {r["record_id"]: r for r in store.records()}
    assert {r["status"] for r in recs.values()} == {"completed", "pruned"} and all(r["curve"] for r in recs.values())
    shared = tmp_path / "shared"
    for r in recs.values():  # as separate pushes would leave them: one small file per record
        for p, (data, _) in L.plan_files([r]).items():
            (shared / p).parent.mkdir(parents=True, exist_ok=True)
            (shared / p).write_bytes(data)

    def read(home: Path) -> dict[str, dict]:
        got = pull(open_remote(str(shared)), LocalStore(home), progress=False)
        assert got.quarantined == [] and got.conflicts == 0 and got.new_records == len(recs), got
        rows = db.query("SELECT * FROM experiences", home).to_pylist()
        assert sorted(r["record_id"] for r in rows) == sorted(recs)
        return {r["record_id"]: r for r in rows}

    def pairs() -> set:
        import pyarrow.parquet as pq
        out = set()
        for p in shared.rglob("*.parquet"):
            t = pq.read_table(p)
            out.update(zip(t.column("record_id").to_pylist(), content_hashes(t)))
        return out

    before = pairs()
    first = read(tmp_path / "reader1")
    for rid, r in recs.items():
        assert first[rid]["status"] == r["status"] and [dict(p) for p in first[rid]["curve"]] == r["curve"]
    plan = compact(open_remote(str(shared)), tmp_path / "maint", apply=True)
    assert plan.applied and plan.files_replaced == len(recs) and len(list(shared.rglob("*.parquet"))) < len(recs)
    assert pairs() == before  # same records, same content (the curve is part of the content hash)
    second = read(tmp_path / "reader2")
    for rid, r in recs.items():
        assert second[rid]["status"] == r["status"] and [dict(p) for p in second[rid]["curve"]] == r["curve"]
    n = db.query("SELECT count(*) AS n FROM curves WHERE status = 'pruned'", tmp_path / "reader2").to_pylist()
    assert n[0]["n"] == sum(len(r["curve"]) for r in recs.values() if r["status"] == "pruned") > 0


# ---- the signed quality: early stopping of a loss (lower is better) ----------------------------------
def test_stopping_a_loss_curve_works_on_the_signed_value():
    # eval_loss 2.0 -> 1.6, flat at 1.6 from half-way; the incumbent's loss is 0.5 (signed -0.5).
    loss = [{"step": s, "kind": "eval", "name": "eval_loss", "value": v, "elapsed_s": float(s)}
            for s, v in zip(range(10, 61, 10), [2.0, 1.8, 1.65, 1.61, 1.6, 1.6])]
    series = eval_series(loss, "eval_loss", 100, greater_is_better=False)
    assert [round(v, 2) for _, v, _, _ in series] == [-2.0, -1.8, -1.65, -1.61, -1.6, -1.6]
    doomed = StopSpec(incumbent=-0.5, metric="eval_loss", greater_is_better=False)
    why = should_stop(doomed, series)
    assert why and "eval_loss so far 1.6000" in why and "incumbent's 0.5000" in why  # shown as logged
    # A worse incumbent (loss 3.0) is beaten already: go on; read as greater-is-better it would stop.
    assert should_stop(StopSpec(incumbent=-3.0, metric="eval_loss", greater_is_better=False), series) is None
    assert should_stop(StopSpec(incumbent=3.0, metric="eval_loss"), eval_series(loss, "eval_loss", 100)) is not None
    # The learned model predicts the signed final loss: curves that end 0.2 lower than at half-way.
    rng = random.Random(1)
    recs = []
    for _ in range(20):
        final = rng.uniform(0.5, 2.0)
        curve = [{"step": s, "kind": "eval", "name": "eval_loss", "value": final + 0.2 * (1 - s / 100) / 0.5
                  + rng.gauss(0, 0.005)} for s in range(10, 100, 10)]
        curve.append({"step": 100, "kind": "eval", "name": "eval_loss", "value": final})
        recs.append({"status": "completed", "train_max_steps": 100, "curve": curve})
    model = CurveModel("eval_loss", greater_is_better=False).fit(recs)
    mu, sd, n = model.predict(0.5, -1.6)
    assert mu == pytest.approx(-1.4, abs=0.05) and n == 20
    assert CurveModel.from_dict(model.to_dict()).greater_is_better is False
    # 1.4 +- a little cannot reach a loss of 1.0; it can reach 1.45.
    spec = dict(metric="eval_loss", greater_is_better=False, model=model.to_dict())
    assert should_stop(StopSpec(incumbent=-1.0, **spec), series[:5]) is not None
    assert should_stop(StopSpec(incumbent=-1.45, **spec), series[:5]) is None


def test_a_causal_lm_search_asks_to_stop_on_its_signed_loss():
    from xsearch.search import EvolutionarySearch, SearchSettings
    from xsearch.space import SearchSpace
    from xsearch.evaluator import Outcome
    space = SearchSpace.load(None, "causal-lm")
    search = EvolutionarySearch(space, SearchSettings(budget_s=100, early_stop_after=1))
    assert StopSpec.from_dict(search.stop_spec()).incumbent is None
    rec = {"status": "completed", "task_type": "causal-lm", "outcome_primary_metric": "eval_loss",
           "outcome_primary_value": 1.25, "outcome_metrics": {"eval_loss": 1.25}}
    cfg = space.sample(space.uniform(), random.Random(0))
    search.tell(cfg, Outcome.from_record(rec, cfg))
    spec = StopSpec.from_dict(search.stop_spec())
    assert (spec.metric, spec.greater_is_better, spec.incumbent) == ("eval_loss", False, -1.25)


def test_the_worker_prunes_a_causal_lm_candidate_whose_loss_cannot_win(tmp_path, monkeypatch):
    """A real tiny causal-LM fine-tuning through the worker with a stop spec whose incumbent's loss
    (0.01) it cannot reach: evaluated 4 times per epoch and pruned on its signed loss."""
    import os
    import pandas as pd
    from xsearch import worker
    from xsearch.tasks import get_task_kind
    for var in ("XLOG_HOME", "XLOG_SIGTERM_STATUS", "XLOG_ENERGY"):  # worker.run sets them: restored after
        monkeypatch.setenv(var, os.environ.get(var, ""))
    rng = random.Random(0)
    words = "red green blue cat dog bird sun moon".split()
    pd.DataFrame({"prompt": [f"Say {rng.choice(words)} {rng.choice(words)}" for _ in range(64)],
                  "response": [rng.choice(words) for _ in range(64)]}).to_parquet(tmp_path / "inst.parquet")
    kind = get_task_kind("causal-lm")
    kind.load(tmp_path / "inst.parquet", {}, max_eval=16).save(tmp_path / "task")
    cfg = dict(model_name="tiny:gpt2-1x32", ft_method="full", train_learning_rate=1e-3, train_epochs=2,
               train_batch_size=8, train_max_seq_length=24)
    stop = StopSpec(incumbent=-0.01, metric="eval_loss", greater_is_better=False)
    job = {"config": cfg, "search_id": "es-clm", "task_name": "toy", "record_id": S.new_record_id(),
           "task_type": kind.name, "model_spec": {}, "method_spec": {}, "seed": 0, "energy": False,
           "data_dir": str(tmp_path / "task"), "store": str(tmp_path / "store"),
           "output_dir": str(tmp_path / "trainer"), "early_stop": stop.to_dict()}
    out = worker.run(job)
    (r,) = LocalStore(tmp_path / "store").records()
    assert out["status"] == r["status"] == "pruned" and S.validate_record(r) == []
    losses = [p for p in r["curve"] if p["kind"] == "eval" and p["name"] == "eval_loss"]
    assert len(losses) >= 3 and r["outcome_steps_completed"] < r["train_max_steps"]  # several per epoch
    assert "eval_loss" in r["error_message"] and "0.0100" in r["error_message"]
    assert out["quality"] == pytest.approx(-r["outcome_primary_value"])  # signed
