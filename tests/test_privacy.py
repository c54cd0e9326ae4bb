"""Records never contain raw text, absolute paths, user or host names, or tokens."""
from __future__ import annotations

import getpass
import json
import re
import socket

import pytest
from datasets import Dataset
from transformers import Trainer, TrainerCallback

import tiny
from xlog import LocalStore, XLogCallback
from xlog.privacy import find_leaks, scrub_name, scrub_text

USER = "alice_secret_user"
TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"


class Leak(TrainerCallback):
    def __init__(self, where: str):
        self.where = where

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 2:
            raise RuntimeError(f"cannot open {self.where}/data/shard-0.bin for {USER}@corp.example.com "
                               f"(token={TOKEN}) on {socket.gethostname()} via https://{USER}:pw@internal.example/x")


def all_strings(v):
    if isinstance(v, dict):
        for k, x in v.items():
            yield str(k)
            yield from all_strings(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from all_strings(x)
    elif isinstance(v, str):
        yield v


def test_failed_run_with_secrets_leaks_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLOG_ENERGY", "0")
    monkeypatch.setenv("USER", USER)
    secret_dir = tmp_path / f"home_{USER}" / "models" / "my-bert"
    model = tiny.bert_classifier()
    model.save_pretrained(secret_dir)  # the model is loaded from a path that names the user
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(secret_dir)
    df = tiny.sms_frame(120)
    texts = [f"{t} call {USER} at {USER}@mail.example.com, key {TOKEN}" for t in df["text"]]
    tok = tiny.tokenizer()
    ds = Dataset.from_dict({"text": texts, "label": (df["label"] == "spam").astype(int).tolist()})
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=32, padding="max_length"), batched=True)
    trainer = Trainer(model=model, args=tiny.training_args(tmp_path / f"runs_{USER}"), train_dataset=ds,
                      processing_class=tok, callbacks=[XLogCallback(), Leak(str(tmp_path / USER))])
    with pytest.raises(RuntimeError):
        trainer.train()
    [rec] = LocalStore().records()
    assert rec["status"] == "failed"
    assert rec["model_name"] == "my-bert"  # the base name only, never the path
    strings = list(all_strings({k: v for k, v in rec.items() if not hasattr(v, "isoformat")}))
    blob = json.dumps(strings)
    for needle in (USER, TOKEN, "mail.example.com", "corp.example.com", "internal.example", str(tmp_path)):
        assert needle not in blob, needle
    host = re.compile(r"(?<![A-Za-z0-9])" + re.escape(socket.gethostname()) + r"(?![A-Za-z0-9])", re.I)
    assert not host.search(blob)
    for t in texts[:50]:
        assert t not in blob and t.split(" call ")[0] not in strings
    assert find_leaks(strings, secrets=(USER, TOKEN)) == []
    assert "shard-0.bin" in rec["error_message"]  # the file name stays: it helps and identifies nobody
    # The Parquet file itself holds no secret either (e.g. in metadata).
    raw = LocalStore().files()[0].read_bytes()
    assert USER.encode() not in raw and TOKEN.encode() not in raw and str(tmp_path).encode() not in raw


def test_scrub_text_cases():
    me = getpass.getuser()
    s = scrub_text(f"/home/{me}/x/y.py C:\\Users\\bob\\t.py bob@example.org Bearer abcdefghijklmnop sk-{'a'*20}"
                   f" ghp_{'b'*30} ~/secret/file")
    assert "/home" not in s and "Users" not in s and "example.org" not in s
    assert "abcdefghijklmnop" not in s and "aaaa" not in s and "bbbb" not in s and "secret" not in s
    assert s.count("<path>") >= 3
    assert scrub_name("bert-base-uncased") == "bert-base-uncased"
    assert scrub_name("org/model-x") == "org/model-x"
    assert scrub_name("/data/users/bob/checkpoints/run-7") == "run-7"
    assert len(scrub_text("x" * 5000)) <= 2000


# ---- issue 12, item 2: user-given strings and relative paths; checks at every boundary ----------

def test_user_given_strings_are_scrubbed_at_capture(tmp_path, monkeypatch):
    """Regression: XLogCallback(task_name="x@y.org") stored the e-mail, and `xlog push` published it."""
    from xlog.privacy import PrivacyWarning
    monkeypatch.setenv("XLOG_ENERGY", "0")
    train, _ = tiny.classification_datasets(64)
    store = LocalStore(tmp_path / "home")
    with pytest.warns(PrivacyWarning) as caught:
        cb = XLogCallback(task_name="x@y.org", contributor="me@host.com", domain="./secret/dir/social",
                          language="en", store=store)
    said = " ".join(str(w.message) for w in caught)
    assert "task_name" in said and "contributor" in said and "task_domain" in said
    trainer = Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "out"), train_dataset=train,
                      processing_class=tiny.tokenizer(), callbacks=[cb])
    trainer.train()
    [rec] = store.records()
    assert rec["status"] == "completed"
    assert rec["task_name"] is None and rec["contributor"] is None  # nothing public was left of them
    assert rec["task_domain"] == "social" and rec["task_language"] == "en"
    blob = json.dumps(list(all_strings({k: v for k, v in rec.items() if not hasattr(v, "isoformat")})))
    raw = store.files()[0].read_bytes()
    for needle in ("x@y.org", "y.org", "me@host.com", "host.com", "secret/dir"):
        assert needle not in blob and needle.encode() not in raw, needle


