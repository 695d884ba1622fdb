"""Crash-safe files for a memory directory: atomic writes, the append-only journal, the directory lock.

- ``atomic_write``: temp file, fsync, rename into place, directory fsync; a crash leaves the old file or
  the new one, never a mix.
- ``Journal``: one JSON line per event, each carrying a crc32 of its body. ``append`` writes a line and
  fsyncs it; a failed append cuts the file back to its last good size. ``read_journal`` replays a file:
  a torn last line (a crash during an append) is cut off with a warning, a line failing its crc is
  skipped with a warning.
- ``DirLock``: an advisory exclusive lock (POSIX ``flock``) so that two writers never share one journal.

Every byte goes through ``write_all`` (module level, so that tests can simulate a full disk).
File descriptors are closed by ``weakref.finalize`` too, so a forgotten owner still releases the lock.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import warnings
import weakref
import zlib
from pathlib import Path

try:  # advisory lock so that two writers never share one journal (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# durable writes


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (the one place that writes store bytes)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or a new file in it survives a crash (no-op where unsupported)."""
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


def atomic_write(path: Path, data: bytes, durable: bool) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (+ directory fsync). Cleans up on error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def warn(msg: str) -> None:
    """Log and emit a RuntimeWarning about damaged data that was skipped."""
    logger.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------
# journal lines


def _line_crc(body: dict) -> str:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return f"{zlib.crc32(raw):08x}"


def encode_line(body: dict) -> bytes:
    """One journal line: ``body`` as canonical JSON plus its crc32, newline-terminated."""
    return (json.dumps({**body, "crc": _line_crc(body)}, sort_keys=True, separators=(",", ":"),
                       ensure_ascii=True) + "\n").encode()


def decode_line(raw: bytes) -> dict | None:
    """A journal line's body, or None when it does not parse or fails its crc."""
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(d, dict) or "crc" not in d:
        return None
    crc = d.pop("crc")
    return d if crc == _line_crc(d) else None


def read_journal(path: Path, durable: bool, *, repair: bool = True) -> list[tuple[int, dict]]:
    """The good lines of a journal as (1-based line number, body), in file order.

    A last line without its newline (an append cut short by a crash) is ignored with a warning and, with
    ``repair`` (a writer opening the store), cut off the file; a reader leaves the file as it is. A line
    that fails to parse or its crc is skipped with a warning. A missing file reads as empty.
    """
    data = path.read_bytes() if path.exists() else b""
    pieces = data.split(b"\n")
    pos = 0
    out: list[tuple[int, dict]] = []
    for i, raw in enumerate(pieces):
        if i == len(pieces) - 1:
            if raw:  # no newline: the append was cut short by a crash (or is being written right now)
                warn(f"{path}: truncated last journal line ({len(raw)} bytes) ignored")
                if not repair:
                    break
                with open(path, "r+b") as f:
                    f.truncate(pos)
                    if durable:
                        os.fsync(f.fileno())
            break
        pos += len(raw) + 1
        if not raw.strip():
            continue
        body = decode_line(raw)
        if body is None:
            warn(f"{path}: journal line {i + 1} is corrupt (bad JSON or checksum); skipped")
            continue
        out.append((i + 1, body))
    return out


class Journal:
    """An open journal file for appending (one writer: the caller serialises ``append``)."""

    def __init__(self, path: Path, durable: bool) -> None:
        """Open (or create) ``path`` for appending; with ``durable`` its directory is fsynced too."""
        self.path = Path(path)
        self.durable = durable
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        self._fin = weakref.finalize(self, close_quietly, self._fd)
        try:
            self.size = os.lseek(self._fd, 0, os.SEEK_END)  # bytes of whole lines written so far
            if durable:
                fsync_dir(self.path.parent)
        except BaseException:
            self.close()
            raise

    def append(self, line: bytes) -> None:
        """Append one encoded line and fsync; on failure cut the journal back to its last good size."""
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"journal {self.path} is closed")
        try:
            os.lseek(fd, self.size, os.SEEK_SET)
            write_all(fd, line)
            if self.durable:
                os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, self.size)
                if self.durable:
                    os.fsync(fd)
            except OSError as e2:  # the partial line stays; the next append starts a fresh line after it
                logger.error("could not cut back the journal after a failed append: %s", e2)
                try:
                    self.size = os.lseek(fd, 0, os.SEEK_END)
                    write_all(fd, b"\n")
                    self.size += 1
                except OSError:
                    pass
            raise
        self.size += len(line)

    def close(self) -> None:
        """Close the file. Idempotent."""
        self._fin()
        self._fd = None


# ---------------------------------------------------------------------------------------------------
# directory lock


class DirLock:
    """An exclusive advisory lock on ``directory`` (held through the file ``lock_name`` in it)."""

    def __init__(self, directory: Path, lock_name: str) -> None:
        """Take the lock or raise RuntimeError naming the directory (no-op where flock is missing)."""
        self._fd: int | None = None
        self._fin = None
        if fcntl is None:
            return
        fd = os.open(Path(directory) / lock_name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(f"memory directory {directory} is in use by another open store; "
                               f"close that one first") from None
        self._fd = fd
        self._fin = weakref.finalize(self, close_quietly, fd)

    def release(self) -> None:
        """Release the lock (closing its fd releases the flock). Idempotent."""
        if self._fin is not None:
            self._fin()
        self._fd = None
