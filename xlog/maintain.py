"""Maintaining a shared store: what a reader would accept from each file (``StoreIndex``), reviewing
pull requests against it (``review``) and merging the ones that pass (``merge``).

The maintainer's checks are the reader's (``xlog.intake.check_file``: size, content hash, row and
byte limits, schema, bounds, string lengths, privacy scan, duplicate and conflicting ids) plus the
layout: a PR may only add data files under ``data/v<version>/<YYYY-MM>/`` whose rows belong to
that partition; it may not delete files, nor change the dataset card or anything else.

A PR's records are checked against main's: a record id already on main with other content is a
conflict (the first-committed copy stands, so the PR fails); with the same content it is the same
record, counted as already there. What a reader accepts from each main file is cached under
``$XLOG_HOME/maintain/<remote>/index.json`` by path: names are content hashes, so a path's verdict
never changes, and a second review downloads only the files that are new on main.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyarrow.parquet as pq

from .errors import XLogError
from .intake import FileCheck, Limits, check_file
from .remotes import Remote, RemoteError
from .remotes import layout as L

__all__ = ["MaintainError", "FileVerdict", "StoreIndex", "Review", "review", "merge", "check_data_file"]

INDEX_VERSION = 1
MAINTAIN_DIR = "maintain"


class MaintainError(XLogError):
    """A review, merge or compaction cannot go on; the message says why and what to do."""


@dataclass
class FileVerdict:
    """What a reader accepts from one data file, without its rows: (record id, content hash) per
    accepted row, the refused rows and the file-level problems (layout included)."""
    path: str
    size: int = 0
    n_rows: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (record id or '?', reason)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.refused

    def summary(self, n: int = 3) -> str:
        if self.problems:
            return "; ".join(self.problems[:n])
        more = f" (+{len(self.refused) - n} more)" if len(self.refused) > n else ""
        reasons = "; ".join(r for _, r in self.refused[:n])
        return f"{len(self.refused)} of {self.n_rows} row(s) refused: {reasons}{more}"

    def to_json(self) -> dict:
        return {"size": self.size, "n_rows": self.n_rows, "pairs": self.pairs, "refused": self.refused,
                "problems": self.problems}

    @classmethod
    def from_json(cls, path: str, d: dict) -> "FileVerdict":
        return cls(path, d["size"], d["n_rows"], [tuple(p) for p in d["pairs"]], [tuple(r) for r in d["refused"]],
                   list(d["problems"]))


def _layout_problems(local: Path, remote_path: str, check: FileCheck) -> list[str]:
    """Rows that do not belong in the partition their file is in (the readers' layout)."""
    if not L.is_data_path(remote_path):
        return [f"{remote_path} is outside the data layout (data/v<version>/<YYYY-MM>/<sha256[:32]>.parquet)"]
    if check.problems:
        return []
    folder = remote_path.rsplit("/", 1)[0] + "/"
    table = pq.read_table(local, columns=["schema_version", "created_at"])
    wrong = []
    for i, (v, created) in enumerate(zip(table.column("schema_version").to_pylist(),
                                         table.column("created_at").to_pylist())):
        if v is None or created is None:
            continue  # the schema check refuses these rows already
        if L.partition_dir(int(v), created) != folder:
            wrong.append(i)
    if not wrong:
        return []
    return [f"{len(wrong)} row(s) (first: row {wrong[0]}) belong in another partition than {folder}: "
            "records are filed by schema version and month of created_at"]


def check_data_file(local: Path, remote_path: str, size: int, limits: Limits) -> FileVerdict:
    """Check a downloaded file on its own, as a reader would (no other file consulted)."""
    check = check_file(local, remote_path, limits=limits)
    verdict = FileVerdict(remote_path, size, check.n_rows,
                          [(e["record_id"], e["content_hash"]) for e in check.accepted],
                          list(check.quarantined), list(check.problems))
    try:
        verdict.problems.extend(_layout_problems(local, remote_path, check))
    except Exception as exc:  # an unreadable file was reported by check_file already
        if not check.problems:
            verdict.problems.append(f"cannot read created_at/schema_version ({type(exc).__name__}: {exc})")
    return verdict


class StoreIndex:
    """What a reader accepts from each data file on a remote's main branch, cached by path."""

    def __init__(self, remote: Remote, home: Path, limits: Limits = Limits()):
        self.remote, self.limits = remote, limits
        self.path = Path(home) / MAINTAIN_DIR / remote.slug / "index.json"
        self.files: dict[str, FileVerdict] = {}
        self.origins: dict[str, dict] = {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if raw.get("version") == INDEX_VERSION and raw.get("limits") == _limits_key(limits):
                self.files = {p: FileVerdict.from_json(p, d) for p, d in raw["files"].items()}
                self.origins = raw.get("origins", {})
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache, or an unusable one: everything is checked again

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": INDEX_VERSION, "limits": _limits_key(self.limits),
                                   "files": {p: v.to_json() for p, v in self.files.items()},
                                   "origins": self.origins}), encoding="utf-8")
        os.replace(tmp, self.path)

    def update(self, listing: dict[str, int], keep: Path | None = None, only: Iterable[str] | None = None,
               log: Callable[[str], None] = lambda s: None) -> None:
        """Check the data files of ``listing`` that are not indexed yet (``only``: just these), and
        forget files no longer listed. With ``keep``, downloaded files stay there (same relative
        paths) for the caller, and files indexed before are downloaded too if ``only`` names them."""
        data = {p: n for p, n in listing.items() if p.startswith(L.DATA_DIR + "/")}
        self.files = {p: v for p, v in self.files.items() if p in data}
        self.origins = {p: o for p, o in self.origins.items() if p in data}
        wanted = set(data) if only is None else set(only) & set(data)
        todo = sorted(p for p in wanted if p not in self.files or keep is not None)
        if len(todo) >= 20:
            log(f"checking {len(todo)} file(s) of {self.remote.key}")
        with tempfile.TemporaryDirectory() as tmp:
            for i, p in enumerate(todo):
                dest = (keep / p) if keep is not None else Path(tmp) / "file.parquet"
                dest.parent.mkdir(parents=True, exist_ok=True)
                _download(self.remote, p, dest, data[p], self.limits)
                if p not in self.files:
                    self.files[p] = check_data_file(dest, p, data[p], self.limits)
                if keep is None:
                    dest.unlink(missing_ok=True)
                if i % 200 == 199:
                    self.save()  # an interrupted run keeps what it checked
        missing = sorted(p for p in data if p not in self.origins)
        if missing:
            found = self.remote.file_origins(missing)
            for p in missing:
                self.origins[p] = found.get(p, {})
        self.save()

    def ordered(self) -> list[str]:
        """Indexed paths, first committed first (files without a known origin last, by path)."""
        return sorted(self.files, key=lambda p: (self.origins.get(p, {}).get("date") or "~", p))

    def accepted(self) -> tuple[dict[str, str], dict[str, str], set[str]]:
        """(record id -> content hash, record id -> file) of what a reader keeps, first-committed copy
        first, and the ids that come with more than one content (conflicts) or were refused anywhere."""
        seen: dict[str, str] = {}
        where: dict[str, str] = {}
        troubled: set[str] = set()
        for p in self.ordered():
            v = self.files[p]
            troubled.update(rid for rid, _ in v.refused if rid != "?")
            if v.problems:
                continue
            for rid, h in v.pairs:
                if rid in seen and seen[rid] != h:
                    troubled.add(rid)
                    continue
                seen.setdefault(rid, h)
                where.setdefault(rid, p)
        return seen, where, troubled