class RaiseRelativePaths(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            raise FileNotFoundError("cannot open ./secret/dir/file.txt (also tried ../x/y and data/team/raw/z.csv)")


def test_relative_paths_in_error_messages_are_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_ENERGY", "0")
    train, _ = tiny.classification_datasets(64)
    store = LocalStore(tmp_path / "home")
    trainer = Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "out"), train_dataset=train,
                      processing_class=tiny.tokenizer(), callbacks=[XLogCallback(store=store), RaiseRelativePaths()])
    with pytest.raises(FileNotFoundError):
        trainer.train()
    [rec] = store.records()
    assert rec["status"] == "failed" and rec["error_type"] == "FileNotFoundError"
    msg = rec["error_message"]
    assert msg == "cannot open <path>/file.txt (also tried <path>/y and <path>/z.csv)", msg
    raw = store.files()[0].read_bytes()
    assert b"secret/dir" not in raw and b"../x" not in raw and b"team/raw" not in raw


def test_scrubbing_keeps_what_identifies_nobody():
    for keep in ("bert-base-uncased", "org/model-x", "sentence-transformers/all-MiniLM-L6-v2", "token classification",
                 "Token indices sequence length is longer than the specified maximum", "shape 3/4/5 on 01/02/2025",
                 "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)",
                 "text-classification", "import:autogoal", "12.1", "Linux-6.8.0-x86_64-with-glibc2.35"):
        assert scrub_text(keep) == keep and find_leaks(keep) == [], keep


def test_scrub_and_check_agree():
    """A value leaks exactly when scrubbing changes it: what is scrubbed passes every check, and
    scrubbing twice changes nothing."""
    from xlog.privacy import record_leaks, scrub_record, scrub_value
    nasty = ["x@y.org", "bob@gpu-node-3", "./secret/dir/file.txt", "../x/y", "a/b/c.txt", "/home/bob/x", "~/x/y",
             "C:\\Users\\bob\\t.py", "hf_" + "a1" * 10, "sk-" + "b" * 20, "password=hunter22", "Bearer abcdefghijkl",
             "https://user:pw@internal.example/x", "deadbeef" * 5, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1",
             "my task <x@y.org> on ./data/a"]
    for field in ("task_name", "contributor", "error_message", "ft_config_json", "peft_target_modules"):
        for v in nasty:
            value = [v] if field == "peft_target_modules" else v
            out, kinds = scrub_value(field, value)
            assert kinds, (field, v)
            again, kinds2 = scrub_value(field, out)
            assert again == out and kinds2 == (), (field, v, out, kinds2)
    rec = {"task_name": "x@y.org", "task_domain": "./a/b", "error_message": "at ../x/y", "model_name": "org/m",
           "outcome_metrics": {"eval_f1": 0.5}}
    clean, problems = scrub_record(rec)
    assert sorted(p.split(":")[0] for p in problems) == ["error_message", "task_domain", "task_name"]
    assert record_leaks(clean) == [] and clean["model_name"] == "org/m" and rec["task_name"] == "x@y.org"


def test_scrubbing_huge_strings_is_linear():
    """Every pattern starts only where a run of its characters starts: a 10 MB task name or
    error message is scrubbed and checked in linear time (a quadratic pattern would hang here)."""
    from xlog.privacy import scrub_value
    for unit in ("a", "a.", "a/", "a@", "-a", "aB3+", "a_", "~/", "./", "a://", "token=", "eyJabcdefgh."):
        s = unit * (400_000 // len(unit))
        for field in ("task_name", "error_message", "ft_config_json"):
            scrub_value(field, s)


def test_validate_reports_a_leak_planted_in_a_record_file(tmp_path):
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from test_store import record
    from xlog import schema as S
    from xlog.cli import main
    rec = record(task_name="x@y.org", error_message="cannot open ./secret/dir/file.txt")
    path = tmp_path / "planted.parquet"
    pq.write_table(S.records_to_table([rec]), path)  # after capture: not through LocalStore.write
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "0 valid, 1 invalid" in res.output
    rid = rec["record_id"][:8]
    assert f"row 0 (record {rid}): task_name: looks like private data (e-mail address)" in res.output
    assert f"row 0 (record {rid}): error_message: looks like private data (path)" in res.output
    assert "x@y.org" not in res.output  # the report does not repeat the leak
    # JSON records (as the callback keeps one it could not write) are checked too.
    (tmp_path / "planted.parquet").unlink()
    (tmp_path / "rec.json").write_text(json.dumps({**rec, "created_at": rec["created_at"].isoformat()}))
    res = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert res.exit_code == 1 and "record 0: task_name: looks like private data" in res.output
