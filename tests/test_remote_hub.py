"""xlog push / pull against a local Hub-compatible server (real HTTP, unmodified huggingface_hub)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from xlog import schema as S
from xlog.cli import main as xlog_main
from xlog.ledger import Ledger
from xlog.remotes import RemoteError, open_remote
from xlog.remotes import layout as L
from xlog.remotes.sync import pull, push
from xlog.store import LocalStore
from xsearch.cli import main as xsearch_main

REPO = "lab/experience"


def _store(tmp_path: Path, name: str, records: list[dict]) -> LocalStore:
    store = LocalStore(tmp_path / name)
    store.write_many(records)
    return store


def _remote_ids(hub, repo: str = REPO) -> Counter:
    ids: Counter = Counter()
    for path, data in hub.files(repo).items():
        if L.is_data_path(path):
            ids.update(pq.read_table(io.BytesIO(data)).column("record_id").to_pylist())
    return ids


def _commits(hub, repo: str = REPO) -> int:
    return len(hub.commits(repo))


def test_push_pull_round_trip_field_by_field(hub_env, tmp_path, make_records):
    src = _store(tmp_path, "a", make_records(25, seed=1))
    res = push(open_remote(REPO), src, private=True, progress=False)
    assert res.new_records == 25 and res.uploaded_files == len(res.files) >= 2
    assert hub_env.repo(REPO).private is True
    files = hub_env.files(REPO)
    assert "README.md" in files and "configs:" in files["README.md"].decode()
    assert all(L.is_data_path(p) for p in files if p.endswith(".parquet"))
    assert _commits(hub_env) == 2  # repo creation + exactly one push commit

    dst = LocalStore(tmp_path / "b")
    got = pull(open_remote(REPO), dst, progress=False)
    assert got.new_files == len(res.files) and got.new_records == 25 and not got.quarantined
    pulled = []
    for p in sorted(got.mirror.rglob("*.parquet")):
        pulled.extend(S.table_to_records(pq.read_table(p)))
    assert sorted(pulled, key=lambda r: r["record_id"]) == sorted(src.records(), key=lambda r: r["record_id"])
    # Incremental: nothing new the second time.
    again = pull(open_remote(REPO), dst, progress=False)
    assert again.new_files == 0 and again.up_to_date_files == len(res.files)


def test_dataset_card_configs_are_read_by_datasets(hub_env, tmp_path, make_records):
    res = push(open_remote(REPO), _store(tmp_path, "a", make_records(12, seed=2)), progress=False)
    mirror = pull(open_remote(REPO), LocalStore(tmp_path / "b"), progress=False).mirror
    import datasets
    assert datasets.get_dataset_config_names(str(mirror)) == ["default", "v1"]
    builder = datasets.load_dataset_builder(str(mirror), cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(Path(f).name for f in builder.config.data_files["train"]) == sorted(Path(p).name for p in res.files)


def test_datasets_loads_the_rows(hub_env, tmp_path, make_records):
    push(open_remote(REPO), _store(tmp_path, "a", make_records(3, seed=2)), progress=False)
    mirror = pull(open_remote(REPO), LocalStore(tmp_path / "b"), progress=False).mirror
    import datasets
    ds = datasets.load_dataset(str(mirror), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 3
    loaded = [{m["name"]: m["value"] for m in row} for row in ds["outcome_metrics"] if row]
    assert loaded and all(m == {"eval_f1": 0.5, "eval_loss": 0.7} for m in loaded)


def test_repeat_push_uploads_nothing_even_without_ledger(hub_env, tmp_path, make_records):
    src = _store(tmp_path, "a", make_records(10, seed=3))
    push(open_remote(REPO), src, progress=False)
    n_commits, files = _commits(hub_env), hub_env.files(REPO)
    assert push(open_remote(REPO), src, progress=False).new_records == 0
    Ledger(src.root).path.unlink()  # ledger lost: content-addressed names still avoid duplicates
    res = push(open_remote(REPO), src, progress=False)
    assert res.uploaded_files == 0 and res.already_on_remote == len(res.files)
    assert _commits(hub_env) == n_commits and hub_env.files(REPO) == files
    assert Ledger(src.root).count(open_remote(REPO).key) == 10


def test_dry_run_and_contributor(hub_env, tmp_path, make_records):
    src = _store(tmp_path, "a", make_records(5, seed=4, contributor="someone"))
    r = CliRunner().invoke(xlog_main, ["--home", str(src.root), "push", "--remote", REPO, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would push 5 record(s)" in r.output and hub_env.repo(REPO) is None
    r = CliRunner().invoke(xlog_main, ["--home", str(src.root), "push", "--remote", REPO, "--anonymous", "-q"])
    assert r.exit_code == 0, r.output
    contributors = {c for p, d in hub_env.files(REPO).items() if L.is_data_path(p)
                    for c in pq.read_table(io.BytesIO(d)).column("contributor").to_pylist()}
    assert contributors == {None}
    assert {r["contributor"] for r in src.records()} == {"someone"}  # the local records are unchanged
    other = _store(tmp_path, "c", make_records(3, seed=5))
    r = CliRunner().invoke(xlog_main, ["--home", str(other.root), "push", "--remote", REPO, "--contributor", "lab-x"])
    assert r.exit_code == 0, r.output
    assert _remote_ids(hub_env).total() == 8


def test_conflicts_and_rate_limits_are_retried(hub_env, tmp_path, make_records):
    src = _store(tmp_path, "a", make_records(6, seed=6))
    hub_env.inject(r"POST /api/datasets/.*/commit/", status=412, count=2)
    hub_env.inject(r"POST /api/datasets/.*/commit/", status=429, count=1, headers={"Retry-After": "0"})
    hub_env.inject(r"POST /api/datasets/.*/commit/", status=409, count=1)
    res = push(open_remote(REPO), src, progress=False)
    assert res.uploaded_files == len(res.files)
    statuses = [s for m, p, s in hub_env.state.log if "/commit/" in p]
    assert statuses == [412, 412, 429, 409, 200]
    assert _remote_ids(hub_env) == Counter({r["record_id"]: 1 for r in src.records()})


def test_interrupted_push_is_resumed_without_loss_or_duplicates(hub_env, tmp_path, make_records, monkeypatch):
    monkeypatch.setenv("XLOG_PUSH_RETRIES", "0")
    recs = make_records(8, seed=7)
    src = _store(tmp_path, "a", recs[:5])
    remote_key = open_remote(REPO).key
    # 1. The connection drops before the commit takes effect: nothing is marked pushed.
    hub_env.inject(r"POST /api/datasets/.*/commit/", drop="before")
    with pytest.raises(RemoteError, match="interrupted"):
        push(open_remote(REPO), src, progress=False)
    assert Ledger(src.root).count(remote_key) == 0 and _remote_ids(hub_env).total() == 0
    # 2. The commit lands but the answer is lost: still nothing marked pushed (unknown outcome).
    hub_env.inject(r"POST /api/datasets/.*/commit/", drop="after")
    with pytest.raises(RemoteError, match="interrupted"):
        push(open_remote(REPO), src, progress=False)
    assert Ledger(src.root).count(remote_key) == 0 and len(Ledger(src.root).pending(remote_key)) > 0
    # 3. Resume, with new records in the meantime: the landed files are recognised, not re-sent.
    src.write_many(recs[5:])
    res = push(open_remote(REPO), src, progress=False)
    assert res.recovered_records == 5 and res.new_records == 3
    assert _remote_ids(hub_env) == Counter({r["record_id"]: 1 for r in recs})
    assert Ledger(src.root).count(remote_key) == 8 and Ledger(src.root).pending(remote_key) == {}


def test_corrupt_remote_files_are_quarantined_on_pull(hub_env, tmp_path, make_records):
    push(open_remote(REPO), _store(tmp_path, "a", make_records(4, seed=8)), progress=False)
    hub_env.put_file(REPO, "data/v1/2025-01/" + "0" * 32 + ".parquet", b"PAR1 this is not parquet")
    bad = [dict(r, status="exploded") for r in make_records(2, seed=9)]
    table = S.records_to_table(bad)  # builds the table without validating it
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    hub_env.put_file(REPO, L.data_path(1, "2025-02", data), data)  # right hash, invalid content
    home = LocalStore(tmp_path / "b")
    with pytest.warns(UserWarning, match="quarantined"):
        res = pull(open_remote(REPO), home, progress=False)
    reasons = dict(res.quarantined)
    assert len(reasons) == 2 and res.new_records == 4
    assert any("content hash" in r for r in reasons.values())
    assert any("status" in r and "exploded" in r for r in reasons.values())
    kept = list(home.quarantine_dir.rglob("*.parquet"))
    assert len(kept) == 2 and all(Path(str(p) + ".reason.txt").exists() for p in kept)
    again = pull(open_remote(REPO), home, progress=False)  # remembered: not downloaded again
    assert again.new_files == 0 and not again.quarantined
    from xsearch import db
    assert db.query("SELECT count(*) AS n FROM experiences", home.root).column("n")[0].as_py() == 4


def test_clear_errors(hub, tmp_path, make_records, monkeypatch):
    src = _store(tmp_path, "a", make_records(2, seed=10))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("XLOG_PUSH_RETRIES", "0")

    def run(*args: str) -> str:
        r = CliRunner().invoke(xlog_main, ["--home", str(src.root), *args])
        assert r.exit_code == 1, r.output
        return r.output

    # No network: nothing listens on that port.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    assert "unreachable" in run("push", "--remote", REPO)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    # Malformed repo id; a repo that does not exist (pull).
    assert "not a valid Hub dataset id" in run("push", "--remote", "bad id!/x")
    assert "does not exist" in run("pull", "--remote", "lab/nothing-here")
    # Missing token.
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    assert "no Hugging Face token" in run("push", "--remote", REPO)
    # Rate limited beyond the retries.
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hub.inject(r"POST /api/datasets/.*/commit/", status=429, count=1, headers={"Retry-After": "0"})
    assert "rate limited" in run("push", "--remote", REPO)
    assert Ledger(src.root).count(open_remote(REPO).key) == 0
    # No default remote at all.
    assert "no remote given" in run("push")


def test_bad_token_is_reported(tmp_path, make_records, monkeypatch):
    from hubserver import HubServer
    with HubServer(tokens={"hf_good": "lab"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        store = _store(tmp_path, "a", make_records(2, seed=11))
        r = CliRunner().invoke(xlog_main, ["--home", str(store.root), "push", "--remote", REPO])
        assert r.exit_code == 1 and "token was rejected" in r.output, r.output
        monkeypatch.setenv("HF_TOKEN", "hf_good")
        r = CliRunner().invoke(xlog_main, ["--home", str(store.root), "push", "--remote", REPO])
        assert r.exit_code == 0 and "pushed 2 record(s)" in r.output, r.output


def _env(hub, home: Path) -> dict:
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_token", "XLOG_HOME": str(home),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "XLOG_RETRY_BASE_S": "0.05", "XLOG_PUSH_RETRIES": "20"}


def test_eight_concurrent_pushes(hub_env, tmp_path, make_records):
    homes = [_store(tmp_path, f"h{i}", make_records(15, seed=100 + i)) for i in range(4)]
    hub_env.inject(r"POST /api/datasets/.*/commit/", status=412, count=3)  # conflicts under contention
    procs = [subprocess.Popen([sys.executable, "-c", "from xlog.cli import main; main()", "push", "--remote", REPO, "-q"],
                              env=_env(hub_env, homes[i % 4].root), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i in range(8)]  # two processes per home: the per-home lock must keep them apart
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    expected = Counter({r["record_id"]: 1 for h in homes for r in h.records()})
    assert _remote_ids(hub_env) == expected and len(expected) == 60


def test_two_homes_push_a_third_pulls_and_sees_every_record_once(hub_env, tmp_path, make_records):
    a = _store(tmp_path, "alice", make_records(30, seed=200))
    b = _store(tmp_path, "bob", make_records(20, seed=201))
    for home in (a, b):
        out = subprocess.run([sys.executable, "-c", "from xlog.cli import main; main()", "push", "--remote", REPO], env=_env(hub_env, home.root),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    third = tmp_path / "carol"
    r = CliRunner().invoke(xsearch_main, ["pull", "--remote", REPO, "--home", str(third), "-q"])
    assert r.exit_code == 0 and "50 records" in r.output, r.output
    r = CliRunner().invoke(xsearch_main, ["sql", "SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM experiences",
                                          "--home", str(third), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [{"n": 50, "d": 50}]
    ids = {x["record_id"] for x in json.loads(CliRunner().invoke(
        xsearch_main, ["sql", "SELECT record_id FROM experiences", "--home", str(third), "--json"]).output)}
    assert ids == {r["record_id"] for r in a.records() + b.records()}


@pytest.mark.skipif(not (os.environ.get("XLOG_LIVE_HF_TOKEN") and os.environ.get("XLOG_LIVE_HF_REPO")),
                    reason="live Hub test: set XLOG_LIVE_HF_TOKEN and XLOG_LIVE_HF_REPO (a scratch dataset)")
def test_live_hub_round_trip(tmp_path, make_records, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    from xlog.remotes.hub import HubRemote
    remote = HubRemote(os.environ["XLOG_LIVE_HF_REPO"], endpoint="https://huggingface.co",
                       token=os.environ["XLOG_LIVE_HF_TOKEN"])
    src = _store(tmp_path, "a", make_records(3, seed=300))
    push(remote, src, private=True, progress=False)
    got = pull(remote, LocalStore(tmp_path / "b"), progress=False)
    assert not got.quarantined
    from xsearch import db
    ids = set(db.query("SELECT record_id FROM experiences", tmp_path / "b").column("record_id").to_pylist())
    assert {r["record_id"] for r in src.records()} <= ids


# ---- issue 12, items 6, 8 and 9: the ledger, messages, Hub URLs ---------------------------------

def _xlog(hub, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from xlog.cli import main; main()", *args],
                          env={**_env(hub, home), **env}, capture_output=True, text=True, timeout=180)


def test_lost_ledger_then_one_new_record_uploads_one_record(hub_env, tmp_path, make_records):
    """The probe: 50 records pushed, the ledger lost, 1 new record: the push re-uploaded the new
    record's whole month (7 duplicates on the remote) and reported 51 records pushed."""
    src = _store(tmp_path, "a", make_records(50, seed=400))
    first = push(open_remote(REPO), src, progress=False)
    assert first.uploaded_records == 50
    Ledger(src.root).path.unlink()
    [new] = make_records(1, seed=401, created_at=src.records()[0]["created_at"])  # a month already on the remote
    src.write(new)
    out = _xlog(hub_env, src.root, "push", "--remote", REPO, "-q")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pushed 1 record(s) in 1 new file(s)" in out.stdout, out.stdout
    assert "50 local record(s) were already on the remote and were not sent" in out.stdout, out.stdout
    ids = _remote_ids(hub_env)
    assert ids == Counter({r["record_id"]: 1 for r in src.records()}) and ids.total() == 51
    new_files = {p for p in hub_env.files(REPO) if L.is_data_path(p)} - set(first.files)
    assert len(new_files) == 1
    assert pq.read_table(io.BytesIO(hub_env.files(REPO)[new_files.pop()])).column("record_id").to_pylist() == \
        [new["record_id"]]
    # The ledger was rebuilt from the remote: the next push reads nothing and sends nothing.
    key = open_remote(REPO).key
    assert Ledger(src.root).count(key) == 51
    n_requests = len(hub_env.state.log)
    again = push(open_remote(REPO), src, progress=False)
    assert again.uploaded_files == 0 and again.remote_files_read == 0 and again.new_records == 0
    assert not [p for m, p, s in hub_env.state.log[n_requests:] if "/resolve/" in p]


