"""A community-sized shared store: many contributors pushing small batches, a maintainer who
reviews, merges and compacts, a fresh reader who pulls. Real HTTP to the local Hub-compatible
server (tests/hubserver.py, run in its own process), the unmodified huggingface_hub client.

What runs (defaults: 30 contributors x 8 weekly pushes of 3 records, under 3 minutes on 2 busy cores;
the committed results are from ``--contributors 100 --pushes 10``):

1. every push is one ``create_commit`` of the files an ``xlog push`` writes (``layout.plan_files``:
   one content-addressed file per month partition it touches), through ``HubRemote.commit``,
   contributors in random order week by week (the bulk: as if they had write access, so that
   every push is one commit on main, the worst case for the Hub's file, folder and commit caps);
2. the pull-request path on a sample: ``--pr-contributors`` contributors with read-only tokens
   push twice each (``xlog push`` through ``sync.push``: the first push opens a PR, the second
   appends), the maintainer runs ``xlog review`` and ``xlog merge`` on each;
3. a fresh reader pulls everything (``xsearch pull`` in a child process: wall time and peak RSS);
4. ``xlog compact`` (dry run, then ``--apply``), and a second fresh reader pulls the compacted store.

It reports files and folders on the remote before and after compaction, the largest folder,
commits, push / review / merge / pull / compact times and the reader's peak memory, and states
(as arithmetic, not measurement) where 1,000 contributors x 50 pushes, and 10x and 100x that,
land against the Hub's limits. Prints a table and writes benchmarks/results/community.json.

    python benchmarks/community.py [--contributors 30] [--pushes 8] [--records 3] [--pr-contributors 5]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from xlog.remotes import layout as L  # noqa: E402

REPO = "community/experience"
HUB_FILES_PER_REPO = 100_000
HUB_ENTRIES_PER_FOLDER = 10_000
HUB_FILES_PER_COMMIT = 100  # larger commits risk timing out (Hub docs)
HUB_COMMITS_COMFORTABLE = 5_000  # "a few thousand": the repo slows down beyond


def _server(tokens: dict) -> tuple[subprocess.Popen, str]:
    code = ("import sys, json, time; sys.path.insert(0, %r); from hubserver import HubServer; "
            "t = {k: (tuple(v) if isinstance(v, list) else v) for k, v in json.loads(sys.argv[1]).items()}; "
            "s = HubServer(tokens=t).start(); print(s.url, flush=True); time.sleep(86400)") % str(ROOT / "tests")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(tokens)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def _records(rng: random.Random, n: int, when: datetime, who: str) -> list[dict]:
    from conftest import synthetic_record
    out = []
    for _ in range(n):
        r = synthetic_record(rng, contributor=who)
        created = when - timedelta(hours=rng.uniform(0, 24 * 6))  # runs of the week before the push
        out.append(r | {"created_at": created, "ended_at": created + timedelta(seconds=r["outcome_total_runtime_s"])})
    return out


def _shape(api, revision: str = "main") -> dict:
    from huggingface_hub.hf_api import RepoFile
    files = [f.path for f in api.list_repo_tree(REPO, repo_type="dataset", recursive=True, revision=revision)
             if isinstance(f, RepoFile)]
    data = [p for p in files if L.is_data_path(p)]
    folders = Counter(p.rsplit("/", 1)[0] for p in data)
    commits = len(api.list_repo_commits(REPO, repo_type="dataset"))
    return {"files": len(files), "data_files": len(data), "folders": len(folders),
            "max_entries_per_folder": max(folders.values(), default=0), "commits": commits}


def _fresh_pull(url: str, token: str, home: Path) -> dict:
    """``xsearch pull`` into an empty home in a child process: wall time and the child's peak RSS."""
    env = {**os.environ, "HF_ENDPOINT": url, "HF_TOKEN": token, "XLOG_HOME": str(home),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "from xsearch.cli import main; main()", "pull", "--remote", REPO,
                             "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pull failed: {out}")
    from xsearch import db
    n = db.query("SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM experiences", home).to_pylist()[0]
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "records": n["n"],
            "distinct_records": n["d"], "output": out.strip().splitlines()[-1][:300]}


def _cli(args: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "from xlog.cli import main; main()", *args], env=env,
                       capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"xlog {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return time.perf_counter() - t0, r.stdout + r.stderr


