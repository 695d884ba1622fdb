"""The file operations that change a memory directory, in one small layer.

Every write, fsync, rename, unlink and mkdir of the long-term store, its journal and its indexes goes
through a ``FileOps`` object. ``DEFAULT`` does the real thing (the ``os`` calls); tests pass a double
that keeps what was not yet made durable apart and can throw it away, as a power cut would
(tests/_fsdouble.py). Reads do not go through the layer: they see what the operating system shows.
"""
from __future__ import annotations

import os
from pathlib import Path


class FileOps:
    """Real file operations (POSIX semantics; directory fsync is a no-op where unsupported)."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        """``os.open``: a file descriptor."""
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """One ``os.write``; returns the bytes written (may be fewer than given)."""
        return os.write(fd, data)

    def lseek(self, fd: int, pos: int, how: int) -> int:
        return os.lseek(fd, pos, how)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        """Make the file's data (and size) durable."""
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically replace ``dst`` by ``src`` (durable only after ``fsync_dir`` of the directory)."""
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def mkdir(self, path: Path, exist_ok: bool = True) -> None:
        """Create one directory (its parent must exist)."""
        Path(path).mkdir(exist_ok=exist_ok)

    def fsync_dir(self, path: Path) -> None:
        """Make the directory's entries (new, renamed, removed names) durable."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(fd)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(fd)


#: The real file operations; stores, journals and indexes use this unless given another ``FileOps``.
DEFAULT = FileOps()


def makedirs(fs: FileOps, path: Path, durable: bool) -> None:
    """Create ``path`` and its missing parents; with ``durable`` each new name is fsynced into its parent."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        fs.mkdir(d)
        if durable:
            fs.fsync_dir(d.parent)
