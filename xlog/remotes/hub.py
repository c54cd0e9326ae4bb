"""A Hugging Face Hub dataset repo as a remote, through the unmodified ``huggingface_hub`` client.

One push is one ``HfApi.create_commit``. Content-addressed file names make a commit idempotent:
re-sending files that already landed is a no-op (the client skips files whose oid matches), so
a commit is safely retried after a conflict (409/412), a rate limit (429, honouring
``Retry-After``), a server error or a lost connection. Errors become ``RemoteError`` messages
that say what to do.
"""
from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from . import Remote, RemoteError

T = TypeVar("T")
RETRY_STATUSES = {408, 409, 412, 429, 500, 502, 503, 504}


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
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
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
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return RemoteError(f"cannot {action} {where}: the Hub is unreachable ({exc}); check the network, "
                               "a proxy, or HF_ENDPOINT. Nothing was changed.")
        if isinstance(exc, (httpx.TransportError,)):
            return RemoteError(f"{action} of {where} was interrupted ({type(exc).__name__}: {exc}); nothing was "
                               "marked as pushed that is not on the remote: run the command again to resume")
        if isinstance(exc, E.HFValidationError):
            return RemoteError(f"{self.repo_id!r} is not a valid repo id: {exc}")
        status = _status(exc)
        msg = getattr(getattr(exc, "response", None), "headers", {}).get("X-Error-Message", "") if status else ""
        if status == 401 and "Invalid credentials" in (msg or str(exc)):
            return RemoteError(f"cannot {action} {where}: the Hugging Face token was rejected (invalid or expired); "
                               "create a new one with write access and set HF_TOKEN or run `hf auth login`")
        if isinstance(exc, E.RepositoryNotFoundError) or status == 404:
            return RemoteError(f"cannot {action} {where}: the repo does not exist or your token cannot see it "
                               "(private repo?); check the id, or push first to create it")
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

    def _call(self, action: str, fn: Callable[[], T], retry: bool = False) -> T:
        """Run a client call; with ``retry``, back off and retry transient failures."""
        httpx = _httpx()
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

    def fetch(self, path: str, dest: Path) -> None:
        from huggingface_hub import hf_hub_download
        staging = dest.parent / (".dl-" + dest.name)

        def download() -> str:
            return hf_hub_download(self.repo_id, path, repo_type="dataset", local_dir=staging,
                                   endpoint=self.endpoint, token=self.token)
        got = Path(self._call("download from", download, retry=True))
        os.replace(got, dest)
        shutil.rmtree(staging, ignore_errors=True)