def test_push_skips_records_another_home_already_pushed(hub_env, tmp_path, make_records):
    """Planning from what the remote holds: the same records pushed from a second home (a copied
    store) are recognised by id, not only by identical file content."""
    recs = make_records(12, seed=402)
    a = _store(tmp_path, "a", recs[:8])
    push(open_remote(REPO), a, progress=False)
    b = _store(tmp_path, "b", recs[4:])  # 4 records in common, grouped into other files than a's
    res = push(open_remote(REPO), b, progress=False)
    assert res.uploaded_records == 4 and res.already_on_remote_records == 4 and res.remote_files_read >= 1
    assert _remote_ids(hub_env) == Counter({r["record_id"]: 1 for r in recs})


@pytest.mark.parametrize("damage", ["garbage", "malformed"])
def test_corrupt_ledger_is_set_aside_and_rebuilt_from_the_remote(hub_env, tmp_path, make_records, damage):
    src = _store(tmp_path, "a", make_records(30, seed=403))
    push(open_remote(REPO), src, progress=False)
    ledger = Ledger(src.root).path
    if damage == "garbage":
        bad = os.urandom(8192)
    else:  # a real ledger whose pages were overwritten: SQLite reports "database disk image is malformed"
        data = ledger.read_bytes()
        bad = data[:100] + os.urandom(len(data) - 100)
    ledger.write_bytes(bad)
    src.write_many(make_records(2, seed=404))
    out = _xlog(hub_env, src.root, "push", "--remote", REPO, "-q")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "was corrupt" in out.stderr and "started a new one" in out.stderr
    assert "pushed 2 record(s)" in out.stdout and "30 local record(s) were already on the remote" in out.stdout
    [aside] = list(src.root.glob("ledger.sqlite.corrupt-*"))
    assert aside.read_bytes() == bad  # kept for inspection, never deleted
    assert Ledger(src.root).count(open_remote(REPO).key) == 32
    assert _remote_ids(hub_env) == Counter({r["record_id"]: 1 for r in src.records()})
    # The Python API says it with a warning class of its own.
    from xlog.ledger import LedgerRecoveredWarning
    ledger.write_bytes(b"not a database at all" * 100)
    with pytest.warns(LedgerRecoveredWarning, match="was corrupt"):
        assert push(open_remote(REPO), src, progress=False).uploaded_files == 0


