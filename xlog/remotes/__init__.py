"""Remotes that experience records are pushed to and pulled from.

Two kinds share one layout (see ``layout``) and one interface (``Remote``):

* a Hugging Face Hub dataset repo, ``OWNER/NAME`` or ``hf://datasets/OWNER/NAME`` (``hub``);
* a directory on a shared disk, ``file:///path`` or a plain path (``directory``).

``open_remote(spec)`` picks one from the spec; without a spec the default comes from
``$XLOG_REMOTE`` or ``"remote"`` in ``$XLOG_HOME/config.json``.
"""
from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Mapping

from ..store import default_root


class RemoteError(RuntimeError):
    """A push or pull failed for a reason the user can act on; the message says which."""


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

    def read_text(self, path: str) -> str | None:
        """A small text file (e.g. the dataset card), or None when it is absent."""
        import tempfile
        if path not in self.exists([path]):
            return None
        with tempfile.TemporaryDirectory() as d:
            dest = Path(d) / "file"
            self.fetch(path, dest)
            return dest.read_text(encoding="utf-8")


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


def open_remote(spec: str | None, home: str | os.PathLike | None = None, **hub_kwargs) -> Remote:
    """Parse a remote spec: ``OWNER/NAME``, ``hf://datasets/OWNER/NAME``, ``file:///path`` or a path."""
    spec = spec or default_remote_spec(home)
    if not spec:
        raise RemoteError("no remote given: pass --remote OWNER/NAME (a Hub dataset) or --remote /path "
                          "(a directory), or set XLOG_REMOTE")
    if spec.startswith("file://"):
        from .directory import DirectoryRemote
        return DirectoryRemote(spec[len("file://"):])
    if spec.startswith("hf://"):
        rest = spec[len("hf://"):]
        if not rest.startswith("datasets/"):
            raise RemoteError(f"{spec!r}: only dataset repos can hold records (hf://datasets/OWNER/NAME)")
        spec = rest[len("datasets/"):]
        return _hub(spec, hub_kwargs)
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1) \
        or Path(spec).expanduser().is_dir()
    if looks_like_path:
        from .directory import DirectoryRemote
        return DirectoryRemote(spec)
    return _hub(spec, hub_kwargs)


def _hub(repo_id: str, kwargs: dict) -> Remote:
    if not _HUB_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise RemoteError(f"{repo_id!r} is not a valid Hub dataset id: expected OWNER/NAME (letters, digits, "
                          "'-', '_', '.'), e.g. my-lab/finetuning-experience; for a directory use file:///path")
    from .hub import HubRemote
    return HubRemote(repo_id, **kwargs)


__all__ = ["Remote", "RemoteError", "open_remote", "default_remote_spec"]
