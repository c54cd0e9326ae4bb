"""A Hugging Face Hub dataset repo as a remote, through the unmodified ``huggingface_hub`` client.

One push is one ``HfApi.create_commit``. Content-addressed file names make a commit idempotent:
re-sending files that already landed is a no-op (the client skips files whose oid matches), so
a commit is safely retried after a conflict (409/412), a rate limit (429, honouring
``Retry-After``), a server error or a connection lost mid-request. Errors become ``RemoteError``
messages that say what to do.

Contributors without write access push through a pull request (``create_pr``): the first push
opens one (``create_commit(create_pr=True)``), later pushes append to the same open PR (the
newest open ``xlog push`` PR of this user, found through the discussions listing), and the
listing a push plans from is main plus that PR, so nothing in either is sent again. With
``create_pr=None`` (the default) a push tries main and, on the Hub's 403, says so and opens or
extends the PR instead. Maintainers review, merge and compact through the other methods
(``open_prs``, ``list_files_at``, ``comment``, ``merge``, ``replace``; see ``xlog.maintain``).

The endpoint (``endpoint=`` or ``$HF_ENDPOINT``) is checked before the first request: a value
that is not an http(s) URL is refused, and one that cannot be reached fails at once (one
request, no retries), instead of after the client's retry loop for connection errors.
"""
from __future__ import annotations

import io
import os
import random
import re
import shutil
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

from . import Remote, RemoteError, RemoteNotFoundError, _ids_of

T = TypeVar("T")
RETRY_STATUSES = {408, 409, 412, 429, 500, 502, 503, 504}
REACH_TIMEOUT_S = 15.0  # the one request that checks the endpoint answers at all
WHOLE_FILE_BYTES = 8 << 20  # read smaller data files in one request; larger ones by ranges (footer + ids)
PR_TITLE_PREFIX = "xlog push"  # the PRs a push opens and appends to (the first commit's title)
_PR_IN_TITLE = re.compile(r"\(#(\d+)\)\s*$")  # the Hub titles a merged PR's commit "<title> (#N)"


class RemoteChangedError(RemoteError):
    """A commit with ``parent_commit`` was refused: main is not at that commit any more."""


@dataclass(frozen=True)
class PullRequest:
    num: int
    title: str
    author: str
    status: str
    url: str
    created_at: str

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"


def _httpx():
    # The HTTP client huggingface_hub raises the errors of: httpx2 from 2.0, httpx in 1.x (each a
    # requirement of that huggingface_hub, whose floor in pyproject.toml is 1.0).
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx  # type: ignore[no-redef]
    return httpx