@pytest.mark.parametrize("endpoint", ["notaurl", "ftp://example.org", "http://"])
def test_invalid_endpoint_is_named(hub, tmp_path, make_records, monkeypatch, endpoint):
    src = _store(tmp_path, "a", make_records(2, seed=405))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    for cmd in (["push", "--remote", REPO], ["pull", "--remote", REPO]):
        r = CliRunner().invoke(xlog_main, ["--home", str(src.root), *cmd])
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert f"HF_ENDPOINT={endpoint!r} is not a valid Hub URL" in r.output, r.output
        assert "interrupted" not in r.output and "resume" not in r.output


def test_unreachable_endpoint_fails_at_once(tmp_path, make_records, monkeypatch):
    """Pull from a port nothing listens on took 23 s (the client's retry loop for connection
    errors): now one attempt, a message naming HF_ENDPOINT, and no sleeping between retries."""
    import socket
    import time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    src = _store(tmp_path, "a", make_records(2, seed=406))
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", lambda s: slept.append(s))  # the client's backoff sleeps through this
    for cmd in (["pull", "--remote", REPO], ["push", "--remote", REPO]):
        r = CliRunner().invoke(xsearch_main if cmd[0] == "pull" else xlog_main,
                               [*cmd, "--home", str(src.root)] if cmd[0] == "pull" else ["--home", str(src.root), *cmd])
        assert r.exit_code == 1, r.output
        assert f"HF_ENDPOINT={dead} is unreachable" in r.output and "interrupted" not in r.output, r.output
    assert slept == []


