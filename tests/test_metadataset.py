"""The meta-dataset harness (benchmarks/metadataset/): its grid is a fixed set of points of its
space, its plan covers every (task, config) pair once in round-robin order, its subsamples are
deterministic and stratified, and the committed records are schema-valid, private and traceable
to a task and a configuration."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "benchmarks" / "metadataset"
sys.path.insert(0, str(HARNESS))

import models as md_models  # noqa: E402
import run as md_run  # noqa: E402
import tasks as md_tasks  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "metadataset_v1.parquet"


@pytest.fixture(scope="module")
def grid():
    return md_run.load_grid(md_run.load_space(md_models.DEFAULT_CACHE))


def test_grid_is_a_fixed_set_of_distinct_points_of_the_space(grid):
    space = md_run.load_space(md_models.DEFAULT_CACHE)
    assert 20 <= len(grid) <= 30
    assert len({g["search_id"] for g in grid}) == len(grid)
    for g in grid:
        assert space.validate_config(g["config"]) == []
        assert g["config"]["model_name"] in md_models.MODELS
    methods = Counter((g["config"]["model_name"].split("@")[0], g["config"]["ft_method"]) for g in grid)
    for base in (md_models.MINILM, md_models.SMOLLM2):
        assert {m for (b, m) in methods if b == base} == {"full", "lora", "partial"}
    # The deliberate failure: the largest batch x sequence on the largest model, full fine-tuning.
    assert any(g["config"]["model_name"] == md_models.SMOLLM2 and g["config"]["train_batch_size"] == 64
               and g["config"]["train_max_seq_length"] == 512 and g["config"]["ft_method"] == "full" for g in grid)
    assert max(g["config"]["train_learning_rate"] for g in grid) >= 1e-2  # divergence


def test_grid_ids_are_stable(grid):
    """A search_id is the identity used to resume: it must not change between runs of the harness."""
    again = md_run.load_grid(md_run.load_space(md_models.DEFAULT_CACHE))
    assert [g["search_id"] for g in again] == [g["search_id"] for g in grid]


def test_plan_covers_each_pair_once_round_robin(grid):
    names = [s.name for s in md_tasks.load_specs()]
    assert len(names) >= 12
    order = md_run.plan(names, grid)
    assert len(order) == len(names) * len(grid)
    assert len({(t, g["search_id"]) for t, g in order}) == len(order)
    first_round = order[: len(names)]
    assert [t for t, _ in first_round] == names  # every task once per round
    assert {g["config"]["model_name"] for _, g in first_round} == set(md_models.MODELS)


def _spec(**kw):
    base = dict(name="sms", file="sms_spam_600.parquet", train=["train"], eval=[], holdout=True,
                max_train=120, max_eval=60, seed=0)
    base.update(kw)
    return md_tasks.TaskSpec(**base)


def test_subsample_is_deterministic_stratified_and_disjoint():
    data_dir = ROOT / "examples" / "data"
    tr, ev, labels = md_tasks.build_task(_spec(), data_dir)
    tr2, ev2, labels2 = md_tasks.build_task(_spec(), data_dir)
    pd.testing.assert_frame_equal(tr, tr2)
    pd.testing.assert_frame_equal(ev, ev2)
    assert labels == labels2 == ["ham", "spam"]
    assert (len(tr), len(ev)) == (120, 60)
    src = pd.read_parquet(data_dir / "sms_spam_600.parquet")
    # Rows are disjoint; a text can only be shared when the source itself repeats it.
    assert len(set(tr["text"]) & set(ev["text"])) <= len(src) - src["text"].nunique()
    share = (src["label"] == "spam").mean()
    assert abs((tr["label"] == 1).mean() - share) < 0.02  # class proportions kept
    other, _, _ = md_tasks.build_task(_spec(seed=1), data_dir)
    assert set(other["text"]) != set(tr["text"])


def test_stratified_sample_keeps_rare_classes():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(1000)], "label": ["a"] * 990 + ["b"] * 7 + ["c"] * 3})
    out = md_tasks.stratified_sample(df, 50, seed=3)
    assert len(out) == 50 and set(out["label"]) == {"a", "b", "c"}
    assert list(out.index) == sorted(out.index)


def test_missing_source_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        md_tasks.build_task(_spec(), tmp_path)


@pytest.mark.skipif(not DATA.is_file(), reason="no committed meta-dataset yet")
def test_committed_records_are_valid_private_and_traceable(grid):
    from xlog import schema as S
    from xlog.privacy import find_leaks
    space = md_run.load_space(md_models.DEFAULT_CACHE)
    table = pq.read_table(DATA)
    assert S.validate_table(table) == []
    recs = S.table_to_records(table)
    assert recs
    task_names = {s.name for s in md_tasks.load_specs()}
    by_id = {g["search_id"]: g["config"] for g in grid}
    for r in recs:
        assert r["task_name"] in task_names
        assert r["search_id"] in by_id, r["search_id"]
        cfg = by_id[r["search_id"]]
        assert r["model_name"] == cfg["model_name"] and r["ft_method"] == cfg["ft_method"]
        # A search over space.yaml (and the replay evaluator) maps the record back to its config.
        assert space.config_from_record(r) == cfg, (r["task_name"], r["search_id"])
        assert r["status"] in ("completed", "failed", "oom", "timeout", "interrupted")
        for k, v in r.items():
            if isinstance(v, str):
                assert not find_leaks(v), (k, v)
    assert len({(r["task_name"], r["search_id"]) for r in recs if r["status"] != "interrupted"}) == \
        len([r for r in recs if r["status"] != "interrupted"])  # resumable: no pair run twice


# ---- meta-dataset v2: sampled configurations, learning curves ----------------------------------------
import run_v2 as md_v2  # noqa: E402

DATA_V2 = ROOT / "benchmarks" / "data" / "metadataset_v2.parquet"


@pytest.fixture(scope="module")
def v2():
    settings = md_v2.load_settings()
    space = md_v2.load_space(md_models.DEFAULT_CACHE)
    tasks = [s.name for s in md_v2.task_specs(settings)]
    return settings, space, tasks, md_v2.plan(space, settings, tasks)


def test_v2_configurations_are_sampled_per_task_not_a_shared_grid(v2):
    from xsearch.space import config_key
    settings, space, tasks, order = v2
    n = settings["runs_per_task"]
    sampled = [(t, sid, c) for t, sid, c in order if ":rep" not in sid]
    assert len(sampled) == n * len(tasks) == n * 17
    assert len({(t, sid) for t, sid, _ in order}) == len(order)  # resumable: each pair once
    per_task: dict[str, set[str]] = {}
    for t, sid, c in sampled:
        assert space.validate_config(c) == [], (t, sid)
        assert sid == f"{md_v2.VERSION}:{md_v2.config_hash(c)}"
        per_task.setdefault(t, set()).add(config_key(c))
    assert all(len(keys) == n for keys in per_task.values())
    # Different tasks get different configurations (no shared grid) ...
    a, b = per_task[tasks[0]], per_task[tasks[1]]
    assert len(a & b) <= 2
    # ... and the same ones on every machine (seeded by the task's name).
    assert md_v2.plan(space, settings, tasks) == order
    cfgs = [c for _, _, c in sampled]
    assert {c["model_name"] for c in cfgs} == set(space.param("model_name").values)
    assert {c["ft_method"] for c in cfgs} == {"full", "lora", "partial"}
    # Configurations meant to fail: learning rates that diverge, SmolLM2 full fine-tuning with big batches.
    assert sum(c["train_learning_rate"] >= 1e-2 for c in cfgs) >= 20
    assert any(c["model_name"] == md_models.SMOLLM2 and c["ft_method"] == "full" and c["train_batch_size"] >= 32
               for c in cfgs)


def test_v2_plan_is_round_robin_in_chunks_with_repeats_early(v2):
    settings, space, tasks, order = v2
    chunk, rep = settings["chunk"], settings["repeats"]
    first_round = [t for t, sid, _ in order if ":rep" not in sid][: chunk * len(tasks)]
    assert first_round == [t for t in tasks for _ in range(chunk)]  # every task's first chunk, in order
    repeats = [(i, sid) for i, (t, sid, _) in enumerate(order) if ":rep" in sid]
    assert len(repeats) == rep["times"] * len(rep["configs"])
    assert all(order[i][0] == rep["task"] for i, _ in repeats)
    assert repeats[-1][0] < (rep["every"] + 1) * len(repeats)  # all in the first runs
    by_config: dict[str, list] = {}
    for i, sid in repeats:
        base, _, k = sid.partition("#")
        by_config.setdefault(base, []).append(order[i][2])
    assert len(by_config) == len(rep["configs"])
    assert all(len(v) == rep["times"] and all(c == v[0] for c in v) for v in by_config.values())


def test_v2_harnesses_on_task_halves_keep_each_others_tasks_in_the_manifest(tmp_path):
    path = tmp_path / "manifest.json"
    md_v2._merge_manifest(path, {"sst2": {"n_train": 200}, "liar": {"n_train": 200}})
    md_v2._merge_manifest(path, {"trec_coarse": {"n_train": 200}, "liar": {"n_train": 150}})
    assert json.loads(path.read_text()) == {"sst2": {"n_train": 200}, "liar": {"n_train": 150},
                                            "trec_coarse": {"n_train": 200}}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left


def test_v2_run_records_curve_cpu_time_and_failures_then_exports(tmp_path):
    """Two real runs through the v2 harness (a tiny BERT from scratch on a small SMS task, in a
    subprocess): one completes with a learning curve (4 evaluations per epoch) and its CPU time;
    one diverges (a learning rate of 1e3: failed/Diverged, its curve kept up to there); one exceeds
    its CPU-time limit (timeout). The export merges curve, CPU time and load into valid
    records and adds its datasheet section after v1's."""
    import json
    import subprocess
    script = f"""
import sys, json
from pathlib import Path
sys.path.insert(0, {str(HARNESS)!r}); sys.path.insert(0, {str(ROOT)!r})
import run_v2, tasks
from xlog.store import LocalStore
tmp = Path({str(tmp_path)!r})
settings = run_v2.load_settings()
space = run_v2.load_space(tmp / "cache")
spec = tasks.TaskSpec("sms", "sms_spam_600.parquet", ["train"], [], True, 64, 40, 0)
man = tasks.prepare_tasks(Path({str(ROOT / "examples" / "data")!r}), tmp / "cache" / "v2", [spec])
(tmp / "cache" / "v2" / "tasks" / "manifest.json").write_text(json.dumps(man))
store = LocalStore(tmp / "home")
base = dict(model_name="tiny:bert-2x64", train_learning_rate=1e-3, train_epochs=1, train_batch_size=16,
            train_max_seq_length=32, train_warmup_ratio=0.0, train_weight_decay=0.0, train_lr_scheduler="linear")
ok = run_v2.full_config(space, dict(base, ft_method="full"))
h = run_v2.Harness(store, space, settings, tmp / "cache", 120, 6.0)
r1 = h.run_one("sms", Path(man["sms"]["dir"]), "metadataset-v2:ok", ok, 1)
bad = dict(ok, train_learning_rate=1e3, train_epochs=1)  # far beyond the space: the loss explodes
r2 = h.run_one("sms", Path(man["sms"]["dir"]), "metadataset-v2:diverged", bad, 2)
h.cpu_limit_s = 1.0  # a CPU-time limit the run cannot meet: recorded as a timeout
r3 = h.run_one("sms", Path(man["sms"]["dir"]), "metadataset-v2:slow", dict(ok, train_epochs=50), 3)
print(json.dumps([r1["record_id"], r1["status"], r2["record_id"], r2["status"], r2["error_type"], r3["status"]]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "XLOG_ENERGY": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    id1, st1, id2, st2, err2, st3 = json.loads(out.stdout.strip().splitlines()[-1])
    assert (st1, st2, err2, st3) == ("completed", "failed", "Diverged", "timeout")
    side = json.loads((tmp_path / "cache" / "v2" / "curves" / f"{id1}.json").read_text())
    steps_per_epoch = 4  # 64 texts / batch 16
    assert [p["step"] for p in side["eval"]][:4] == [1, 2, 3, 4] and len(side["eval"]) == steps_per_epoch
    assert side["train_cpu_time_s"] > 0 and side["process_cpu_time_s"] >= side["train_cpu_time_s"] * 0.5
    assert side["hw_load_avg"] is not None

    import export as md_export
    from xlog import schema as S
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "DATASHEET.md").write_text("# Datasheet: v1\nkept\n")
    path = md_export.export_v2(tmp_path / "home", out_dir, tmp_path / "cache")
    table = pq.read_table(path)
    assert S.validate_table(table) == []
    recs = {r["record_id"]: r for r in S.table_to_records(table)}
    assert {id1, id2} <= set(recs) and len(recs) == 3
    done = recs[id1]
    fields = set(S.field_names())
    if "curve" in fields:
        evals = [p for p in done["curve"] if p["kind"] == "eval" and p["name"] == "eval_f1"]
        assert len(evals) == len(side["eval"]) and evals[-1]["value"] == pytest.approx(done["outcome_primary_value"])
        assert any(p["kind"] == "train" and p["name"] == "loss" for p in done["curve"])
        # xlog's own CPU time when the callback logs it, else the harness's: the same span of the run
        assert done["train_cpu_time_s"] == pytest.approx(side["train_cpu_time_s"], rel=0.5)
        assert recs[id2]["curve"] and recs[id2]["train_cpu_time_s"] is not None  # kept up to the failure
    sheet = (out_dir / "DATASHEET.md").read_text()
    assert sheet.startswith("# Datasheet: v1\nkept") and "meta-dataset v2" in sheet and "failed 1" in sheet
    md_export.export_v2(tmp_path / "home", out_dir, tmp_path / "cache")  # re-runnable: same section, once
    assert (out_dir / "DATASHEET.md").read_text().count("meta-dataset v2 (`") == 1


# ---- the generative meta-dataset (run_generative.py) --------------------------------------------
GEN_DATA = ROOT / "benchmarks" / "data" / "metadataset_generative.parquet"


def test_generative_grid_tasks_and_section(tmp_path):
    import export_generative as gx
    import run_generative as gen
    space = gen.load_space()
    grid = gen.load_grid(space)
    assert len({g["search_id"] for g in grid}) == len(grid) >= 6
    assert {g["config"]["ft_method"] for g in grid} == {"lora", "partial", "full"}
    assert gen.sample_grid(len(grid)) == [{k: v for k, v in g["config"].items() if v is not None} for g in grid]
    specs = gen.load_tasks()
    kinds = Counter(s["kind"] for s in specs)
    assert kinds["question-answering"] >= 2 and kinds["causal-lm"] >= 2  # one of each kind can be held out
    assert gen.load_space("causal-lm").task_type == "causal-lm"
    # Tasks from files of the shared data's layout: QA blocks of consecutive rows, contexts held out
    # whole; plain text and prompt/response causal-LM data.
    src = pd.read_parquet(ROOT / "tests" / "fixtures" / "squad_sample" / "squad_v1_1_dev_48.parquet")
    src.assign(split="validation").to_parquet(tmp_path / "squad.parquet")
    pd.DataFrame({"text": [f"message number {i} about things" for i in range(40)], "label": ["a", "b"] * 20,
                  "split": "train"}).to_parquet(tmp_path / "sms.parquet")
    mine = [{"name": "qa", "kind": "question-answering", "file": "squad.parquet", "rows": [0, 24],
             "max_train": 12, "max_eval": 6, "seed": 0},
            {"name": "lm", "kind": "causal-lm", "file": "sms.parquet", "text": "text", "max_train": 20, "max_eval": 5,
             "seed": 0},
            {"name": "ins", "kind": "causal-lm", "file": "sms.parquet", "instruct": "Label of: {text}\nLabel:",
             "max_train": 20, "max_eval": 5, "seed": 0}]
    man = gen.prepare_tasks(tmp_path, tmp_path / "cache", mine)
    qa_tr = pd.read_parquet(Path(man["qa"]["dir"]) / "train.parquet")
    qa_ev = pd.read_parquet(Path(man["qa"]["dir"]) / "eval.parquet")
    assert (len(qa_tr), len(qa_ev)) == (12, 6) and not set(qa_tr["context"]) & set(qa_ev["context"])
    assert set(qa_tr["question"]) <= set(src["question"].iloc[:24])
    assert man["lm"]["columns"] == ["text"] and {"prompt", "response"} <= set(man["ins"]["columns"])
    ins = pd.read_parquet(Path(man["ins"]["dir"]) / "train.parquet")
    assert ins["prompt"].str.startswith("Label of: message").all() and set(ins["response"]) <= {"a", "b"}
    assert gen.prepare_tasks(tmp_path, tmp_path / "cache", mine) == man  # prepared once, then reused
    # The datasheet section replaces itself and keeps the rest of the datasheet.
    text = "# Datasheet v1\n\nbody\n"
    once = gx.with_section(text, "## A")
    assert once.startswith(text.rstrip("\n")) and once.count(gx.START) == 1
    assert gx.with_section(once, "## B") == once.replace("## A", "## B")


@pytest.mark.skipif(not GEN_DATA.is_file(), reason="no generative meta-dataset exported yet")
def test_committed_generative_records_are_valid_and_typed():
    import run_generative as gen
    from xlog import schema as S
    from xlog.privacy import find_leaks
    table = pq.read_table(GEN_DATA)
    assert S.validate_table(table) == []
    recs = S.table_to_records(table)
    kind = {s["name"]: s["kind"] for s in gen.load_tasks()}
    space = gen.load_space()
    by_id = {g["search_id"]: g["config"] for g in gen.load_grid(space)}
    for r in recs:
        assert r["task_type"] == kind[r["task_name"]] and r["search_id"] in by_id
        assert space.config_from_record(r) == by_id[r["search_id"]]
        if r["status"] == "completed":
            want = ("eval_f1", True) if r["task_type"] == "question-answering" else ("eval_loss", False)
            assert (r["outcome_primary_metric"], r["outcome_greater_is_better"]) == want
            assert r["task_answer_tokens_mean"] is not None or r["task_type"] == "causal-lm"
        assert not any(isinstance(v, str) and find_leaks(v) for v in r.values())


def test_datasheet_keeps_v1_v2_and_generative_sections(tmp_path):
    """The three exports each rewrite their own part of DATASHEET.md and keep the others."""
    import export as md_export
    import export_generative as gx
    sheet = tmp_path / "DATASHEET.md"
    md_export.write_section(sheet, "# v1 A\n", v2=False)
    sheet.write_text(gx.with_section(sheet.read_text(), "## gen A"))
    md_export.write_section(sheet, "## v2 A\n", v2=True)
    md_export.write_section(sheet, "# v1 B\n", v2=False)
    md_export.write_section(sheet, "## v2 B\n", v2=True)
    sheet.write_text(gx.with_section(sheet.read_text(), "## gen B"))
    text = sheet.read_text()
    assert text.startswith("# v1 B\n") and text.count(md_export.V2_MARK) == 1 and text.count(gx.START) == 1
    assert "## v2 B" in text and "## gen B" in text and not any(x in text for x in ("A\n", "gen A", "v2 A"))
    assert text.index("# v1 B") < text.index(md_export.V2_MARK) < text.index(gx.START)
