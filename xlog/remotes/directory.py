"""A directory (a shared disk, an NFS mount) as a remote, with the same layout as a Hub dataset.

Every file is written to a dot-prefixed temporary name in its final folder, fsynced, then
renamed into place (atomic on one file system), so readers never see a partial file. Names are
content hashes, so two writers adding the same file write the same bytes and concurrent
writers of different files never touch the same name: no lock is needed on the remote.

A shared disk is read by other users: files are created readable as the umask allows (mode
``0o666 & ~umask``, e.g. 0644 with umask 022, 0664 with umask 002) and folders ``0o777 & ~umask``,
as ``cp`` or any editor would create them, not with ``mkstemp``'s private 0600.

Reading trusts nothing on the disk: only regular files are listed and copied (a symlink, a FIFO,
a device or a socket named like a data file is skipped with the reason in ``skipped``; the check
is made on the open file, so swapping a file for a link after the listing gains nothing), and a
copy stops at ``max_bytes``. ``file_origins`` dates each file by its inode change time, which a
writer cannot set back (unlike the modification time): the order in which files were put in place.
"""
from __future__ import annotations

import os
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from . import Remote, RemoteError, RemoteNotFoundError, _ids_of


class NotARegularFile(RemoteError):
    """A path on a directory remote is a symlink, FIFO, device or socket: never read."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


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
        self.skipped: dict[str, str] = {}  # path -> why, of the entries the last listing left out

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
        self.skipped = {}
        for dirpath, dirnames, filenames in os.walk(self.root):  # never follows links to folders
            for d in dirnames:
                if not d.startswith(".") and os.path.islink(os.path.join(dirpath, d)):
                    rel = (Path(dirpath) / d).relative_to(self.root).as_posix()
                    self.skipped[rel] = "a symbolic link, not a folder: skipped"
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue  # temporary files of writers in progress
                p = Path(dirpath) / name
                rel = p.relative_to(self.root).as_posix()
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    self.skipped[rel] = f"{_kind(st.st_mode)}, not a regular file: skipped"
                    continue
                out[rel] = st.st_size
        return out

    def file_origins(self, paths: list[str]) -> dict[str, dict]:
        """When each file was put in place (its inode change time: set by the rename that published
        it, and not settable by a writer, unlike the modification time). No commits, no PRs."""
        out: dict[str, dict] = {}
        for p in paths:
            try:
                st = os.lstat(self.root / p)
            except OSError:
                continue
            when = datetime.fromtimestamp(st.st_ctime_ns / 1e9, timezone.utc)
            out[p] = {"commit": None, "pr": None, "date": when.isoformat(timespec="microseconds"),
                      "ctime_ns": st.st_ctime_ns}
        return out

    def exists(self, paths: list[str]) -> set[str]:
        return {p for p in paths if (self.root / p).is_file() and not (self.root / p).is_symlink()}

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

    def fetch(self, path: str, dest: Path, *, max_bytes: int | None = None) -> None:
        """Copy one regular file to ``dest``, at most ``max_bytes`` of it (then ``dest`` is cut
        there: the caller sees a file over its limit). A symlink, FIFO or device raises
        ``NotARegularFile`` without being read (opened with O_NOFOLLOW | O_NONBLOCK, then fstat)."""
        src = self.root / path
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(src, flags)
        except FileNotFoundError as exc:
            raise RemoteError(f"{path} vanished from the directory remote {self.root}") from exc
        except OSError as exc:
            if os.path.islink(src):
                raise NotARegularFile("a symbolic link, not a regular file: skipped") from exc
            raise RemoteError(f"cannot read {path} on the directory remote {self.root}: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise NotARegularFile(f"{_kind(mode)}, not a regular file: skipped")
            left = max_bytes if max_bytes is not None else -1
            with open(dest, "wb") as out:
                while left != 0:
                    chunk = f.read(1 << 20 if left < 0 else min(1 << 20, left))
                    if not chunk:
                        break
                    out.write(chunk)
                    if left > 0:
                        left -= len(chunk)