def _status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def _retry_after(exc: BaseException) -> float | None:
    resp = getattr(exc, "response", None)
    value = resp.headers.get("Retry-After") if resp is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class HubRemote(Remote):
    kind = "hub"

    def __init__(self, repo_id: str, endpoint: str | None = None, token: str | None = None,
                 max_retries: int | None = None, retry_base_s: float | None = None,
                 create_pr: bool | None = None, on_message: Callable[[str], None] | None = None):
        """``create_pr``: True pushes through a pull request, None (default) does when the token
        cannot write to main (a 403), False never does. ``on_message`` receives what the user should
        be told (e.g. that a PR was opened instead)."""
        self.repo_id = repo_id
        self.create_pr = create_pr
        self.on_message = on_message or (lambda s: None)
        self.last_pr: PullRequest | None = None  # the PR the last commit() went to
        self.last_pr_opened = False  # ... and whether that commit opened it
        self._pr_paths: dict[str, str] = {}  # files listed from the open PR only -> its ref
        self._endpoint_from = "endpoint" if endpoint else "HF_ENDPOINT" if os.environ.get("HF_ENDPOINT") else None
        given = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        self.endpoint = given.strip().rstrip("/")
        u = urllib.parse.urlsplit(self.endpoint)
        if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment:
            raise RemoteError(f"{self._endpoint_from or 'the endpoint'}={given!r} is not a valid Hub URL: "
                              "expected http(s)://HOST[:PORT], e.g. https://huggingface.co (unset HF_ENDPOINT to "
                              "use it)")
        self._reached = False
        self.token = token
        self.max_retries = int(os.environ.get("XLOG_PUSH_RETRIES", 6)) if max_retries is None else max_retries
        self.retry_base_s = float(os.environ.get("XLOG_RETRY_BASE_S", 1.0)) if retry_base_s is None else retry_base_s
        from huggingface_hub import HfApi
        self.api = HfApi(endpoint=self.endpoint, token=token)

    @property
    def key(self) -> str:
        host = "" if self.endpoint == "https://huggingface.co" else self.endpoint + "/"
        return f"hf://{host}datasets/{self.repo_id}"

    @property
    def slug(self) -> str:
        # The mirror folder names the repo only: the same dataset pulled through another
        # endpoint URL (e.g. a port change of a test server) is still the same mirror.
        return "hf--" + self.repo_id.replace("/", "--")

    # --- error translation ------------------------------------------------------------
    def _explain(self, exc: BaseException, action: str) -> RemoteError:
        from huggingface_hub import errors as E
        httpx = _httpx()
        where = f"dataset {self.repo_id} at {self.endpoint}"
        if isinstance(exc, E.OfflineModeIsEnabled):
            return RemoteError(f"cannot {action} {where}: HF_HUB_OFFLINE is set; unset it to use the network")
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return RemoteError(f"cannot {action} dataset {self.repo_id}: {self._endpoint_name()} is not a valid URL "
                               f"({exc})")
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return RemoteError(f"cannot {action} dataset {self.repo_id}: the Hub at {self._endpoint_name()} is "
                               f"unreachable ({exc}); check the address, the network or a proxy. Nothing was changed.")
        if isinstance(exc, (httpx.TransportError,)):
            resume = ("nothing was marked as pushed that is not on the remote" if action in ("push to", "create", "read")
                      else "what was already downloaded is kept")
            return RemoteError(f"{action} of {where} was interrupted ({type(exc).__name__}: {exc}); {resume}: "
                               "run the command again to resume")
        if isinstance(exc, E.HFValidationError):
            return RemoteError(f"{self.repo_id!r} is not a valid repo id: {exc}")
        status = _status(exc)
        msg = getattr(getattr(exc, "response", None), "headers", {}).get("X-Error-Message", "") if status else ""
        if status == 401 and "Invalid credentials" in (msg or str(exc)):
            return RemoteError(f"cannot {action} {where}: the Hugging Face token was rejected (invalid or expired); "
                               "create a new one with write access and set HF_TOKEN or run `hf auth login`")
        if isinstance(exc, E.RepositoryNotFoundError) or status == 404:
            return RemoteNotFoundError(f"cannot {action} {where}: the repo does not exist or your token cannot see "
                                       "it (private repo?); check the id, or push first to create it")
        if status == 401:
            return RemoteError(f"cannot {action} {where}: not authenticated; set HF_TOKEN or run `hf auth login`")
        if status == 403:
            return RemoteError(f"cannot {action} {where}: your token has no write access to it "
                               "(use a token with 'write' permission for that namespace, or push with --create-pr "
                               "to open a pull request)" + (f" [{msg}]" if msg else ""))
        if status == 429:
            return RemoteError(f"cannot {action} {where}: rate limited by the Hub after {self.max_retries} retries; "
                               "wait a few minutes and run it again")
        if status in (409, 412):
            return RemoteError(f"cannot {action} {where}: concurrent commits kept conflicting after "
                               f"{self.max_retries} retries; run it again")
        if status is not None:
            return RemoteError(f"cannot {action} {where}: HTTP {status}: {msg or exc}")
        return RemoteError(f"cannot {action} {where}: {type(exc).__name__}: {exc}")

    def _endpoint_name(self) -> str:
        return f"{self._endpoint_from}={self.endpoint}" if self._endpoint_from else f"the endpoint {self.endpoint}"

    def _reach(self, action: str) -> None:
        """One request to the endpoint, without retries: any HTTP answer means it is reachable."""
        if self._reached:
            return
        from huggingface_hub.utils import get_session
        try:
            get_session().head(self.endpoint + "/", timeout=REACH_TIMEOUT_S)
        except Exception as exc:
            httpx = _httpx()
            if not isinstance(exc, (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError)) \
                    or isinstance(exc, httpx.ConnectTimeout):
                raise self._explain(exc, action) from exc
            # It answered, slowly or oddly: let the real request (and its retries) decide.
        self._reached = True

    def _call(self, action: str, fn: Callable[[], T], retry: bool = False,
              never_retry: frozenset[int] = frozenset()) -> T:
        """Run a client call; with ``retry``, back off and retry transient failures (not connection
        errors: an endpoint that cannot be reached fails at once; not the statuses in ``never_retry``)."""
        httpx = _httpx()
        self._reach(action)
        attempt = 0
        while True:
            try:
                return fn()
            except RemoteError:
                raise
            except Exception as exc:
                status = _status(exc)
                transient = (status in RETRY_STATUSES and status not in never_retry) or isinstance(
                    exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ReadTimeout))
                if not (retry and transient and attempt < self.max_retries):
                    raise self._explain(exc, action) from exc
                wait = _retry_after(exc)
                if wait is None:
                    wait = self.retry_base_s * (2 ** attempt) * (0.5 + random.random())
                time.sleep(min(wait, 60.0))
                attempt += 1

    def _check_token(self) -> None:
        from huggingface_hub import get_token
        if not (self.token or get_token()):
            raise RemoteError("no Hugging Face token found: pushing needs one with write access; set HF_TOKEN "
                              "or run `hf auth login`")

    # --- Remote interface -------------------------------------------------------------
    def ensure(self, private: bool = False) -> None:
        """Create the repo if it does not exist. An existing repo is only looked at: a contributor
        without write access may not create repos in its namespace, and needs not."""
        self._check_token()
        try:
            self._call("create", lambda: self.api.repo_info(self.repo_id, repo_type="dataset"), retry=True)
            return
        except RemoteNotFoundError:
            if self.create_pr:
                raise RemoteNotFoundError(f"cannot open a pull request on dataset {self.repo_id}: it does not exist "
                                          "(or your token cannot see it); a maintainer creates it first") from None
        self._call("create", lambda: self.api.create_repo(self.repo_id, repo_type="dataset", private=private,
                                                          exist_ok=True))

    def list_files(self) -> dict[str, int]:
        """Main's files; when pushing through a PR, plus the files of this user's open PR (so that
        a push does not send them again)."""
        files = self.list_files_at("main")
        self._pr_paths = {}
        if self.create_pr:
            pr = self.my_open_pr()
            if pr is not None:
                for path, size in self.list_files_at(pr.ref).items():
                    if path not in files:
                        files[path] = size
                        self._pr_paths[path] = pr.ref
        return files

    def list_files_at(self, revision: str) -> dict[str, int]:
        """Every file at a branch or PR ref (``refs/pr/N``) -> size in bytes."""
        from huggingface_hub.hf_api import RepoFile

        def listing() -> dict[str, int]:
            return {f.path: f.size for f in self.api.list_repo_tree(self.repo_id, repo_type="dataset", recursive=True,
                                                                    revision=revision)
                    if isinstance(f, RepoFile)}
        return self._call("list", listing, retry=True)

    def exists(self, paths: list[str]) -> set[str]:
        from huggingface_hub.hf_api import RepoFile
        found: set[str] = set()
        for i in range(0, len(paths), 500):
            chunk = paths[i:i + 500]
            infos = self._call("inspect", lambda: self.api.get_paths_info(self.repo_id, chunk, repo_type="dataset"),
                               retry=True)
            found.update(f.path for f in infos if isinstance(f, RepoFile))
        return found

    def commit(self, files: Mapping[str, bytes], message: str,
               progress: Callable[[int], None] | None = None) -> str | None:
        """One commit to main, or to this user's pull request (see the module docstring); the PR
        it went to is ``last_pr``."""
        from huggingface_hub import CommitOperationAdd
        self.last_pr, self.last_pr_opened = None, False
        if self.create_pr:
            oid = self._commit_pr(files, message)
        else:
            def attempt() -> str | None:
                # Fresh operations each try: an operation object cannot be committed twice.
                ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()]
                info = self.api.create_commit(self.repo_id, ops, commit_message=message, repo_type="dataset")
                return info.oid
            try:
                oid = self._call("push to", attempt, retry=True)
            except RemoteError as exc:
                if self.create_pr is not None or _status(exc.__cause__) != 403:
                    raise
                self.on_message(f"your token cannot write to {self.repo_id} (HTTP 403): pushing through a pull "
                                "request instead, for a maintainer to review and merge (--create-pr does this "
                                "directly)")
                self.create_pr = True
                oid = self._commit_pr(files, message)
        if progress:
            progress(len(files))
        return oid

    def _commit_pr(self, files: Mapping[str, bytes], message: str) -> str | None:
        """Append to this user's open push PR, or open one. The PR is looked up again on every
        try, so a retry after a lost answer appends to the PR the first try opened."""
        from huggingface_hub import CommitOperationAdd

        def attempt() -> str | None:
            ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()]
            pr = self.my_open_pr()
            if pr is not None:
                info = self.api.create_commit(self.repo_id, ops, commit_message=message, repo_type="dataset",
                                              revision=pr.ref)
                self.last_pr, self.last_pr_opened = pr, False
                return info.oid
            info = self.api.create_commit(
                self.repo_id, ops, commit_message=message, repo_type="dataset", create_pr=True,
                commit_description="Experience records pushed with `xlog push`. A maintainer checks them with "
                                   "`xlog review` and merges with `xlog merge`; later pushes of this contributor "
                                   "are added to this pull request while it is open.")
            if info.pr_num is not None:
                self.last_pr = PullRequest(info.pr_num, message, self._whoami(), "open", info.pr_url or "", "")
                self.last_pr_opened = True
            return info.oid
        return self._call("push to", attempt, retry=True)

    # --- pull requests (contributors and maintainers) ------------------------------------
    def _whoami(self) -> str:
        if not hasattr(self, "_me"):
            self._me = str(self._call("identify", lambda: self.api.whoami(), retry=True)["name"])
        return self._me

    def _pr(self, d) -> PullRequest:
        return PullRequest(d.num, d.title, d.author, d.status, d.url, d.created_at.isoformat())

    def open_prs(self, author: str | None = None) -> list[PullRequest]:
        """The open (and draft) pull requests, newest first; only ``author``'s if given."""
        def listing() -> list[PullRequest]:
            return [self._pr(d) for d in self.api.get_repo_discussions(
                self.repo_id, repo_type="dataset", author=author, discussion_type="pull_request",
                discussion_status="open")]
        return self._call("list the pull requests of", listing, retry=True)

    def closed_push_prs(self) -> list[PullRequest]:
        """This user's pull requests opened by ``xlog push`` that were closed without merging."""
        def listing() -> list[PullRequest]:
            return [self._pr(d) for d in self.api.get_repo_discussions(
                self.repo_id, repo_type="dataset", author=self._whoami(), discussion_type="pull_request",
                discussion_status="closed")]
        return [pr for pr in self._call("list the pull requests of", listing, retry=True)
                if pr.status == "closed" and pr.title.startswith(PR_TITLE_PREFIX)]

    def my_open_pr(self) -> PullRequest | None:
        """This user's newest open PR that ``xlog push`` opened, if any."""
        for pr in self.open_prs(author=self._whoami()):
            if pr.title.startswith(PR_TITLE_PREFIX):
                return pr
        return None

    def pr_info(self, num: int) -> PullRequest:
        d = self._call("read the pull request of", lambda: self.api.get_discussion_details(
            self.repo_id, num, repo_type="dataset"), retry=True)
        if not d.is_pull_request:
            raise RemoteError(f"#{num} on {self.repo_id} is a discussion, not a pull request")
        return self._pr(d)

    def pr_diff(self, num: int) -> str:
        """The PR's diff as the Hub gives it (``diff --git a/PATH b/PATH`` per changed file)."""
        d = self._call("read the pull request of", lambda: self.api.get_discussion_details(
            self.repo_id, num, repo_type="dataset"), retry=True)
        return d.diff or ""

    def revision_head(self, revision: str) -> str:
        """The commit id at a branch or PR ref."""
        info = self._call("read", lambda: self.api.repo_info(self.repo_id, repo_type="dataset", revision=revision),
                          retry=True)
        return str(info.sha)

    def read_text_at(self, path: str, revision: str) -> str | None:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            dest = Path(d) / "file"
            try:
                self.fetch(path, dest, revision=revision)
            except RemoteNotFoundError:
                return None
            return dest.read_text(encoding="utf-8", errors="replace")

    def comment(self, num: int, text: str) -> None:
        self._call("comment on", lambda: self.api.comment_discussion(self.repo_id, num, text, repo_type="dataset"),
                   retry=True)

    def merge(self, num: int, comment: str | None = None) -> str | None:
        """Merge PR ``num`` into main; returns the merge commit id when the Hub says it."""
        self._call("merge a pull request of", lambda: self.api.merge_pull_request(
            self.repo_id, num, comment=comment, repo_type="dataset"))
        return self.pr_merge_commit(num)

    def pr_merge_commit(self, num: int) -> str | None:
        d = self._call("read the pull request of", lambda: self.api.get_discussion_details(
            self.repo_id, num, repo_type="dataset"), retry=True)
        return d.merge_commit_oid

    def head(self) -> str:
        """The commit id at the head of main."""
        return str(self._call("read", lambda: self.api.repo_info(self.repo_id, repo_type="dataset"), retry=True).sha)

    def replace(self, add: Mapping[str, bytes | Path], delete: Iterable[str], message: str, description: str = "",
                parent_commit: str | None = None) -> str | None:
        """Add and delete files in ONE commit on main. With ``parent_commit`` the Hub refuses (412)
        when main moved meanwhile: the caller planned from a state that is gone, and is told so."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        delete = list(delete)

        def attempt() -> str | None:
            ops = [CommitOperationDelete(path_in_repo=p) for p in delete]
            ops += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data if isinstance(data, bytes) else str(data))
                    for p, data in add.items()]
            return self.api.create_commit(self.repo_id, ops, commit_message=message, commit_description=description,
                                          repo_type="dataset", parent_commit=parent_commit).oid
        try:
            # With a parent, a 412 means main moved: retrying cannot help (and must not override it).
            return self._call("commit to", attempt, retry=True,
                              never_retry=frozenset({409, 412}) if parent_commit else frozenset())
        except RemoteError as exc:
            if _status(exc.__cause__) == 412:
                raise RemoteChangedError(f"{self.repo_id} changed while this was planned (a push or merge landed, "
                                         "or an earlier try of this commit whose answer was lost)") from exc
            raise

    def file_origins(self, paths: list[str]) -> dict[str, dict]:
        """Per file on main: the last commit that changed it, its date, and the PR it was merged
        from (the Hub titles a merged PR's commit "<title> (#N)")."""
        out: dict[str, dict] = {}
        from huggingface_hub.hf_api import RepoFile
        for i in range(0, len(paths), 100):
            chunk = paths[i:i + 100]
            infos = self._call("inspect", lambda: self.api.get_paths_info(self.repo_id, chunk, repo_type="dataset",
                                                                         expand=True), retry=True)
            for f in infos:
                if isinstance(f, RepoFile) and f.last_commit is not None:
                    m = _PR_IN_TITLE.search(f.last_commit.title or "")
                    out[f.path] = {"commit": f.last_commit.oid, "date": f.last_commit.date.isoformat(),
                                   "pr": int(m.group(1)) if m else None}
        return out

    def read_record_ids(self, files: Mapping[str, int]) -> dict[str, list[str] | None]:
        """Read only what is needed: a small file in one request, a large one by byte ranges
        (the Parquet footer, then the record_id column chunks) through ``HfFileSystem``."""
        if not files:
            return {}
        import pyarrow.parquet as pq
        from huggingface_hub import HfFileSystem
        fs = HfFileSystem(endpoint=self.endpoint, token=self.token, skip_instance_cache=True)
        out: dict[str, list[str] | None] = {}
        for path, size in files.items():
            rev = self._pr_paths.get(path)
            where = f"datasets/{self.repo_id}" + (f"@{urllib.parse.quote(rev, safe='')}" if rev else "") + f"/{path}"

            def read(where: str = where, size: int = size) -> list[str] | None:
                if size <= WHOLE_FILE_BYTES:
                    data = fs.cat_file(where)
                    return _ids_of(lambda: pq.read_table(io.BytesIO(data), columns=["record_id"]))
                with fs.open(where, "rb", block_size=1 << 20) as f:
                    return _ids_of(lambda: pq.ParquetFile(f).read(columns=["record_id"]))
            try:
                out[path] = self._call("read", read, retry=True)
            except RemoteError as exc:
                if isinstance(exc, RemoteNotFoundError) or isinstance(exc.__cause__, FileNotFoundError):
                    continue  # removed since the listing (e.g. compacted): not on the remote any more
                raise
        return out

    def read_bytes(self, path: str, revision: str | None = None) -> bytes:
        """A small file's bytes in one request (no download cache, no lock files): for checking
        many small files (``xlog review``, ``xlog compact``)."""
        from huggingface_hub import HfFileSystem
        fs = getattr(self, "_fs", None) or HfFileSystem(endpoint=self.endpoint, token=self.token,
                                                         skip_instance_cache=True)
        self._fs = fs
        rev = revision or self._pr_paths.get(path)
        where = f"datasets/{self.repo_id}" + (f"@{urllib.parse.quote(rev, safe='')}" if rev else "") + f"/{path}"

        def read() -> bytes:
            try:
                return fs.cat_file(where)
            except FileNotFoundError:
                fs.invalidate_cache()  # its folder listings are cached: the file may be newer than them
                return fs.cat_file(where)
        try:
            return self._call("download from", read, retry=True)
        except RemoteError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise RemoteNotFoundError(f"{path} is not on {self.repo_id}" + (f" at {rev}" if rev else "")) from exc
            raise

    def fetch(self, path: str, dest: Path, revision: str | None = None) -> None:
        """Download one file (from main, or ``revision`` such as ``refs/pr/3``) to ``dest``."""
        from huggingface_hub import hf_hub_download
        staging = dest.parent / (".dl-" + dest.name)
        revision = revision or self._pr_paths.get(path)

        def download() -> str:
            return hf_hub_download(self.repo_id, path, repo_type="dataset", local_dir=staging, revision=revision,
                                   endpoint=self.endpoint, token=self.token)
        got = Path(self._call("download from", download, retry=True))
        os.replace(got, dest)
        shutil.rmtree(staging, ignore_errors=True)