def project(contributors: int, pushes: int, records: int, files_per_push: float, weeks: int | None = None,
            rows_per_file: int = 100_000, bytes_per_row: float = 90.0, file_overhead_bytes: float = 49_000.0,
            max_file_bytes: int = 32 << 20) -> dict:
    """Arithmetic (not a measurement): where a store of this size lands against the Hub's caps,
    before and after compaction, with one folder per (schema version, month). Each contributor
    pushes once a week (``weeks`` = ``pushes``), each push adds ``files_per_push`` files (measured)."""
    weeks = weeks or pushes
    total_pushes = contributors * pushes
    months = max(1, math.ceil(weeks * 7 / 30.4))
    files_raw = round(total_pushes * files_per_push)
    recs = total_pushes * records
    per_month = recs / months
    files_per_month_compacted = max(1, math.ceil(per_month / rows_per_file),
                                    math.ceil((file_overhead_bytes + per_month * bytes_per_row) / max_file_bytes))
    files_per_day = contributors * files_per_push / 7
    commits_per_day = contributors / 7
    return {"contributors": contributors, "pushes_each": pushes, "records": recs, "months": months,
            "commits_if_every_push_commits": total_pushes,
            "files_without_compaction": files_raw,
            "files_per_month_folder_without_compaction": round(files_per_day * 30.4),
            "days_to_10k_in_a_folder_without_compaction": round(HUB_ENTRIES_PER_FOLDER / files_per_day, 1),
            "files_per_month_after_compaction": files_per_month_compacted,
            "files_after_compaction": files_per_month_compacted * months,
            "days_to_5k_commits": round(HUB_COMMITS_COMFORTABLE / commits_per_day, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contributors", type=int, default=30)
    ap.add_argument("--pushes", type=int, default=8, help="pushes per contributor (one per simulated week)")
    ap.add_argument("--records", type=int, default=3, help="records per push")
    ap.add_argument("--pr-contributors", type=int, default=5, help="contributors who push through pull requests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "community.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    rng = random.Random(args.seed)
    users = [f"user{i:04d}" for i in range(args.contributors)]
    prs = [f"pr{i:03d}" for i in range(args.pr_contributors)]
    # The bulk's pushes go in with the maintainer's token (one commit on main per push: the worst
    # case for the caps); the PR sample has read-only tokens.
    tokens = {"hf_maint": "community", **{f"hf_{u}": [u, "read"] for u in prs}}
    server, url = _server(tokens)
    os.environ["HF_ENDPOINT"] = url
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)", "python": platform.python_version(),
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    try:
        from huggingface_hub import HfApi
        from xlog.remotes.hub import HubRemote
        api = HfApi(endpoint=url, token="hf_maint")
        api.create_repo(REPO, repo_type="dataset")
        maint = HubRemote(REPO, endpoint=url, token="hf_maint")
        start = datetime(2025, 1, 6, 12, tzinfo=timezone.utc)

        # 1. The bulk: N contributors x M pushes, week by week, in random order.
        push_times, partitions_touched = [], []
        t0 = time.perf_counter()
        for week in range(args.pushes):
            order = users[:]
            rng.shuffle(order)
            for i, u in enumerate(order):
                when = start + timedelta(weeks=week, minutes=i)
                plan = L.plan_files(_records(rng, args.records, when, u))
                files = {p: data for p, (data, _) in plan.items()}
                if not push_times:
                    files[L.CARD_PATH] = L.card(REPO).encode()  # as the first xlog push does
                t = time.perf_counter()
                maint.commit(files, f"xlog push: {args.records} record(s) in {len(files)} file(s)")
                push_times.append(time.perf_counter() - t)
                partitions_touched.append(len(files))
        bulk_s = time.perf_counter() - t0
        push_times.sort()
        result["bulk_pushes"] = {"pushes": len(push_times), "records": len(push_times) * args.records,
                                 "wall_s": round(bulk_s, 1),
                                 "push_median_ms": round(1000 * push_times[len(push_times) // 2], 1),
                                 "push_p95_ms": round(1000 * push_times[int(0.95 * len(push_times))], 1),
                                 "files_per_push": round(sum(partitions_touched) / len(partitions_touched), 3)}

        # 2. The pull-request path: read-only contributors push twice through xlog, the maintainer reviews and merges.
        from xlog.remotes.sync import push
        from xlog.store import LocalStore
        pr_stats = {"push_s": [], "review_s": None, "merge_s": [], "prs": 0, "passed": 0}
        with tempfile.TemporaryDirectory() as tmp:
            for j, u in enumerate(prs):
                home = LocalStore(Path(tmp) / u)
                for k in range(2):
                    when = start + timedelta(weeks=args.pushes - 1, hours=j, minutes=k)
                    home.write_many(_records(rng, args.records, when, u))
                    remote = HubRemote(REPO, endpoint=url, token=f"hf_{u}")
                    t = time.perf_counter()
                    push(remote, home, progress=False)
                    pr_stats["push_s"].append(round(time.perf_counter() - t, 3))
                    assert remote.last_pr is not None and remote.last_pr_opened == (k == 0)
            env = {**os.environ, "HF_ENDPOINT": url, "HF_TOKEN": "hf_maint", "XLOG_HOME": str(Path(tmp) / "maint"),
                   "PYTHONPATH": str(ROOT)}
            pr_stats["review_s"], out = _cli(["review", REPO], env)
            pr_stats["prs"] = out.count("\nPR #") + out.startswith("PR #")
            pr_stats["passed"] = out.count(": PASS:")
            for pr in sorted(maint.open_prs(), key=lambda p: p.num):
                dt, out = _cli(["merge", REPO, str(pr.num)], env)
                pr_stats["merge_s"].append(round(dt, 2))
                if "merged PR" not in out:
                    raise SystemExit(f"merge of PR #{pr.num} failed: {out}")
            pr_stats["review_s"] = round(pr_stats["review_s"], 2)
            result["pull_requests"] = pr_stats

            # 3. A fresh reader, 4. compaction, a second fresh reader.
            result["before_compaction"] = _shape(api)
            result["pull_before"] = _fresh_pull(url, "hf_maint", Path(tmp) / "reader1")
            dry_s, dry_out = _cli(["compact", REPO], env)
            apply_s, apply_out = _cli(["compact", REPO, "--apply"], env)
            if not apply_out.startswith("compacted") and "\ncompacted" not in apply_out:
                raise SystemExit(f"xlog compact --apply failed: {apply_out}")
            result["compact"] = {"dry_run_s": round(dry_s, 2), "apply_s": round(apply_s, 2),
                                 "output": apply_out.strip().splitlines()}
            result["after_compaction"] = _shape(api)
            result["pull_after"] = _fresh_pull(url, "hf_maint", Path(tmp) / "reader2")
            result["compacted_again_is_noop"] = "nothing to compact" in _cli(["compact", REPO], env)[1]
    finally:
        server.terminate()
        server.wait()

    measured = result["before_compaction"]
    months_per_push = result["bulk_pushes"]["files_per_push"]
    result["projection_note"] = (
        "Arithmetic from the layout (one folder per schema version and month, content-addressed files, "
        "compaction to files of <=100k rows and <=32 MiB) and this run's files per push; not measured.")
    result["projection"] = {
        label: project(c, p, args.records, months_per_push)
        for label, c, p in (("measured_size", args.contributors, args.pushes), ("1000x50", 1000, 50),
                            ("10x_1000x50", 10_000, 50), ("100x_1000x50", 100_000, 50))}
    _print(result, measured)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


def _print(r: dict, before: dict) -> None:
    after, b = r["after_compaction"], r["bulk_pushes"]
    print(f"\n{r['args']['contributors']} contributors x {r['args']['pushes']} pushes x {r['args']['records']} records "
          f"(measured, local Hub server over HTTP)")
    print(f"  pushes: {b['pushes']} in {b['wall_s']} s (median {b['push_median_ms']} ms, p95 {b['push_p95_ms']} ms), "
          f"{b['files_per_push']} file(s) per push")
    pr = r["pull_requests"]
    print(f"  pull requests: {pr['prs']} reviewed in {pr['review_s']} s ({pr['passed']} pass), merged in "
          f"{sum(pr['merge_s']):.1f} s; PR pushes {min(pr['push_s'], default=0):.2f}-"
          f"{max(pr['push_s'], default=0):.2f} s")
    print(f"  {'':24}{'files':>8}{'folders':>9}{'max/folder':>12}{'commits':>9}")
    for label, s in (("before compaction", before), ("after compaction", after)):
        print(f"  {label:24}{s['data_files']:>8}{s['folders']:>9}{s['max_entries_per_folder']:>12}{s['commits']:>9}")
    for label in ("pull_before", "pull_after"):
        p = r[label]
        print(f"  fresh reader {label[5:]:>7} compaction: {p['wall_s']} s, peak RSS {p['peak_rss_mb']} MB, "
              f"{p['records']} rows ({p['distinct_records']} distinct)")
    print(f"  xlog compact: dry run {r['compact']['dry_run_s']} s, --apply {r['compact']['apply_s']} s")
    print("\nprojection (arithmetic, not measured):")
    print(f"  {'':14}{'records':>10}{'commits':>10}{'files raw':>11}{'/month folder':>15}{'days->10k':>11}"
          f"{'compacted':>11}{'days->5k commits':>18}")
    for label, p in r["projection"].items():
        print(f"  {label:14}{p['records']:>10}{p['commits_if_every_push_commits']:>10}"
              f"{p['files_without_compaction']:>11}{p['files_per_month_folder_without_compaction']:>15}"
              f"{p['days_to_10k_in_a_folder_without_compaction']:>11}"
              f"{p['files_after_compaction']:>11}{p['days_to_5k_commits']:>18}")


if __name__ == "__main__":
    main()
