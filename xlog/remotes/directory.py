"""A directory (a shared disk, an NFS mount) as a remote, with the same layout as a Hub dataset.

Every file is written to a dot-prefixed temporary name in its final folder, fsynced, then
renamed into place (atomic on one file system), so readers never see a partial file. Names are
content hashes, so two writers adding the same file write the same bytes and concurrent
writers of different files never touch the same name: no lock is needed on the remote.

A shared disk is read by other users: files are created readable as the umask allows (mode
``0o666 & ~umask``, e.g. 0644 with umask 022, 0664 with umask 002) and folders ``0o777 & ~umask``,
as ``cp`` or any editor would create them, not with ``mkstemp``'s private 0600.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from . import Remote, RemoteError, RemoteNotFoundError, _ids_of


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting (briefly 022 in this process)
    os.umask(mask)
    return mask


def write_shared(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with the umask's permissions (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)  # mkdir's mode is 0o777 & ~umask already
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
            raise RemoteNotFoundError(f"the directory remote {self.root} does not exist (push to it first, or check "
                                      "the mount)")

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

    def read_record_ids(self, files: Mapping[str, int]) -> dict[str, list[str] | None]:
        import pyarrow.parquet as pq
        out: dict[str, list[str] | None] = {}
        for path in files:
            src = self.root / path
            try:
                out[path] = _ids_of(lambda: pq.read_table(src, columns=["record_id"]))
            except FileNotFoundError:
                continue  # removed since the listing: not on the remote any more
            except OSError as exc:
                raise RemoteError(f"cannot read {src} on the directory remote: {exc}") from exc
        return out

    def _write_atomic(self, rel: str, data: bytes) -> None:
        write_shared(self.root / rel, data)

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
