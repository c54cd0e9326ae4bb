"""The xlog CLI on a real store, and a real two-process distributed run (one record only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from transformers import Trainer

import tiny
from xlog import LocalStore, XLogCallback
from xlog.cli import main

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("clihome")
    os.environ["XLOG_ENERGY"] = "0"
    try:
        train, evald = tiny.classification_datasets()
        for lr in (1e-3, 5e-4):
            Trainer(model=tiny.bert_classifier(), args=tiny.training_args(home / "o", learning_rate=lr),
                    train_dataset=train, eval_dataset=evald, compute_metrics=tiny.compute_metrics,
                    processing_class=tiny.tokenizer(),
                    callbacks=[XLogCallback(task_name="sms_spam", store=home / "store")]).train()
    finally:
        del os.environ["XLOG_ENERGY"]
    return home / "store"


def cli(home, *args):
    return CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)


def test_ls_table_and_json(home):
    res = cli(home, "ls")
    assert res.exit_code == 0 and "sms_spam" in res.output and "2 record(s)" in res.output
    rows = [json.loads(line) for line in cli(home, "ls", "--json").output.splitlines()]
    assert len(rows) == 2 and {r["train_learning_rate"] for r in rows} == {1e-3, 5e-4}
    assert all(r["status"] == "completed" and r["task_n_train"] == 150 for r in rows)
    assert cli(home, "ls", "--status", "oom").output.startswith("no records")


def test_show(home):
    rid = LocalStore(home).records()[0]["record_id"]
    res = cli(home, "show", rid[:8])
    assert res.exit_code == 0 and rid in res.output and "[hardware]" in res.output
    assert json.loads(cli(home, "show", rid, "--json").output)["record_id"] == rid
    missing = CliRunner().invoke(main, ["--home", str(home), "show", "ffffffff"])
    assert missing.exit_code == 1 and "no record" in missing.output


def test_validate(home, tmp_path):
    files = [str(p) for p in LocalStore(home).files()]
    ok = cli(home, "validate", *files)
    assert ok.exit_code == 0 and "2 valid, 0 invalid" in ok.output
    bad = tmp_path / "bad.parquet"
    t = pq.read_table(files[0]).set_column(8, "status", pa.array(["exploded"]))
    pq.write_table(t, bad)
    (tmp_path / "junk.parquet").write_text("not parquet")
    res = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert res.exit_code == 1
    assert "status: 'exploded' is not one of" in res.output and "not a readable Parquet file" in res.output


def test_doctor_explains_backends():
    res = CliRunner().invoke(main, ["doctor"])
    assert res.exit_code == 0
    assert "codecarbon" in res.output and "nvml" in res.output and "torch" in res.output


def test_distributed_run_writes_one_record(tmp_path):
    env = dict(os.environ, XLOG_HOME=str(tmp_path / "home"), XLOG_ENERGY="0", OMP_NUM_THREADS="1")
    import socket
    with socket.socket() as sock:  # a free port: two test workers (or another job) may run beside this
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                        str(HERE / "ddp_run.py"), str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    [r] = LocalStore(tmp_path / "home").records()
    assert r["train_world_size"] == 2 and r["train_effective_batch_size"] == 16 and r["status"] == "completed"
