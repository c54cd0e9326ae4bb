"""A search run by the real CLI in its own process, killed with SIGKILL once it finished some
candidates, then resumed in this process: the checks every executor's resume must pass."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from xlog.store import LocalStore
from xsearch.runner import own_records, run_search
from xsearch.space import SearchSpace, config_key

REPO = Path(__file__).resolve().parent.parent
SMS = REPO / "examples" / "data" / "sms_spam_600.parquet"
TINY = Path(__file__).parent / "data" / "tiny_space.yaml"


def kill_after(home: Path, out: Path, args: list[str], finished: int = 2, settle_s: float = 0.0,
               deadline_s: float = 120.0) -> dict[str, Any]:
    """Start ``xsearch run ARGS`` on the shipped data and the tiny space, SIGKILL it once its
    manifest holds ``finished`` finished candidates (plus ``settle_s``); its manifest then."""
    env = dict(os.environ, XLOG_HOME=str(home),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "xsearch.cli", "run", "--data", str(SMS), "--space", str(TINY),
           "--out", str(out), "--no-energy", "--plain", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    man = None
    try:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            ms = list((home / "searches").glob("*.json")) if (home / "searches").exists() else []
            if ms:
                try:
                    man = json.loads(ms[0].read_text())
                except ValueError:
                    man = None
                if man and len(man.get("walls", {})) >= finished:
                    time.sleep(settle_s)
                    break
            time.sleep(0.2)
        assert man and len(man["walls"]) >= finished, f"the search did not finish {finished} candidates"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(3)  # candidates in flight notice the dead search and record themselves as interrupted
    return man


def resume_and_check(home: Path, out: Path, man: dict[str, Any], more: int = 2):
    """Resume the killed search for ``more`` new evaluations; checks that nothing finished ran
    again, nothing was lost or written twice, and the budget used before still counts."""
    sid = man["search_id"]
    store = LocalStore(home)
    finished_before = {r["record_id"] for r in own_records(store, sid) if r["status"] != "interrupted"}
    assert len(finished_before) >= 2
    result, _ = run_search(resume=sid, store_root=str(home), out_dir=str(out), max_evals=len(finished_before) + more)
    after = own_records(store, sid)
    ids = [r["record_id"] for r in after]
    assert len(ids) == len(set(ids)), "a record was written twice"
    assert finished_before <= set(ids), "a finished record was lost"
    space = SearchSpace.from_dict(man["space"])
    keys = [config_key(space.config_from_record(r)) for r in after if r["status"] != "interrupted"]
    assert len(keys) == len(set(keys)), "a finished candidate was trained again"
    journalled = {e.outcome.record_id for e in result.evaluations if e.outcome.from_journal}
    assert journalled == finished_before
    assert len(result.evaluations) > len(finished_before)  # and it went on with new candidates
    assert result.used_s >= float(man["used_s"])  # the budget used before the kill still counts
    return result
