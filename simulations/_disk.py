"""A simulated disk that can lose power at any instant.

It implements the file store's :class:`~koru.events.Disk` seam in memory and keeps
two views: what the operating system shows (every write, at once) and what survives a
power cut. The model, deliberately pessimistic and the same for every file:

* a file's data survives up to its last ``fsync``/``fdatasync``; of every 512-byte
  sector written since, either the old or the new content survives, each sector
  independently (writes after a sync reach the platter in any order); its size is the
  synced size or the current one;
* a directory entry (a file or directory created, renamed or removed) survives only
  once that directory is fsynced; of the changes since its last fsync, a prefix
  survives (the filesystem journal commits them in order). A file whose entry did not
  survive is gone, whatever was synced.

:meth:`SimDisk.cut_after` schedules the cut after a number of disk calls (the cut
then raises :class:`PowerCut` from that call and every later one, as if the process
died with the machine); :meth:`SimDisk.after_power_cut` builds the disk a reboot would
find, drawing every old-or-new choice from the given ``random.Random``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs

__all__ = ["SECTOR", "PowerCut", "SimDisk"]

#: The unit a power cut keeps or loses.
SECTOR = 512


class PowerCut(BaseException):
    """The power was cut: raised by every disk call from the cut on.

    A BaseException, so that no library code handles it as an I/O error: after a power
    cut nothing else reaches the disk, and the process is as good as gone.
    """


@attrs.define(slots=True)
class _Inode:
    is_dir: bool
    data: bytearray = attrs.field(factory=bytearray)
    #: Content as of the last fsync, and the sectors written since.
    synced: bytes = b""
    dirty: set[int] = attrs.field(factory=set)
    #: Permission bits given at creation.
    mode: int = 0o644


@attrs.define(slots=True)
class _Open:
    ino: int
    path: str
    writable: bool


def _norm(path: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.join("/", os.fspath(path)))


class SimDisk:
    """An in-memory filesystem with a power-cut model (see the module docstring)."""

    def __init__(self, *, sync_latency: float = 0.0) -> None:
        #: Real seconds each file sync takes (a slow device: the database then syncs in
        #: a worker thread while its event loop keeps appending).
        self.sync_latency = sync_latency
        self._inodes: dict[int, _Inode] = {0: _Inode(True)}
        #: path -> inode, as the OS shows it, and as it would survive a cut now.
        self._visible: dict[str, int] = {"/": 0}
        self._durable: dict[str, int] = {"/": 0}
        #: Directory path -> entry changes since its last fsync, oldest first.
        self._pending: dict[str, list[tuple[str, str, int | None]]] = {}
        self._fds: dict[int, _Open] = {}
        self._locks: set[str] = set()
        self._next_ino = 1
        self._next_fd = 3
        self._mutex = threading.RLock()
        #: Disk calls made, and the call at which power is cut (None: never).
        self.calls = 0
        self.cut_at: int | None = None
        self.dead = False
        #: Files and bytes written, and syncs (for traces and tests).
        self.syncs = 0

    # -- power -------------------------------------------------------------------------

    def cut_after(self, calls: int) -> None:
        """Cut the power once ``calls`` more disk calls have been made."""
        self.cut_at = self.calls + calls

    def cut(self) -> None:
        """Cut the power now."""
        self.dead = True

    def _enter(self) -> None:
        if self.dead:
            raise PowerCut
        self.calls += 1
        if self.cut_at is not None and self.calls >= self.cut_at:
            self.dead = True
            raise PowerCut

    def after_power_cut(self, rng: random.Random) -> SimDisk:
        """The disk a reboot finds after a cut now: see the module docstring."""
        with self._mutex:
            durable = dict(self._durable)
            for _, changes in sorted(self._pending.items()):
                keep = rng.randint(0, len(changes))
                for change in changes[:keep]:
                    _apply(durable, change)
            # An entry survives only if every directory above it does.
            names = {
                path: ino
                for path, ino in durable.items()
                if all(
                    parent in durable and self._inodes[durable[parent]].is_dir
                    for parent in _parents(path)
                )
            }
            disk = SimDisk()
            copies: dict[int, int] = {0: 0}
            for path in sorted(names, key=lambda p: (p.count("/"), p)):
                ino = names[path]
                if ino not in copies:
                    copies[ino] = disk._new_inode(self._survivor(self._inodes[ino], rng))
                disk._visible[path] = disk._durable[path] = copies[ino]
            return disk

    @staticmethod
    def _survivor(node: _Inode, rng: random.Random) -> _Inode:
        if node.is_dir:
            return _Inode(True)
        old, new = node.synced, bytes(node.data)
        size = len(new) if len(old) == len(new) else rng.choice((len(old), len(new)))
        out = bytearray(old[:size].ljust(size, b"\0"))
        for sector in sorted(node.dirty):
            lo = sector * SECTOR
            if lo < size and rng.random() < 0.5:
                hi = min(lo + SECTOR, size)
                out[lo:hi] = new[lo:hi].ljust(hi - lo, b"\0")
        data = bytes(out)
        return _Inode(False, bytearray(data), data, mode=node.mode)

    def _new_inode(self, node: _Inode) -> int:
        ino = self._next_ino
        self._next_ino += 1
        self._inodes[ino] = node
        return ino

    # -- namespace ---------------------------------------------------------------------

    def _lookup(self, path: str) -> _Inode | None:
        ino = self._visible.get(path)
        return None if ino is None else self._inodes[ino]

    def _parent_dir(self, path: str) -> str:
        parent = os.path.dirname(path)
        node = self._lookup(parent)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if not node.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return parent

    def _change(self, directory: str, change: tuple[str, str, int | None]) -> None:
        _apply(self._visible, change)
        self._pending.setdefault(directory, []).append(change)

    def mkdir(self, path: str) -> None:
        with self._mutex:
            self._enter()
            path = _norm(path)
            parent = self._parent_dir(path)
            if path in self._visible:
                raise FileExistsError(errno.EEXIST, "File exists", path)
            self._change(parent, ("link", path, self._new_inode(_Inode(True))))

    def is_dir(self, path: str) -> bool:
        with self._mutex:
            self._enter()
            node = self._lookup(_norm(path))
            return node is not None and node.is_dir

    def exists(self, path: str) -> bool:
        with self._mutex:
            self._enter()
            return _norm(path) in self._visible

    def listdir(self, path: str) -> list[str]:
        with self._mutex:
            self._enter()
            path = _norm(path)
            node = self._lookup(path)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if not node.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            return sorted(
                os.path.basename(p)
                for p in self._visible
                if p != path and os.path.dirname(p) == path
            )

    def replace(self, source: str, target: str) -> None:
        with self._mutex:
            self._enter()
            source, target = _norm(source), _norm(target)
            directory = self._parent_dir(source)
            if self._parent_dir(target) != directory:
                raise OSError(errno.EXDEV, "SimDisk renames within one directory only", target)
            ino = self._visible.get(source)
            if ino is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", source)
            self._change(directory, ("rename", f"{source}\0{target}", ino))

    def unlink(self, path: str) -> None:
        with self._mutex:
            self._enter()
            path = _norm(path)
            node = self._lookup(path)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if node.is_dir:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            self._change(self._parent_dir(path), ("unlink", path, None))

    def fsync_dir(self, path: str) -> None:
        with self._mutex:
            self._enter()
            path = _norm(path)
            node = self._lookup(path)
            if node is None or not node.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            for change in self._pending.pop(path, []):
                _apply(self._durable, change)
            self.syncs += 1
            self._collect()

    def _collect(self) -> None:
        """Forget the files nothing reaches any more: no name the OS shows, none a cut
        could bring back (durable, or a change not yet synced), no open descriptor.
        Why: a database replaces its checkpoint and tables again and again, and each
        file kept its bytes twice (written and synced) for ever; a five-node run of
        five virtual minutes at 20 operations per second was killed at 24 GB."""
        live = set(self._visible.values())
        live.update(self._durable.values())
        live.update(entry.ino for entry in self._fds.values())
        for changes in self._pending.values():
            live.update(ino for _, _, ino in changes if ino is not None)
        for ino in [ino for ino in self._inodes if ino not in live]:
            del self._inodes[ino]

    def lock(self, directory: str) -> int:
        with self._mutex:
            self._enter()
            directory = _norm(directory)
            node = self._lookup(directory)
            if node is None or not node.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", directory)
            if directory in self._locks:
                raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")
            self._locks.add(directory)
            fd = self._next_fd
            self._next_fd += 1
            self._fds[fd] = _Open(self._visible[directory], directory, False)
            return fd

    def unlock(self, handle: int) -> None:
        with self._mutex:
            # Releasing a lock is not a disk write: it works after the cut too (the
            # dead process's locks go with it).
            entry = self._fds.pop(handle)
            self._locks.discard(entry.path)

    # -- files -------------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        with self._mutex:
            self._enter()
            path = _norm(path)
            node = self._lookup(path)
            if node is None:
                if not flags & os.O_CREAT:
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
                parent = self._parent_dir(path)
                self._change(parent, ("link", path, self._new_inode(_Inode(False, mode=mode))))
                node = self._lookup(path)
                assert node is not None
            elif flags & os.O_CREAT and flags & os.O_EXCL:
                raise FileExistsError(errno.EEXIST, "File exists", path)
            if node.is_dir:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
            if flags & os.O_TRUNC and writable:
                self._resize(node, 0)
            fd = self._next_fd
            self._next_fd += 1
            self._fds[fd] = _Open(self._visible[path], path, writable)
            return fd

    def is_private(self, fd: int) -> bool:
        with self._mutex:
            self._enter()
            node = self._file(fd)
            return not node.is_dir and not node.mode & 0o077

    def close(self, fd: int) -> None:
        with self._mutex:
            entry = self._fds.pop(fd, None)
            if entry is None:
                raise OSError(errno.EBADF, "Bad file descriptor")
            if self._visible.get(entry.path) != entry.ino:  # the last of a removed file?
                self._collect()

    def _file(self, fd: int, write: bool = False) -> _Inode:
        entry = self._fds.get(fd)
        if entry is None:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if write and not entry.writable:
            raise OSError(errno.EBADF, "Bad file descriptor (not open for writing)")
        return self._inodes[entry.ino]

    @staticmethod
    def _resize(node: _Inode, size: int) -> None:
        old = len(node.data)
        if size < old:
            del node.data[size:]
        else:
            node.data.extend(bytes(size - old))
        lo, hi = min(old, size), max(old, size)
        node.dirty.update(range(lo // SECTOR, -(-hi // SECTOR)))

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        with self._mutex:
            self._enter()
            node = self._file(fd, write=True)
            chunk = bytes(data)
            end = offset + len(chunk)
            if end > len(node.data):
                self._resize(node, end)
            node.data[offset:end] = chunk
            if chunk:
                node.dirty.update(range(offset // SECTOR, -(-end // SECTOR)))
            return len(chunk)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        with self._mutex:
            self._enter()
            return bytes(self._file(fd).data[offset : offset + size])

    def size(self, fd: int) -> int:
        with self._mutex:
            self._enter()
            return len(self._file(fd).data)

    def truncate(self, fd: int, size: int) -> None:
        with self._mutex:
            self._enter()
            self._resize(self._file(fd, write=True), size)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        with self._mutex:
            self._enter()
            node = self._file(fd, write=True)
            if offset + length > len(node.data):
                self._resize(node, offset + length)

    def map_append(self, fd: int, offset: int, length: int) -> None:
        """None: every write goes through :meth:`pwrite`, where this disk decides what
        a power cut keeps of it."""
        return None

    def fdatasync(self, fd: int) -> None:
        self.fsync(fd)

    def fsync(self, fd: int) -> None:
        with self._mutex:
            self._enter()
            node = self._file(fd)
            # What the sync covers is what was written before it began: writes made
            # while it runs stay unsynced (and can be lost), as on a real device.
            snapshot, before = bytes(node.data), node.dirty
            node.dirty = set()
        if self.sync_latency:
            time.sleep(self.sync_latency)  # clock-ok: simulated device latency
        with self._mutex:
            if self.dead:  # the power went while the device was syncing
                node.dirty |= before
                raise PowerCut
            node.synced = snapshot
            self.syncs += 1

    def read_file(self, path: str) -> bytes:
        with self._mutex:
            self._enter()
            path = _norm(path)
            node = self._lookup(path)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if node.is_dir:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            return bytes(node.data)

    def map_file(self, path: str) -> bytes:
        return self.read_file(path)

    def mapped(self, path: str) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext(self.read_file(path))

    # -- inspection (for tests; not disk calls) ------------------------------------------

    def files(self) -> dict[str, bytes]:
        """Every file the OS shows now, by path."""
        with self._mutex:
            return {
                p: bytes(self._inodes[i].data)
                for p, i in self._visible.items()
                if not self._inodes[i].is_dir
            }

    def write(self, path: str, data: bytes) -> None:
        """Replace a file's content as a tamperer would (synced, no disk call counted)."""
        with self._mutex:
            node = self._lookup(_norm(path))
            assert node is not None and not node.is_dir
            node.data[:] = data
            node.synced = bytes(data)
            node.dirty.clear()

    def walk(self) -> Iterator[str]:
        with self._mutex:
            yield from sorted(self._visible)


def _parents(path: str) -> Iterator[str]:
    while path != "/":
        path = os.path.dirname(path)
        yield path


def _apply(names: dict[str, int], change: tuple[str, str, int | None]) -> None:
    kind, path, ino = change
    if kind == "link":
        assert ino is not None
        names[path] = ino
    elif kind == "unlink":
        names.pop(path, None)
    else:  # rename: "source\0target"
        source, target = path.split("\0")
        assert ino is not None
        names.pop(source, None)
        names[target] = ino
