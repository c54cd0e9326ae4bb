"""Remotes that experience records are pushed to and pulled from.

Two kinds share one layout (see ``layout``) and one interface (``Remote``). ``open_remote(spec)``
picks one from the spec; without a spec the default comes from ``$XLOG_REMOTE`` or ``"remote"``
in ``$XLOG_HOME/config.json``. A spec is read as:

* a Hugging Face Hub dataset repo: ``OWNER/NAME``, ``hf://datasets/OWNER/NAME``, or a dataset URL
  on huggingface.co (``https://huggingface.co/datasets/OWNER/NAME``, also with ``/tree/main``,
  ``/blob/main/...``, ``/viewer``) or on the ``$HF_ENDPOINT`` host (``hub``);
* a directory on a shared disk (``directory``): ``dir:PATH``, ``file:///PATH``, an absolute path,
  a path starting with ``./``, ``../`` or ``~``, or an existing directory that cannot be a Hub id.

A relative spec that could be either (``lab/x`` while a folder ``lab/x`` exists) or neither
(``a/b/c`` that does not exist, a bare ``name``) is refused with a message saying how to write
each, rather than guessed: a guess could publish records to the wrong place.
"""
from __future__ import annotations

import json
import os
import re
import urllib.parse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Mapping

from ..errors import XLogError
from ..store import default_root


class RemoteError(XLogError, RuntimeError):
    """A push or pull failed for a reason the user can act on; the message says which."""


class RemoteNotFoundError(RemoteError):
    """The remote (Hub repo or directory) does not exist (yet)."""


class Remote(ABC):
    """Where records are published. Files are content-addressed, so adding a file that exists is a no-op."""

    kind: str

    @property
    @abstractmethod
    def key(self) -> str:
        """Canonical spec of the remote (used as the ledger key)."""

    @property
    def slug(self) -> str:
        """A file-system-safe name for the local mirror folder."""
        return re.sub(r"[^A-Za-z0-9._-]+", "--", self.key).strip("-")[-150:]

    @abstractmethod
    def ensure(self, private: bool = False) -> None:
        """Create the remote if it does not exist (``private`` only matters on creation)."""

    @abstractmethod
    def list_files(self) -> dict[str, int]:
        """Every file path on the remote (posix, relative) -> size in bytes."""

    @abstractmethod
    def exists(self, paths: list[str]) -> set[str]:
        """Which of ``paths`` are on the remote."""

    @abstractmethod
    def commit(self, files: Mapping[str, bytes], message: str,
               progress: Callable[[int], None] | None = None) -> str | None:
        """Add ``files`` (path -> bytes) in one step; returns a commit id if the remote has one."""

    @abstractmethod
    def fetch(self, path: str, dest: Path) -> None:
        """Download one file to ``dest`` (a temporary location chosen by the caller)."""

    def read_record_ids(self, files: Mapping[str, int]) -> dict[str, list[str] | None]:
        """The record ids in each data file (path -> size in bytes, as ``list_files`` gives);
        None for a file that is not a readable record file. Only the ``record_id`` column is read."""
        import tempfile

        import pyarrow.parquet as pq
        out: dict[str, list[str] | None] = {}
        with tempfile.TemporaryDirectory() as d:
            for path in files:
                dest = Path(d) / "file.parquet"
                self.fetch(path, dest)
                out[path] = _ids_of(lambda: pq.read_table(dest, columns=["record_id"]))
                dest.unlink(missing_ok=True)
        return out

    def file_origins(self, paths: list[str]) -> dict[str, dict]:
        """Where each file came from: path -> ``{"commit": id, "date": ISO 8601, "pr": number or
        None}`` (the last commit that changed it on the remote and the pull request it was merged
        from). Readers use it to tell which of two conflicting copies was committed first, and to
        record provenance. Remotes without history answer ``{}`` (for some or all paths)."""
        return {}

    def read_text(self, path: str) -> str | None:
        """A small text file (e.g. the dataset card), or None when it is absent."""
        import tempfile
        if path not in self.exists([path]):
            return None
        with tempfile.TemporaryDirectory() as d:
            dest = Path(d) / "file"
            self.fetch(path, dest)
            return dest.read_text(encoding="utf-8")