def _download(remote: Remote, path: str, dest: Path, size: int, limits: Limits, revision: str | None = None) -> None:
    """Download one file; small files of a Hub remote in one request. A file larger than a reader
    accepts is not downloaded at all: an empty stand-in lets the size check name it."""
    if size > limits.max_bytes:
        with open(dest, "wb") as f:
            f.truncate(size)  # sparse: the checker refuses it on its size without reading it
        return
    read = getattr(remote, "read_bytes", None)
    if read is not None and size <= (8 << 20):
        dest.write_bytes(read(path, revision) if revision else read(path))
    elif revision:
        remote.fetch(path, dest, revision=revision)  # type: ignore[call-arg]
    else:
        remote.fetch(path, dest)


def _limits_key(limits: Limits) -> list:
    """What the cached verdicts depend on: the limits, and the content hash's definition (a probe
    record's hash changes when the canonical form does)."""
    from .intake import content_hash
    probe = content_hash({"record_id": "probe", "schema_version": 1, "outcome_primary_value": 0.5})
    return [limits.max_rows, limits.max_bytes, limits.max_uncompressed_bytes, limits.max_string_chars, probe]


# ---- review and merge ---------------------------------------------------------------------------
@dataclass
class Review:
    """The verdict on one pull request."""
    num: int
    title: str
    author: str
    url: str
    head: str | None = None  # the PR's head commit when it was reviewed
    files: list[str] = field(default_factory=list)  # data files the PR adds
    rows: int = 0
    new_records: int = 0
    known_records: int = 0  # records already on main (same id and content) or earlier in the PR
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "pass" if self.ok else "fail"

    def text(self) -> str:
        head = (f"PR #{self.num} by {self.author}: {self.verdict.upper()}: {len(self.files)} data file(s), "
                f"{self.rows} row(s), {self.new_records} new record(s)"
                + (f", {self.known_records} already on the store" if self.known_records else "") + f" ({self.url})")
        return "\n".join([head] + [f"  - {p}" for p in self.problems])

    def markdown(self) -> str:
        lines = [f"**xlog review: {self.verdict}**: {len(self.files)} data file(s), {self.rows} row(s), "
                 f"{self.new_records} new record(s)" + (f", {self.known_records} already on the store"
                                                       if self.known_records else "") + "."]
        if self.problems:
            lines += ["", "Problems (a maintainer merges only a PR without any):"]
            lines += [f"- {p}" for p in self.problems[:50]]
            if len(self.problems) > 50:
                lines.append(f"- ... and {len(self.problems) - 50} more")
        lines += ["", f"Checked at {(self.head or '')[:12]} with the reader's checks (schema, bounds, content hash, "
                      "privacy, record ids, row and size limits, layout)."]
        return "\n".join(lines)


