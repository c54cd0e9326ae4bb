"""The meta-dataset harness (benchmarks/metadataset/): its grid is a fixed set of points of its
space, its plan covers every (task, config) pair once in round-robin order, its subsamples are
deterministic and stratified, and the committed records are schema-valid, private and traceable
to a task and a configuration."""
from __future__ import annotations

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
