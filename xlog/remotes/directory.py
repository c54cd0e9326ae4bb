"""A directory (a shared disk, an NFS mount) as a remote, with the same layout as a Hub dataset.

Every file is written to a dot-prefixed temporary name in its final folder, fsynced, then
renamed into place (atomic on one file system), so readers never see a partial file. Names are
content hashes, so two writers adding the same file write the same bytes and concurrent
writers of different files never touch the same name: no lock is needed on the remote.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping

from ..store import write_bytes_atomic
from . import Remote, RemoteError


class DirectoryRemote(Remote):
    kind = "directory"

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path).expanduser().resolve()

    @property
    def key(self) -> str:
        return f"file://{self.root}"

    def ensure(self, private: bool = False) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RemoteError(f"cannot create the directory remote {self.root}: {exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise RemoteError(f"the directory remote {self.root} is not writable by you")

    def _require(self) -> None:
        if not self.root.is_dir():
            raise RemoteError(f"the directory remote {self.root} does not exist (push to it first, or check the "
                              "mount)")

    def list_files(self) -> dict[str, int]:
        self._require()
        out: dict[str, int] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue  # temporary files of writers in progress
                p = Path(dirpath) / name
                try:
                    out[p.relative_to(self.root).as_posix()] = p.stat().st_size
                except FileNotFoundError:
                    continue
        return out

    def exists(self, paths: list[str]) -> set[str]:
        return {p for p in paths if (self.root / p).is_file()}

    def _write_atomic(self, rel: str, data: bytes) -> None:
        write_bytes_atomic(self.root / rel, data)

    def commit(self, files: Mapping[str, bytes], message: str,
               progress: Callable[[int], None] | None = None) -> str | None:
        self.ensure()
        try:
            for rel, data in files.items():
                if (self.root / rel).is_file() and rel != "README.md":
                    continue  # content-addressed: already there means identical
                self._write_atomic(rel, data)
                if progress:
                    progress(1)
        except OSError as exc:
            raise RemoteError(f"writing to the directory remote {self.root} failed ({exc}); files already "
                              "written are complete and will be recognised by the next push") from exc
        return None

    def fetch(self, path: str, dest: Path) -> None:
        src = self.root / path
        try:
            shutil.copyfile(src, dest)
        except FileNotFoundError as exc:
            raise RemoteError(f"{path} vanished from the directory remote {self.root}") from exc
