"""A power-cut double of memory.fsops.FileOps: it does the real operations and keeps apart what is not durable.

The files on disk play the page cache (no real fsync is done) (what a running process sees). Beside them the double keeps the
durable state the POSIX rules give:

- a file's data becomes durable at ``fsync`` of one of its descriptors (all of it, and its size);
- a directory's entries (created, renamed, removed names) become durable at ``fsync_dir`` of it;
- nothing else is durable (a rename or a new file is not, a write is not).

``PowerCutFS(root, cut_at=n)`` lets the first ``n`` changing operations happen, raises ``PowerCut`` at
the next one and from then on (the process is dead). ``crash(mode)`` then rewrites the tree under
``root`` to what a reboot would find:

- "strict": durable names only, each file with its last fsynced data;
- "torn": durable names; each file keeps its fsynced data plus the first half of what was written after
  (pages of unsynced writes may reach the disk);
- "metadata": every name as the process last saw it (a journaling file system committed the renames)
  with only the fsynced data in the files (delayed allocation: the classic zero-length file).

A file under ``root`` that was changed without the double (not routed through the layer) makes
``crash`` raise, so the test also proves that every change goes through ``FileOps``.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from memory.fsops import FileOps

MODES = ("strict", "torn", "metadata")
_DIR = "<dir>"


class PowerCut(BaseException):
    """The simulated power cut (a BaseException: code under test must not catch it as an OSError)."""


class _Inode:
    """A file as the double knows it: its durable (fsynced) data."""

    def __init__(self, synced: bytes) -> None:
        self.synced = synced
        self.current: bytes | None = None  # filled in at crash time


def _listing(d: Path) -> dict[str, os.stat_result]:
    return {e.name: e.stat(follow_symlinks=False) for e in os.scandir(d)}


class PowerCutFS(FileOps):
    """Real file operations under ``root`` plus a model of what survives a power cut."""

    def __init__(self, root: Path, cut_at: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.cut_at = cut_at
        self.ops = 0  # changing operations done so far
        self.fsyncs = 0
        self.dead = False
        self._by_ino: dict[int, _Inode] = {}
        self._fds: dict[int, _Inode] = {}
        self._durable: dict[Path, dict[str, object]] = {}  # directory -> name -> _Inode | _DIR
        for dirpath, dirnames, filenames in os.walk(self.root):  # what exists at "boot" is durable
            d = Path(dirpath)
            names: dict[str, object] = {n: _DIR for n in dirnames}
            for n in filenames:
                ino = _Inode((d / n).read_bytes())
                self._by_ino[(d / n).stat().st_ino] = ino
                names[n] = ino
            self._durable[d] = names

    # ---- bookkeeping ------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.dead:
            raise PowerCut("the power is off")
        if self.cut_at is not None and self.ops >= self.cut_at:
            self.dead = True
            raise PowerCut(f"power cut before operation {self.ops}")
        self.ops += 1

    def _inside(self, path: Path) -> bool:
        p = Path(os.path.abspath(path))
        return p == self.root or self.root in p.parents

    def _inode_of_fd(self, fd: int) -> _Inode | None:
        return self._fds.get(fd)

    # ---- FileOps ----------------------------------------------------------------------------------
    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        self._tick()
        existed = os.path.exists(path)
        fd = os.open(path, flags, mode)
        if self._inside(path):
            ino = os.fstat(fd).st_ino
            if not existed:  # a new file: nothing of it is durable yet (inode numbers may be reused)
                self._by_ino[ino] = _Inode(b"")
            inode = self._by_ino.get(ino)
            if inode is None:
                os.close(fd)
                raise AssertionError(f"{path} was created without going through FileOps")
            self._fds[fd] = inode
        return fd

    def write(self, fd: int, data) -> int:
        self._tick()
        return os.write(fd, data)

    def lseek(self, fd: int, pos: int, how: int) -> int:
        if self.dead:
            raise PowerCut("the power is off")
        return os.lseek(fd, pos, how)

    def ftruncate(self, fd: int, size: int) -> None:
        self._tick()
        os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        self._tick()  # no real fsync: the double decides what is durable
        self.fsyncs += 1
        inode = self._inode_of_fd(fd)
        if inode is not None:
            inode.synced = _read_fd(fd)

    def close(self, fd: int) -> None:
        if self.dead:  # the crash closed every descriptor of the dead process already
            return
        self._fds.pop(fd, None)
        os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        self._tick()
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        self._tick()
        os.unlink(path)

    def mkdir(self, path: Path, exist_ok: bool = True) -> None:
        self._tick()
        Path(path).mkdir(exist_ok=exist_ok)

    def fsync_dir(self, path: Path) -> None:
        self._tick()
        self.fsyncs += 1
        d = Path(os.path.abspath(path))
        if not self._inside(d):
            return
        names: dict[str, object] = {}
        for n, st in _listing(d).items():
            if stat.S_ISDIR(st.st_mode):
                names[n] = _DIR
            else:
                inode = self._by_ino.get(st.st_ino)
                if inode is None:
                    raise AssertionError(f"{d / n} was created without going through FileOps")
                names[n] = inode
        self._durable[d] = names

    # ---- the cut ------------------------------------------------------------------------------------
    def crash(self, mode: str = "strict") -> None:
        """Power is lost now: rewrite the tree under ``root`` to what survives (see the module doc)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.dead = True
        # what the process saw, before its descriptors go away
        for fd, inode in list(self._fds.items()):
            inode.current = _read_fd(fd)
            os.close(fd)
        self._fds.clear()
        seen: dict[Path, dict[str, object]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            d = Path(dirpath)
            names: dict[str, object] = {n: _DIR for n in dirnames}
            for n in filenames:
                st = (d / n).stat()
                inode = self._by_ino.get(st.st_ino)
                if inode is None:
                    raise AssertionError(f"{d / n} was created without going through FileOps")
                inode.current = (d / n).read_bytes()
                names[n] = inode
            seen[d] = names
        tree = self._durable if mode != "metadata" else seen

        def content(inode: _Inode) -> bytes:
            if mode == "torn" and inode.current is not None and inode.current.startswith(inode.synced):
                extra = inode.current[len(inode.synced):]
                return inode.synced + extra[: len(extra) // 2]
            return inode.synced

        for child in list(self.root.iterdir()):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

        def build(d: Path) -> None:
            for n, what in tree.get(d, {}).items():
                if what is _DIR:
                    (d / n).mkdir()
                    build(d / n)
                else:
                    (d / n).write_bytes(content(what))

        build(self.root)


def _read_fd(fd: int) -> bytes:
    with open(f"/proc/self/fd/{fd}", "rb") as f:
        return f.read()
