"""The directory remote: same layout and guarantees as the Hub remote, on a shared disk."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from xlog.errors import StoreNotWritableError, XLogError
from xlog.ledger import Ledger
from xlog.remotes import RemoteError, open_remote, parse_spec
from xlog.remotes import layout as L
from xlog.remotes.directory import DirectoryRemote
from xlog.remotes.sync import pull, push
from xlog.store import LocalStore, QuarantineWarning


def _ids(root: Path) -> Counter:
    ids: Counter = Counter()
    for p in root.rglob("*.parquet"):
        assert not p.name.startswith("."), f"temporary file left behind: {p}"
        ids.update(pq.read_table(p).column("record_id").to_pylist())
    return ids


def test_spec_parsing(tmp_path):
    assert isinstance(open_remote(f"file://{tmp_path}"), DirectoryRemote)
    assert isinstance(open_remote(str(tmp_path)), DirectoryRemote)
    assert open_remote("./shared/store").kind == "directory"
    assert open_remote("lab/experience").kind == "hub"
    assert open_remote("hf://datasets/lab/experience").kind == "hub"
    with pytest.raises(RemoteError, match="only dataset repos"):
        open_remote("hf://lab/model")


def test_round_trip_and_idempotence(tmp_path, make_records):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "a")
    src.write_many(make_records(12, seed=1))
    res = push(open_remote(str(shared)), src, progress=False)
    assert res.uploaded_files == len(res.files) and (shared / "README.md").is_file()
    assert all(L.is_data_path(p.relative_to(shared).as_posix()) for p in shared.rglob("*.parquet"))
    before = sorted(shared.rglob("*"))
    assert push(open_remote(str(shared)), src, progress=False).new_records == 0
    Ledger(src.root).path.unlink()
    assert push(open_remote(str(shared)), src, progress=False).uploaded_files == 0
    assert sorted(shared.rglob("*")) == before
    got = pull(open_remote(str(shared)), LocalStore(tmp_path / "b"), progress=False)
    assert got.new_records == 12 and _ids(got.mirror / "data") == _ids(shared)


def test_concurrent_writers(tmp_path, make_records):
    shared = tmp_path / "shared"
    homes = []
    for i in range(4):
        s = LocalStore(tmp_path / f"h{i}")
        s.write_many(make_records(20, seed=50 + i))
        homes.append(s)
    procs = [subprocess.Popen([sys.executable, "-c", "from xlog.cli import main; main()", "push", "--remote",
                               f"file://{shared}", "-q"], env={**os.environ, "XLOG_HOME": str(homes[i % 4].root)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(8)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert _ids(shared) == Counter({r["record_id"]: 1 for h in homes for r in h.records()})


def test_push_that_dies_midway_is_resumed(tmp_path, make_records, monkeypatch):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "a")
    recs = make_records(30, seed=3)
    src.write_many(recs)
    real = DirectoryRemote._write_atomic
    calls = {"n": 0}

    def dying_write(self, rel, data):  # the disk fills up after the second file
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(28, "No space left on device")
        real(self, rel, data)
    monkeypatch.setattr(DirectoryRemote, "_write_atomic", dying_write)
    with pytest.raises(RemoteError, match="No space left"):
        push(open_remote(str(shared)), src, progress=False)
    key = open_remote(str(shared)).key
    assert Ledger(src.root).count(key) == 0  # nothing confirmed yet
    landed = _ids(shared)
    assert 0 < landed.total() < 30
    monkeypatch.setattr(DirectoryRemote, "_write_atomic", real)
    res = push(open_remote(str(shared)), src, progress=False)
    assert res.recovered_records == landed.total()
    assert _ids(shared) == Counter({r["record_id"]: 1 for r in recs})
    assert Ledger(src.root).count(key) == 30


def test_missing_directory_on_pull(tmp_path):
    with pytest.raises(RemoteError, match="does not exist"):
        pull(open_remote(str(tmp_path / "nowhere")), LocalStore(tmp_path / "b"), progress=False)


# ---- issue 12, items 2 and 3: private data and bounds are checked again at push and pull -------

def _plant(store: LocalStore, rec: dict) -> Path:
    """Put a record file in the store as a hand edit or an older writer would: not through write()."""
    from xlog import schema as S
    path = store.path_for(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(S.records_to_table([rec]), path)
    return path


def test_push_scrubs_a_leak_planted_after_capture(tmp_path, make_records):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "a")
    src.write_many(make_records(3, seed=7))
    [leaky] = make_records(1, seed=8, task_name="x@y.org", contributor="me@host.com",
                           error_message="cannot open ./secret/dir/file.txt")
    planted = _plant(src, leaky)
    before = planted.read_bytes()
    logged: list[str] = []
    res = push(open_remote(str(shared)), src, progress=False, log=logged.append)
    assert res.new_records == 4 and res.invalid == []
    rid = leaky["record_id"][:8]
    assert {s.split(": ")[1] for s in res.scrubbed} == {"task_name", "contributor", "error_message"}
    assert all(s.startswith(f"record {rid}: ") for s in res.scrubbed)
    assert any("task_name" in line and "scrubbed in the pushed copy" in line for line in logged)
    blob = b"".join(p.read_bytes() for p in shared.rglob("*.parquet"))
    for needle in (b"x@y.org", b"host.com", b"secret/dir"):
        assert needle not in blob, needle
    [pushed] = [r for p in shared.rglob("*.parquet") for r in pq.read_table(p).to_pylist()
                if r["record_id"] == leaky["record_id"]]
    assert pushed["task_name"] is None and pushed["contributor"] is None
    assert pushed["error_message"] == "cannot open <path>/file.txt"
    assert planted.read_bytes() == before  # the local file is never modified
    # What was published passes the receiving side's checks.
    got = pull(open_remote(str(shared)), LocalStore(tmp_path / "b"), progress=False)
    assert got.new_records == 4 and got.quarantined == []


def test_push_refuses_out_of_bounds_records(tmp_path, make_records):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "a")
    src.write_many(make_records(2, seed=9))
    bad = {"f1": dict(outcome_metrics={"eval_f1": 5.0}), "params": dict(model_n_params=9 * 10**18),
           "runtime": dict(outcome_total_runtime_s=-1.0), "name": dict(task_name="n" * 10_000_000)}
    planted = {k: make_records(1, seed=10 + i)[0] | v for i, (k, v) in enumerate(bad.items())}
    for rec in planted.values():
        _plant(src, rec)
    with pytest.warns(QuarantineWarning):
        res = push(open_remote(str(shared)), src, progress=False)
    assert res.new_records == 2 and len(res.invalid) == 4
    on_remote = _ids(shared)
    assert not any(r["record_id"] in on_remote for r in planted.values())
    reasons = "\n".join(p.read_text() for p in src.quarantine_dir.rglob("*.reason.txt"))
    for field in ("outcome_metrics[eval_f1]", "model_n_params", "outcome_total_runtime_s", "task_name"):
        assert f"{field}:" in reasons, field


def test_pull_quarantines_leaks_and_out_of_bounds_files(tmp_path, make_records):
    shared = tmp_path / "shared"
    good = make_records(3, seed=11)
    cases = {"private": (dict(task_name="x@y.org"), "task_name: looks like private data (e-mail address)"),
             "relative path": (dict(error_message="at ../x/y"), "error_message: looks like private data (path)"),
             "F1 = 5": (dict(outcome_metrics={"eval_f1": 5.0}), "outcome_metrics[eval_f1]: 5.0 is above the maximum 1"),
             "n_params": (dict(model_n_params=9 * 10**18), "model_n_params: 9000000000000000000 is above the maximum"),
             "long name": (dict(task_name="n" * 100_000), "task_name: 100000 characters, longer than the maximum 256")}
    files = {}
    for i, (case, (fields, why)) in enumerate(cases.items()):
        rec = make_records(1, seed=20 + i)[0] | fields
        data = L.encode([rec], 1)  # written by someone else's (older, or hostile) client
        path = L.data_path(1, "2025-01", data)
        (shared / path).parent.mkdir(parents=True, exist_ok=True)
        (shared / path).write_bytes(data)
        files[path] = (rec["record_id"][:8], why)
    data = L.encode(good, 1)
    (shared / L.data_path(1, "2025-02", data)).parent.mkdir(parents=True)
    (shared / L.data_path(1, "2025-02", data)).write_bytes(data)
    store = LocalStore(tmp_path / "b")
    with pytest.warns(QuarantineWarning):
        res = pull(open_remote(str(shared)), store, progress=False)
    assert res.new_records == 3 and res.new_files == 1
    assert {p for p, _ in res.quarantined} == set(files)
    for path, reason in res.quarantined:
        rid, why = files[path]
        assert f"row 0 (record {rid}): {why}" in reason, reason
        kept = next(store.quarantine_dir.rglob(Path(path).name + ".reason.txt")).read_text()
        assert path in kept and why in kept  # the file and the field, kept with the file
    assert [p.relative_to(res.mirror).as_posix() for p in res.mirror.rglob("*.parquet")] == \
        [L.data_path(1, "2025-02", data)]  # the mirror holds only the good file
    assert pull(open_remote(str(shared)), store, progress=False).new_files == 0  # remembered, not re-fetched


# ---- issue 12, items 6, 8, 9 and 10 -------------------------------------------------------------

def _cli(home: Path, *args: str, cwd: Path | None = None, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from xlog.cli import main; main()", *args], cwd=cwd,
                          env={**os.environ, "XLOG_HOME": str(home)}, capture_output=True, text=True, timeout=180,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def test_remote_spec_syntax(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:5999")
    hub = {"lab/x", "hf://datasets/lab/x", "hf://datasets/lab/x/", "hf://datasets/lab/x@main",
           "https://huggingface.co/datasets/lab/x", "https://huggingface.co/datasets/lab/x/",
           "https://huggingface.co/datasets/lab/x/tree/main", "https://huggingface.co/datasets/lab/x/tree/main/data",
           "https://huggingface.co/datasets/lab/x/blob/main/README.md", "https://hf.co/datasets/lab/x/viewer",
           "huggingface.co/datasets/lab/x", "http://127.0.0.1:5999/datasets/lab/x"}
    for spec in hub:
        assert parse_spec(spec) == ("hub", "lab/x"), spec
    for spec in ("./a/b/c", "/abs/path", "~/x", "../x", "dir:a/b/c", "file:///abs/path", ".hidden/x"):
        assert parse_spec(spec)[0] == "directory", spec
    assert parse_spec("dir:lab/x") == ("directory", "lab/x")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    assert parse_spec("a/b/c") == ("directory", "a/b/c")  # an existing folder that cannot be a Hub id
    refused = {"x/y/z": "neither a Hub dataset id", "name": "neither a Hub dataset id",
               "a/b": "ambiguous",  # a Hub id, and a folder here
               "hf://lab/model": "only dataset repos", "https://huggingface.co/lab/model": "a model repo",
               "https://huggingface.co/spaces/lab/x": "a Space", "hf://datasets/lab/x/data": "points inside a repo",
               "https://huggingface.co/datasets/lab/x/tree/dev": "main branch only",
               "https://example.com/datasets/lab/x": "not a Hub dataset URL", "dir:": "needs a path"}
    for spec, why in refused.items():
        with pytest.raises(RemoteError, match=why):
            parse_spec(spec)
    with pytest.raises(RemoteError) as err:
        parse_spec("x/y/z")
    assert "./x/y/z" in str(err.value) and "dir:PATH" in str(err.value) and "hf://datasets/OWNER/NAME" in str(err.value)
    with pytest.raises(RemoteError, match=r"write \./a/b or dir:a/b for the folder, hf://datasets/a/b"):
        parse_spec("a/b")


def test_ambiguous_remote_is_refused_not_created(tmp_path, make_records):
    """The probe: --remote a/b/c "pushed" into ./a/b/c (and a URL into ./https:/...)."""
    home = tmp_path / "home"
    LocalStore(home).write_many(make_records(2, seed=60))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = _cli(home, "push", "--remote", "a/b/c", cwd=cwd)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "'a/b/c' is neither a Hub dataset id" in out.stderr and "./a/b/c" in out.stderr
    assert list(cwd.iterdir()) == []
    out = _cli(home, "push", "--remote", "https://example.com/datasets/lab/x", cwd=cwd)
    assert out.returncode == 1 and "not a Hub dataset URL" in out.stderr and list(cwd.iterdir()) == []
    out = _cli(home, "push", "--remote", "dir:a/b/c", "-q", cwd=cwd)  # said explicitly: a directory
    assert out.returncode == 0, out.stderr
    assert _ids(cwd / "a" / "b" / "c").total() == 2


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                      (0o077, 0o600, 0o700)])
def test_directory_remote_files_are_readable_as_the_umask_allows(tmp_path, make_records, umask, file_mode, dir_mode):
    """The probe: files on a shared-disk remote were 0600 (mkstemp), so nobody else could pull."""
    home = tmp_path / "home"
    LocalStore(home).write_many(make_records(6, seed=61))
    shared = tmp_path / "shared"
    out = _cli(home, "push", "--remote", str(shared), "-q", umask=umask)
    assert out.returncode == 0, out.stderr
    files = [p for p in shared.rglob("*") if p.is_file()]
    assert len(files) >= 2 and any(p.name == "README.md" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(file_mode)}
    assert {oct(p.stat().st_mode & 0o777) for p in [shared, *shared.rglob("*")] if p.is_dir()} == {oct(dir_mode)}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_another_user_can_read_a_pushed_file(make_records):
    """Read by a real other user (nobody, through setpriv): with mode 0600 this was 'Permission denied'."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="xlog-shared-", dir="/tmp"))
    try:
        base.chmod(0o755)  # the shared disk's root, as an administrator sets it up
        home = base / "home"
        LocalStore(home).write_many(make_records(2, seed=62))
        out = _cli(home, "push", "--remote", str(base / "shared"), "-q", umask=0o022)
        assert out.returncode == 0, out.stderr
        f = next((base / "shared").rglob("*.parquet"))
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(f)],
                           capture_output=True)
        assert r.returncode == 0 and r.stdout == f.read_bytes(), r.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _read_only_homes(tmp_path: Path, make_records) -> list[tuple[str, Path]]:
    """Ways a store root cannot be written, as root (permission bits do not stop root): a file where
    the home's folder should be, a folder where the ledger file should be."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ledger_dir = tmp_path / "ledger-is-a-folder"
    LocalStore(ledger_dir).write_many(make_records(2, seed=63))
    (ledger_dir / "ledger.sqlite").mkdir()
    return [("home below a file", blocker / "home"), ("ledger path is a folder", ledger_dir)]


def test_unwritable_home_is_one_clear_line(tmp_path, make_records):
    shared = tmp_path / "shared"
    seed = LocalStore(tmp_path / "seed")
    seed.write_many(make_records(3, seed=64))
    push(open_remote(str(shared)), seed, progress=False)
    for what, home in _read_only_homes(tmp_path, make_records):
        commands = [["push", "--remote", str(shared)]]
        if what == "home below a file":  # pull does not use the ledger: a folder there does not stop it
            commands.append(["pull", "--remote", str(shared)])
        for cmd in commands:
            out = _cli(home, *cmd)
            assert out.returncode == 1, (what, cmd, out.stdout, out.stderr)
            assert "Traceback" not in out.stderr, (what, cmd, out.stderr)
            errors = [x for x in out.stderr.splitlines() if x.startswith("Error: ")]
            assert len(errors) == 1 and errors[0].startswith("Error: cannot write "), (what, cmd, out.stderr)
            assert "XLOG_HOME" in errors[0] and "writable" in errors[0], (what, cmd, errors)
    with pytest.raises(StoreNotWritableError):  # the library raises the xlog.errors class the CLI catches
        push(open_remote(str(shared)), LocalStore(tmp_path / "a-file" / "home"), progress=False)
    assert issubclass(StoreNotWritableError, XLogError) and issubclass(RemoteError, XLogError)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"), reason="needs root and chattr")
def test_immutable_home_is_one_clear_line(tmp_path, make_records):
    """A really read-only home: `chattr -R +i` stops even root from writing (skipped where the file
    system or the container does not allow it)."""
    shared = tmp_path / "shared"
    home = LocalStore(tmp_path / "home")
    home.write_many(make_records(3, seed=65))
    push(open_remote(str(shared)), home, progress=False)  # ledger and lock files exist
    LocalStore(tmp_path / "seed").write_many(make_records(2, seed=66))
    push(open_remote(str(shared)), LocalStore(tmp_path / "seed"), progress=False)
    home.write_many(make_records(1, seed=67))
    if subprocess.run(["chattr", "-R", "+i", str(home.root)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        for cmd in (["push", "--remote", str(shared)], ["pull", "--remote", str(shared)]):
            out = _cli(home.root, *cmd)
            assert out.returncode == 1 and "Traceback" not in out.stderr, (cmd, out.stderr)
            errors = [x for x in out.stderr.splitlines() if x.startswith("Error: ")]
            assert len(errors) == 1 and errors[0].startswith("Error: cannot write "), out.stderr
    finally:
        subprocess.run(["chattr", "-R", "-i", str(home.root)], check=True)


def test_pull_reports_each_quarantined_file_once(tmp_path, make_records):
    shared = tmp_path / "shared"
    push(open_remote(str(shared)), _store_with(tmp_path / "a", make_records(3, seed=68)), progress=False)
    bad = make_records(1, seed=69)[0] | {"outcome_metrics": {"eval_f1": 5.0}}
    data = L.encode([bad], 1)
    (shared / L.data_path(1, "2025-03", data)).parent.mkdir(parents=True, exist_ok=True)
    (shared / L.data_path(1, "2025-03", data)).write_bytes(data)
    out = _cli(tmp_path / "b", "pull", "--remote", str(shared))
    assert out.returncode == 0, out.stderr
    assert "QuarantineWarning" not in out.stderr and "store.quarantine(" not in out.stderr, out.stderr
    [line] = [x for x in out.stderr.splitlines() if "quarantined" in x]
    assert line.startswith("quarantined data/v1/2025-03/") and "outcome_metrics[eval_f1]" in line
    assert "1 quarantined (kept in " in out.stdout and "(3 records)" in out.stdout, out.stdout


def _store_with(root: Path, records: list[dict]) -> LocalStore:
    store = LocalStore(root)
    store.write_many(records)
    return store