def _ids_of(read: Callable[[], "object"]) -> list[str] | None:
    """``read()`` -> a table with a record_id column -> its ids; None when the file is not a record file."""
    import pyarrow as pa
    try:
        table = read()
        ids = table.column("record_id").to_pylist()  # type: ignore[attr-defined]
    except (pa.ArrowException, ValueError, KeyError, TypeError):  # the content; I/O errors propagate
        return None
    return [str(i) for i in ids if i is not None]


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def default_remote_spec(home: str | os.PathLike | None = None) -> str | None:
    """``$XLOG_REMOTE``, else ``"remote"`` in ``<home>/config.json``, else None."""
    env = os.environ.get("XLOG_REMOTE")
    if env:
        return env
    cfg = Path(home).expanduser() if home else default_root()
    try:
        return json.loads((cfg / "config.json").read_text(encoding="utf-8")).get("remote")
    except (OSError, ValueError, AttributeError):
        return None


_HF_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
# Pages of a dataset repo on the Hub website: a URL to any of them names the repo.
_REPO_PAGES = ("tree", "blob", "resolve", "raw", "viewer", "discussions", "commits", "commit", "settings",
               "edit", "sql-console")
HOW_TO_WRITE = ("write a directory as ./PATH, an absolute path or dir:PATH, and a Hub dataset as OWNER/NAME "
                "or hf://datasets/OWNER/NAME")


def _endpoint() -> urllib.parse.SplitResult:
    return urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")


def _repo_from_parts(spec: str, parts: list[str], url: bool) -> str:
    """``OWNER/NAME[@main][/tree/main/...]`` path parts after ``datasets/`` -> ``OWNER/NAME``."""
    if len(parts) < 2:
        raise RemoteError(f"{spec!r} does not name a dataset: expected .../datasets/OWNER/NAME")
    owner, name, rest = parts[0], parts[1], parts[2:]
    name, _, rev = name.partition("@")
    if url and rest and rest[0] in _REPO_PAGES:
        if rest[0] in ("tree", "blob", "resolve", "raw", "edit") and len(rest) > 1:
            rev = rev or urllib.parse.unquote(rest[1])
    elif rest:
        raise RemoteError(f"{spec!r} points inside a repo ({'/'.join(rest)}): a remote is a whole dataset repo, "
                          f"hf://datasets/{owner}/{name}")
    if rev and rev not in ("main", "refs/heads/main"):
        raise RemoteError(f"{spec!r} names the revision {rev!r}: records are pushed to and pulled from the main "
                          f"branch only; use hf://datasets/{owner}/{name}")
    return f"{owner}/{name}"


def _repo_from_url(spec: str) -> str:
    u = urllib.parse.urlsplit(spec)
    ep = _endpoint()
    hosts = {*_HF_HOSTS, ep.netloc.lower()} - {""}
    if u.scheme not in ("http", "https") or u.netloc.lower() not in hosts:
        raise RemoteError(
            f"{spec!r} is not a Hub dataset URL: expected https://huggingface.co/datasets/OWNER/NAME"
            + (f" or {ep.scheme}://{ep.netloc}/datasets/OWNER/NAME (HF_ENDPOINT)" if ep.netloc not in _HF_HOSTS else "")
            + (f"; for another Hub-compatible server set HF_ENDPOINT={u.scheme}://{u.netloc}"
               if u.scheme in ("http", "https") and u.netloc else "") + "; " + HOW_TO_WRITE)
    path = urllib.parse.unquote(u.path)
    prefix = ep.path.rstrip("/")
    if prefix and u.netloc.lower() == ep.netloc.lower() and path.startswith(prefix + "/"):
        path = path[len(prefix):]  # an endpoint below a path, e.g. https://host/hub
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != "datasets":
        kind = "a Space" if parts[:1] == ["spaces"] else "a model repo" if len(parts) >= 2 else "not a repo"
        raise RemoteError(f"{spec!r} is {kind}: records live in a dataset repo, "
                          "https://huggingface.co/datasets/OWNER/NAME (or hf://datasets/OWNER/NAME)")
    return _repo_from_parts(spec, parts[1:], url=True)


