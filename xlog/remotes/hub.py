"""A Hugging Face Hub dataset repo as a remote, through the unmodified ``huggingface_hub`` client.

One push is one ``HfApi.create_commit``. Content-addressed file names make a commit idempotent:
re-sending files that already landed is a no-op (the client skips files whose oid matches), so
a commit is safely retried after a conflict (409/412), a rate limit (429, honouring
``Retry-After``), a server error or a connection lost mid-request. Errors become ``RemoteError``
messages that say what to do.

The endpoint (``endpoint=`` or ``$HF_ENDPOINT``) is checked before the first request: a value
that is not an http(s) URL is refused, and one that cannot be reached fails at once (one
request, no retries), instead of after the client's retry loop for connection errors.
"""
from __future__ import annotations

import io
import os
import random
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from . import Remote, RemoteError, RemoteNotFoundError, _ids_of

T = TypeVar("T")
RETRY_STATUSES = {408, 409, 412, 429, 500, 502, 503, 504}
REACH_TIMEOUT_S = 15.0  # the one request that checks the endpoint answers at all
WHOLE_FILE_BYTES = 8 << 20  # read smaller data files in one request; larger ones by ranges (footer + ids)


def _httpx():
    # huggingface_hub 2.x talks through httpx2; older releases through httpx.
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
                 max_retries: int | None = None, retry_base_s: float | None = None):
        self.repo_id = repo_id
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
                               "(use a token with 'write' permission for that namespace)")
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

    def _call(self, action: str, fn: Callable[[], T], retry: bool = False) -> T:
        """Run a client call; with ``retry``, back off and retry transient failures (not connection
        errors: an endpoint that cannot be reached fails at once)."""
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
                transient = status in RETRY_STATUSES or isinstance(
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
        self._check_token()
        self._call("create", lambda: self.api.create_repo(self.repo_id, repo_type="dataset", private=private,
                                                          exist_ok=True))

    def list_files(self) -> dict[str, int]:
        from huggingface_hub.hf_api import RepoFile

        def listing() -> dict[str, int]:
            return {f.path: f.size for f in self.api.list_repo_tree(self.repo_id, repo_type="dataset", recursive=True)
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
        from huggingface_hub import CommitOperationAdd

        def attempt() -> str | None:
            # Fresh operations each try: an operation object cannot be committed twice.
            ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()]
            info = self.api.create_commit(self.repo_id, ops, commit_message=message, repo_type="dataset")
            return info.oid
        oid = self._call("push to", attempt, retry=True)
        if progress:
            progress(len(files))
        return oid

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
            where = f"datasets/{self.repo_id}/{path}"

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

    def fetch(self, path: str, dest: Path) -> None:
        from huggingface_hub import hf_hub_download
        staging = dest.parent / (".dl-" + dest.name)

        def download() -> str:
            return hf_hub_download(self.repo_id, path, repo_type="dataset", local_dir=staging,
                                   endpoint=self.endpoint, token=self.token)
        got = Path(self._call("download from", download, retry=True))
        os.replace(got, dest)
        shutil.rmtree(staging, ignore_errors=True)