def test_server_errors_are_still_retried_as_the_hub_asks(hub_env, tmp_path, make_records):
    """Failing fast on connection errors keeps the retries for 429/5xx on reads too."""
    push(open_remote(REPO), _store(tmp_path, "a", make_records(3, seed=407)), progress=False)
    hub_env.inject(r"GET /api/datasets/.*/tree/", status=503, count=2)
    hub_env.inject(r"GET /api/datasets/.*/tree/", status=429, count=1, headers={"Retry-After": "0"})
    got = pull(open_remote(REPO), LocalStore(tmp_path / "b"), progress=False)
    assert got.new_records == 3
    assert [s for m, p, s in hub_env.state.log if "/tree/" in p][-4:] == [503, 503, 429, 200]


@pytest.mark.parametrize("spec", ["https://huggingface.co/datasets/lab/experience",
                                  "https://huggingface.co/datasets/lab/experience/tree/main",
                                  "huggingface.co/datasets/lab/experience", "{endpoint}/datasets/lab/experience",
                                  "hf://datasets/lab/experience"])
def test_hub_urls_are_hub_ids(hub_env, tmp_path, make_records, monkeypatch, spec):
    """The probe: --remote https://huggingface.co/datasets/lab/x was "pushed" into ./https:/..."""
    spec = spec.format(endpoint=hub_env.url)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    src = _store(tmp_path, "a", make_records(3, seed=408))
    r = CliRunner().invoke(xlog_main, ["--home", str(src.root), "push", "--remote", spec, "-q"])
    assert r.exit_code == 0 and "pushed 3 record(s)" in r.output, r.output
    assert _remote_ids(hub_env).total() == 3 and list(cwd.iterdir()) == []
    r = CliRunner().invoke(xsearch_main, ["pull", "--remote", spec, "--home", str(tmp_path / "b"), "-q"])
    assert r.exit_code == 0 and "(3 records)" in r.output, r.output
    assert list(cwd.iterdir()) == []
