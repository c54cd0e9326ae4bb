"""Contributing without write access, review, merge and compaction, over real HTTP to the local
Hub server (tests/hubserver.py) and on a directory remote."""
from __future__ import annotations

import io
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from xlog import schema as S
from xlog.cli import main as xlog_main
from xlog.intake import content_hashes
from xlog.remotes import layout as L
from xlog.store import LocalStore

REPO = "lab/experience"
TOKENS = {"hf_maint": "lab", "hf_alice": ("alice", "read"), "hf_bob": "bob"}


@pytest.fixture
def hub(monkeypatch):
    """A Hub server with accounts: the maintainer (lab, owns the repo), alice (read-only token),
    bob (write token, but no write access to lab's repo)."""
    from hubserver import HubServer
    with HubServer(tokens=TOKENS) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.setenv("XLOG_RETRY_BASE_S", "0.05")
        yield server


def _xlog(home: Path, token: str, *args: str, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("HF_TOKEN", token)
    r = CliRunner().invoke(xlog_main, ["--home", str(home), *args])
    assert "Traceback" not in r.output, r.output
    return r.exit_code, r.output


def _pairs(files: dict[str, bytes]) -> Counter:
    """(record id, content hash) of every row of every data file."""
    out: Counter = Counter()
    for p, data in files.items():
        if L.is_data_path(p):
            t = pq.read_table(io.BytesIO(data))
            out.update(zip(t.column("record_id").to_pylist(), content_hashes(t)))
    return out


def _file(records: list[dict], month: str | None = None) -> tuple[str, bytes]:
    """A data file as a hostile contributor would write it (no validation on the way)."""
    buf = io.BytesIO()
    pq.write_table(S.records_to_table(records), buf, compression="zstd")
    data = buf.getvalue()
    created = records[0]["created_at"]
    return L.data_path(1, month or created.strftime("%Y-%m"), data), data


def _open_pr(hub, token: str, files: dict[str, bytes], title: str = "more records") -> int:
    from huggingface_hub import CommitOperationAdd, HfApi
    api = HfApi(endpoint=hub.url, token=token)
    info = api.create_commit(REPO, [CommitOperationAdd(p, d) for p, d in files.items()], commit_message=title,
                             repo_type="dataset", create_pr=True)
    return info.pr_num


def test_contributor_pr_review_merge(hub, tmp_path, make_records, monkeypatch):
    maint, alice = tmp_path / "maint", tmp_path / "alice"
    main_recs = make_records(6, seed=1)
    LocalStore(maint).write_many(main_recs)
    code, out = _xlog(maint, "hf_maint", "push", "--remote", REPO, "-q", monkeypatch=monkeypatch)
    assert code == 0 and "pushed 6 record(s)" in out, out
    main_files = dict(hub.files(REPO))

    # A contributor with a read-only token: the push opens a PR, with a clear message.
    LocalStore(alice).write_many(make_records(4, seed=2))
    code, out = _xlog(alice, "hf_alice", "push", "--remote", REPO, "-q", monkeypatch=monkeypatch)
    assert code == 0, out
    assert "cannot write to lab/experience (HTTP 403): pushing through a pull request instead" in out
    assert "opened pull request #1: " in out and "/datasets/lab/experience/discussions/1" in out
    assert hub.files(REPO) == main_files  # nothing on main
    # A second push adds to the same open PR (no second PR), sending only the new records.
    LocalStore(alice).write_many(make_records(3, seed=3))
    code, out = _xlog(alice, "hf_alice", "push", "--remote", REPO, "-q", "--create-pr", monkeypatch=monkeypatch)
    assert code == 0 and "pushed 3 record(s)" in out and "added to your open pull request #1" in out, out
    [pr] = hub.discussions(REPO)
    assert pr.is_pr and pr.author == "alice" and pr.status == "open" and len(pr.commits) == 2
    alice_ids = {r["record_id"] for r in LocalStore(alice).records()}
    assert {rid for rid, _ in _pairs(hub.pr_files(REPO, 1))} == alice_ids | {r["record_id"] for r in main_recs}
    code, out = _xlog(alice, "hf_alice", "push", "--remote", REPO, "-q", "--create-pr", monkeypatch=monkeypatch)
    assert code == 0 and "nothing to push" in out, out

    # A hostile contributor: a conflicting copy of a main record, F1 = 5, an oversized string, a stray file.
    victim = dict(main_recs[0], outcome_primary_value=0.0001)
    absurd = make_records(1, seed=4)[0] | {"outcome_primary_value": 5.0, "outcome_primary_metric": "eval_f1"}
    huge = make_records(1, seed=5)[0] | {"task_name": "x" * 70_000}
    poison = dict(_file([r]) for r in (victim, absurd, huge))
    overwrite = sorted(p for p in main_files if L.is_data_path(p))[0]  # a main file, other bytes
    assert _open_pr(hub, "hf_bob", {**poison, "notes.txt": b"hello", overwrite: _file([absurd])[1]}) == 2

    code, out = _xlog(maint, "hf_maint", "review", REPO, monkeypatch=monkeypatch)
    assert code == 1, out  # one PR fails
    blocks = {b.split()[0]: b for b in ("\n" + out).split("\nPR ")[1:]}
    alice_part, bob_part = blocks["#1"], blocks["#2"]
    assert alice_part.startswith("#1 by alice: PASS: ") and "file(s), 7 row(s), 7 new record(s)" in alice_part, out
    assert bob_part.startswith("#2 by bob: FAIL"), out
    assert f"conflict: record {victim['record_id']} is already in" in bob_part
    assert "outcome_primary_value" in bob_part and "task_name" in bob_part
    assert "notes.txt: outside the data layout" in bob_part
    assert f"{overwrite}: content hash" in bob_part

    code, out = _xlog(maint, "hf_maint", "review", REPO, "--pr", "1", "--comment", monkeypatch=monkeypatch)
    assert code == 0 and "verdict posted on PR #1" in out, out
    comments = [e["data"]["latest"]["raw"] for e in hub.discussions(REPO)[0].events if e["type"] == "comment"]
    assert comments[-1].startswith("**xlog review: pass**")

    # Merge: the poisoned PR is refused with its reasons, the clean one lands on main.
    code, out = _xlog(maint, "hf_maint", "merge", REPO, "2", monkeypatch=monkeypatch)
    assert code == 1 and "not merging PR #2: it fails review" in out and "conflict" in out, out
    assert hub.discussions(REPO)[1].status == "open"
    code, out = _xlog(alice, "hf_alice", "merge", REPO, "1", monkeypatch=monkeypatch)
    assert code == 1 and "no write access" in out, out  # a contributor cannot merge
    code, out = _xlog(maint, "hf_maint", "merge", REPO, "1", monkeypatch=monkeypatch)
    assert code == 0 and "merged PR #1 by alice" in out and "7 new record(s)" in out, out
    assert hub.discussions(REPO)[0].status == "merged"
    assert hub.commits(REPO)[-1].summary.endswith("(#1)")
    code, out = _xlog(maint, "hf_maint", "merge", REPO, "1", monkeypatch=monkeypatch)
    assert code == 1 and "merged" in out, out

    # Provenance: the merged files came from PR #1; a fresh reader sees every record once.
    from xlog.remotes import open_remote
    monkeypatch.setenv("HF_TOKEN", "hf_maint")
    remote = open_remote(REPO)
    listing = [p for p in hub.files(REPO) if L.is_data_path(p)]
    origins = remote.file_origins(listing)
    assert {p for p, o in origins.items() if o["pr"] == 1} == set(listing) - set(main_files)
    assert all(o["commit"] and o["date"] for o in origins.values())
    code, out = _xlog(tmp_path / "reader", "hf_maint", "pull", "--remote", REPO, "-q", monkeypatch=monkeypatch)
    assert code == 0, out
    from xsearch import db
    got = db.query("SELECT record_id FROM experiences", tmp_path / "reader").column("record_id").to_pylist()
    assert Counter(got) == Counter(alice_ids | {r["record_id"] for r in main_recs})


def test_read_only_token_and_closed_pr(hub, tmp_path, make_records, monkeypatch):
    maint, bob = tmp_path / "maint", tmp_path / "bob"
    LocalStore(maint).write_many(make_records(2, seed=10))
    assert _xlog(maint, "hf_maint", "push", "--remote", REPO, "-q", monkeypatch=monkeypatch)[0] == 0
    LocalStore(bob).write_many(make_records(2, seed=11))
    code, out = _xlog(bob, "hf_bob", "push", "--remote", REPO, "-q", "--create-pr", monkeypatch=monkeypatch)
    assert code == 0 and "opened pull request #1" in out, out
    from huggingface_hub import HfApi
    HfApi(endpoint=hub.url, token="hf_maint").change_discussion_status(REPO, 1, "closed", repo_type="dataset")
    code, out = _xlog(maint, "hf_maint", "review", REPO, monkeypatch=monkeypatch)
    assert code == 0 and "no open pull request" in out, out
    code, out = _xlog(maint, "hf_maint", "merge", REPO, "1", monkeypatch=monkeypatch)
    assert code == 1 and "the pull request is closed" in out, out
    # A later push of bob opens a new PR: the closed one is not reused, its records are named
    # (not on the remote) and not sent again unless bob asks.
    LocalStore(bob).write_many(make_records(1, seed=12))
    code, out = _xlog(bob, "hf_bob", "push", "--remote", REPO, "-q", "--create-pr", monkeypatch=monkeypatch)
    assert code == 0 and "opened pull request #2" in out, out
    assert "pull request #1 was closed without merging: 2 of your record(s)" in out and "--resend-closed" in out, out
    assert "pushed 1 record(s)" in out, out
    code, out = _xlog(bob, "hf_bob", "push", "--remote", REPO, "-q", "--create-pr", "--resend-closed",
                      monkeypatch=monkeypatch)
    assert code == 0 and "sending its 2 record(s) again" in out and "pushed 2 record(s)" in out, out
    assert "added to your open pull request #2" in out, out
    code, out = _xlog(bob, "hf_bob", "push", "--remote", REPO, "-q", "--create-pr", monkeypatch=monkeypatch)
    assert code == 0 and "nothing to push" in out and "closed without merging" not in out, out
    # Merged, bob's three records reach main: nothing of the closed PR is left out.
    code, out = _xlog(maint, "hf_maint", "merge", REPO, "2", monkeypatch=monkeypatch)
    assert code == 0, out
    code, out = _xlog(maint, "hf_maint", "pull", "--remote", REPO, "-q", monkeypatch=monkeypatch)
    assert code == 0, out
    bob_ids = {r["record_id"] for r in LocalStore(bob).records()}
    from xsearch.db import connect
    con = connect(maint)
    on_main = {r[0] for r in con.execute("SELECT record_id FROM experiences").fetchall()}
    assert bob_ids <= on_main
    # --create-pr on a directory is a usage error; review of a directory says PRs are Hub-only.
    code, out = _xlog(bob, "hf_bob", "push", "--remote", str(tmp_path / "shared"), "--create-pr",
                      monkeypatch=monkeypatch)
    assert code == 2 and "pull requests exist on Hub datasets only" in out, out
    (tmp_path / "shared").mkdir()
    code, out = _xlog(bob, "hf_bob", "review", str(tmp_path / "shared"), monkeypatch=monkeypatch)
    assert code == 1 and "has no pull requests" in out, out


def _several_pushes(tmp_path: Path, make_records, remote_spec: str, token: str, monkeypatch, n: int = 6,
                    per_push: int = 3, months: int = 2) -> list[dict]:
    """``n`` pushes of ``per_push`` records each, spread over ``months``: many small files per partition."""
    home = tmp_path / "pusher"
    recs = []
    for i in range(n):
        batch = make_records(per_push, seed=100 + i,
                             created_at=datetime(2025, 3 + i % months, 10, tzinfo=timezone.utc))
        LocalStore(home).write_many(batch)
        recs += batch
        code, out = _xlog(home, token, "push", "--remote", remote_spec, "-q", monkeypatch=monkeypatch)
        assert code == 0, out
    return recs


def test_compact_hub(hub, tmp_path, make_records, monkeypatch):
    recs = _several_pushes(tmp_path, make_records, REPO, "hf_maint", monkeypatch)
    # An identical second copy of two records (harmless), and a conflicting copy (kept as is).
    dup_path, dup = _file([recs[3], recs[5]])  # April: another push than the conflicting record
    hub.put_file(REPO, dup_path, dup)
    bad_path, bad = _file([dict(recs[1], outcome_primary_value=0.0001)])
    hub.put_file(REPO, bad_path, bad)
    # A pull request open while the maintainer compacts.
    LocalStore(tmp_path / "bob").write_many(make_records(2, seed=300, created_at=datetime(2025, 3, 12,
                                                                                       tzinfo=timezone.utc)))
    code, out = _xlog(tmp_path / "bob", "hf_bob", "push", "--remote", REPO, "-q", monkeypatch=monkeypatch)
    assert code == 0 and "opened pull request #1" in out, out
    before = dict(hub.files(REPO))
    n_commits = len(hub.commits(REPO))
    home = tmp_path / "maint"

    code, out = _xlog(home, "hf_maint", "compact", REPO, monkeypatch=monkeypatch)
    assert code == 0 and "dry run: would compact" in out and "run again with --apply" in out, out
    assert "holds a record id that conflicts elsewhere" in out, out
    assert hub.files(REPO) == before and len(hub.commits(REPO)) == n_commits

    # The commit lands but its answer is lost: the retry meets its own commit (412) and says so.
    hub.inject(r"POST /api/datasets/.*/commit/", drop="after")
    code, out = _xlog(home, "hf_maint", "compact", REPO, "--apply", monkeypatch=monkeypatch)
    assert code == 0 and out.startswith("compacted"), out
    assert [s for m, p, s in hub.state.log if "/commit/" in p][-2:] == [0, 412]
    after = hub.files(REPO)
    assert len(hub.commits(REPO)) == n_commits + 1  # one commit
    data_before = [p for p in before if L.is_data_path(p)]
    data_after = [p for p in after if L.is_data_path(p)]
    assert len(data_after) < len(data_before)
    # Every (id, content) is still there; the identical copy became one row; the conflict stays untouched.
    assert set(_pairs(after)) == set(_pairs(before))
    assert bad_path in after and sum(_pairs(after).values()) == len(recs) + 1
    assert "configs:" in after["README.md"].decode() and all(L.is_data_path(p) for p in after if p.endswith(".parquet"))
    # Nothing left to do; a second --apply changes nothing.
    code, out = _xlog(home, "hf_maint", "compact", REPO, "--apply", monkeypatch=monkeypatch)
    assert code == 0 and "nothing to compact" in out and len(hub.commits(REPO)) == n_commits + 1, out
    # The PR opened before the compaction reviews as 2 new records and merges: it only adds files.
    code, out = _xlog(home, "hf_maint", "merge", REPO, "1", monkeypatch=monkeypatch)
    assert code == 0 and "2 new record(s) in 1 file(s)" in out, out
    assert set(_pairs(hub.files(REPO))) == set(_pairs(after)) | set(_pairs(hub.pr_files(REPO, 1))) \
        and len(set(_pairs(hub.files(REPO)))) == len(set(_pairs(after))) + 2


def test_compact_directory_and_bounded_files(tmp_path, make_records, monkeypatch):
    shared = tmp_path / "shared"
    # One month, 4 files of 100 records (~70 kB each: mostly the footer); 400 records make ~94 kB.
    # Written as 4 pushes would write them (pushing itself is tested elsewhere; 400 local files are slow).
    recs = []
    for i in range(4):
        batch = make_records(100, seed=200 + i, created_at=datetime(2025, 3, 10, tzinfo=timezone.utc))
        for p, (data, _) in L.plan_files(batch).items():
            (shared / p).parent.mkdir(parents=True, exist_ok=True)
            (shared / p).write_bytes(data)
        recs += batch
    before = {p.relative_to(shared).as_posix(): p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    home = tmp_path / "maint"
    limit_mb = 0.085  # between one file of 400 records and two of 200 (the footer grows with the schema)
    code, out = _xlog(home, "unused", "compact", str(shared), "--apply", "--max-file-mb", str(limit_mb),
                      monkeypatch=monkeypatch)
    assert code == 0 and out.startswith("compacted") and "4 -> 2 file(s), 400 -> 400 row(s)" in out, out
    after = {p.relative_to(shared).as_posix(): p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    assert set(_pairs(after)) == set(_pairs(before)) and sum(_pairs(after).values()) == len(recs)
    data = [d for p, d in after.items() if L.is_data_path(p)]
    assert len(data) == 2 and max(len(d) for d in data) <= limit_mb * 2**20  # bounded: split in two
    assert not [p for p in shared.rglob(".*")]  # no temporary files left behind
    code, out = _xlog(tmp_path / "reader", "unused", "pull", "--remote", str(shared), "-q", monkeypatch=monkeypatch)
    assert code == 0, out
    from xsearch import db
    got = db.query("SELECT record_id FROM experiences", tmp_path / "reader").column("record_id").to_pylist()
    assert Counter(got) == Counter(r["record_id"] for r in recs)


def test_compaction_that_would_lose_a_record_commits_nothing(hub, tmp_path, make_records, monkeypatch):
    _several_pushes(tmp_path, make_records, REPO, "hf_maint", monkeypatch, n=3)
    before, n_commits = dict(hub.files(REPO)), len(hub.commits(REPO))
    import xlog.compact as C
    real = C._encode_partition

    def lossy(local, part, index, max_bytes, staged):  # a bug in the rewrite: a record is lost
        out = real(local, part, index, max_bytes, staged)
        path = next(iter(out))
        recs = S.table_to_records(pq.read_table(staged / path))[:-1]
        (staged / path).unlink()
        data = L.encode(recs, 1)
        new = L.data_path(1, path.split("/")[2], data)
        (staged / new).write_bytes(data)
        return {new: len(recs), **{p: n for p, n in out.items() if p != path}}
    monkeypatch.setattr(C, "_encode_partition", lossy)
    code, out = _xlog(tmp_path / "maint", "hf_maint", "compact", REPO, "--apply", monkeypatch=monkeypatch)
    assert code == 1 and "compaction aborted before committing (nothing was changed)" in out and "1 missing" in out, out
    assert hub.files(REPO) == before and len(hub.commits(REPO)) == n_commits