def parse_spec(spec: str) -> tuple[str, str]:
    """A remote spec -> ``("hub", "OWNER/NAME")`` or ``("directory", path)``; ambiguous specs raise
    ``RemoteError`` (see the module docstring for the syntax)."""
    spec = spec.strip()
    if spec.startswith("dir:"):
        if not spec[4:]:
            raise RemoteError("'dir:' needs a path, e.g. dir:/mnt/shared/xlog or dir:shared/xlog")
        return "directory", spec[4:]
    if spec.startswith("file://"):
        path = urllib.parse.unquote(spec[len("file://"):])
        if not path:
            raise RemoteError(f"{spec!r} names no directory: write file:///ABSOLUTE/PATH or dir:PATH")
        return "directory", path
    if spec.startswith("hf://"):
        rest = spec[len("hf://"):]
        if not rest.startswith("datasets/"):
            raise RemoteError(f"{spec!r}: only dataset repos can hold records (hf://datasets/OWNER/NAME)")
        return "hub", _repo_from_parts(spec, [p for p in rest[len("datasets/"):].split("/") if p], url=False)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec):
        return "hub", _repo_from_url(spec)
    first = spec.split("/", 1)[0].lower()
    if first and "/" in spec and (first in _HF_HOSTS or first == _endpoint().netloc.lower()):
        return "hub", _repo_from_url(f"{_endpoint().scheme}://{spec}")  # a URL without its scheme
    if spec.startswith(("/", "~", ".")):
        return "directory", spec
    is_dir = Path(spec).is_dir()
    if spec.count("/") == 1 and not spec.endswith("/"):
        if is_dir:
            raise RemoteError(f"{spec!r} is ambiguous: it is a Hub dataset id and also a folder here; "
                              f"write ./{spec} or dir:{spec} for the folder, hf://datasets/{spec} for the Hub dataset")
        return "hub", spec
    if is_dir:
        return "directory", spec
    raise RemoteError(f"{spec!r} is neither a Hub dataset id (OWNER/NAME) nor an existing directory; " + HOW_TO_WRITE
                      + (f" (e.g. ./{spec} to create that folder)" if spec else ""))


def open_remote(spec: str | None, home: str | os.PathLike | None = None, **hub_kwargs) -> Remote:
    """Open the remote a spec names (see ``parse_spec``); without one, ``default_remote_spec(home)``."""
    spec = spec or default_remote_spec(home)
    if not spec or not spec.strip():
        raise RemoteError("no remote given: pass --remote OWNER/NAME (a Hub dataset) or --remote ./PATH, "
                          "/PATH or dir:PATH (a directory), or set XLOG_REMOTE")
    kind, target = parse_spec(spec)
    if kind == "directory":
        from .directory import DirectoryRemote
        return DirectoryRemote(target)
    return _hub(target, hub_kwargs)


def _hub(repo_id: str, kwargs: dict) -> Remote:
    if not _HUB_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise RemoteError(f"{repo_id!r} is not a valid Hub dataset id: expected OWNER/NAME (letters, digits, "
                          "'-', '_', '.'), e.g. my-lab/finetuning-experience; for a directory write ./PATH, "
                          "an absolute path or dir:PATH")
    from .hub import HubRemote
    return HubRemote(repo_id, **kwargs)


__all__ = ["Remote", "RemoteError", "RemoteNotFoundError", "open_remote", "parse_spec", "default_remote_spec"]
