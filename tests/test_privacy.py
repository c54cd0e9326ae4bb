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