_DIFF_PATH = re.compile(r"^diff --git a/(.+?) b/(.+)$", re.M)


def _hub(remote: Remote):
    from .remotes.hub import HubRemote
    if not isinstance(remote, HubRemote):
        raise MaintainError(f"{remote.key} has no pull requests: reviewing and merging are for Hub datasets "
                            "(a directory remote is written directly)")
    return remote


def review_one(remote: Remote, num: int, index: StoreIndex, main_listing: dict[str, int],
               limits: Limits = Limits()) -> Review:
    """Check PR ``num``'s changes as a reader would, against main's records (``index``)."""
    hub = _hub(remote)
    pr = hub.pr_info(num)
    rev = Review(pr.num, pr.title, pr.author, pr.url)
    if pr.status not in ("open", "draft"):
        rev.problems.append(f"the pull request is {pr.status}")
        return rev
    rev.head = hub.revision_head(pr.ref)
    pr_listing = hub.list_files_at(pr.ref)
    # What the PR changes is its diff (what a merge applies); without one, its tree against main's
    # (which also lists files main dropped since the PR branched, e.g. by a compaction).
    diff_paths = {p for m in _DIFF_PATH.finditer(hub.pr_diff(num)) for p in m.groups()}
    changed = sorted(diff_paths or {p for p in pr_listing if p not in main_listing})
    deleted = [p for p in changed if p not in pr_listing]
    if deleted:
        rev.problems.append(f"deletes {len(deleted)} file(s) (e.g. {deleted[0]}): contributions only add files")
    seen, where, _ = index.accepted()
    seen, where = dict(seen), dict(where)
    with tempfile.TemporaryDirectory() as tmp:
        for p in changed:
            if p in deleted:
                continue
            if p == L.CARD_PATH:
                # The card a first push adds, or the one main has now (merged from another PR), is no change.
                want = hub.read_text_at(p, "main") if p in main_listing else L.card(hub.repo_id)
                if hub.read_text_at(p, pr.ref) != want:
                    rev.problems.append("changes the dataset card (README.md): that is for maintainers")
                continue
            if not L.is_data_path(p):
                rev.problems.append(f"{p}: outside the data layout (data/v<version>/<YYYY-MM>/<sha256[:32]>.parquet)")
                continue
            # A path main has too is checked all the same: its name is a hash, so a copy with other
            # bytes (an attempt to overwrite a main file) fails the hash check.
            rev.files.append(p)
            dest = Path(tmp) / "file.parquet"
            _download(hub, p, dest, pr_listing[p], limits, revision=pr.ref)
            verdict = check_data_file(dest, p, pr_listing[p], limits)
            dest.unlink(missing_ok=True)
            rev.rows += verdict.n_rows
            if not verdict.ok:
                rev.problems.append(f"{p}: {verdict.summary()}")
            for rid, h in verdict.pairs:
                if rid in seen:
                    if seen[rid] != h:
                        rev.problems.append(f"{p}: conflict: record {rid} is already in {where[rid]} with other "
                                            "content; the first copy stands")
                    else:
                        rev.known_records += 1
                    continue
                seen[rid], where[rid] = h, p
                rev.new_records += 1
    if not rev.files and not rev.problems:
        rev.problems.append("adds no new data file")
    return rev


def review(remote: Remote, home: Path, pr: int | None = None, comment: bool = False, limits: Limits = Limits(),
           log: Callable[[str], None] = lambda s: None) -> list[Review]:
    """Review the open pull requests (or only ``pr``); with ``comment``, post each verdict on its PR."""
    hub = _hub(remote)
    nums = [pr] if pr is not None else [p.num for p in hub.open_prs()]
    if not nums:
        return []
    main_listing = hub.list_files_at("main")
    index = StoreIndex(hub, home, limits)
    index.update(main_listing, log=log)
    out = []
    for num in nums:
        r = review_one(hub, num, index, main_listing, limits)
        if comment:
            hub.comment(num, r.markdown())
        out.append(r)
    return out


def merge(remote: Remote, home: Path, num: int, limits: Limits = Limits(),
          log: Callable[[str], None] = lambda s: None) -> tuple[Review, str | None]:
    """Review PR ``num`` again and merge it if it passes; refuse (``MaintainError``) otherwise."""
    hub = _hub(remote)
    [r] = review(hub, home, pr=num, limits=limits, log=log)
    if not r.ok:
        raise MaintainError(f"not merging PR #{num}: it fails review: " + "; ".join(r.problems[:10])
                            + (f" (+{len(r.problems) - 10} more)" if len(r.problems) > 10 else ""))
    if hub.revision_head(f"refs/pr/{num}") != r.head:
        raise MaintainError(f"not merging PR #{num}: it received a commit during the review; run it again")
    try:
        commit = hub.merge(num, comment=f"Merged after `xlog review`: pass ({r.new_records} new record(s) in "
                                        f"{len(r.files)} file(s)).")
    except RemoteError as exc:
        raise MaintainError(f"merging PR #{num} failed: {exc}") from exc
    return r, commit
