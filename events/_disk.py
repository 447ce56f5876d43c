"""The filesystem seam: every call the file store makes to the operating system.

:class:`OsDisk` is the real thing, plain ``os`` calls. The seam exists so that the
same store code runs on a simulated disk (``koru.simulations.SimDisk``) that models
what a power cut keeps: what was fsynced, and for every sector written since, either
its old or its new content; directory entries only once their directory is fsynced.
That is how the crash tests (and later the simulator) cut power at any instant.

Methods raise ``OSError`` exactly as the ``os`` functions they mirror; the store
turns those into :class:`~koru.StorageError`\\ s naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import mmap
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO, Protocol

__all__ = ["IN_PLACE_FILESYSTEMS", "Disk", "OsDisk", "overwrites_in_place"]

_ZEROS = bytes(256 * 1024)


def _zeros(length: int) -> memoryview:
    """``length`` zero bytes (of the shared block when it is long enough)."""
    return memoryview(_ZEROS)[:length] if length <= len(_ZEROS) else memoryview(bytes(length))


class Disk(Protocol):
    """What the file store needs from a filesystem. Paths are ``str``."""

    def lock(self, directory: str) -> int:
        """Take the exclusive, non-blocking writer lock on ``directory``; returns a
        handle for :meth:`unlock`. Raises BlockingIOError if another holder has it.

        The lock is on the directory itself, not on a file inside it: deleting or
        replacing a file cannot hand the database to a second writer.
        """
        ...

    def unlock(self, handle: int) -> None: ...

    def mkdir(self, path: str) -> None: ...

    def is_dir(self, path: str) -> bool: ...

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]: ...

    def open(self, path: str, flags: int, mode: int = 0o644) -> int: ...

    def close(self, fd: int) -> None: ...

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int: ...

    def pread(self, fd: int, size: int, offset: int) -> bytes: ...

    def size(self, fd: int) -> int: ...

    def truncate(self, fd: int, size: int) -> None: ...

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve ``length`` bytes from ``offset`` (growing the file to cover them),
        which then read as zeros; OSError EOPNOTSUPP where unsupported."""
        ...

    def is_private(self, fd: int) -> bool:
        """True if the open file is a regular file of this user that nobody else may
        read or write (for key files)."""
        ...

    def fdatasync(self, fd: int) -> None: ...

    def fsync(self, fd: int) -> None: ...

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (files created, renamed, removed) durable."""
        ...

    def read_file(self, path: str) -> bytes:
        """A whole file's bytes (FileNotFoundError if absent)."""
        ...

    def replace(self, source: str, target: str) -> None: ...

    def unlink(self, path: str) -> None: ...

    def map_append(self, fd: int, offset: int, length: int) -> mmap.mmap | None:
        """A shared, writable map of ``length`` bytes of the open segment ``fd`` from
        ``offset`` (a multiple of ``mmap.ALLOCATIONGRANULARITY``), all of it inside the
        file as :meth:`allocate` grew it, through which the store writes the records it
        would otherwise hand to :meth:`pwrite` (``fd`` is open for reading and writing).

        None to have every write go through :meth:`pwrite`: a disk that models what
        reaches its files (a simulated disk, a test's recording disk) returns None.
        """
        ...

    def map_file(self, path: str) -> bytes | mmap.mmap:
        """The bytes of a file that never changes again (a table), to keep and read in
        place: a memory map where possible (close it when done)."""
        ...

    def mapped(self, path: str) -> contextlib.AbstractContextManager[bytes | mmap.mmap]:
        """The file's bytes for one sequential pass (a memory map where possible).

        Only for files no other process truncates while they are read: a read-only
        opener racing a writer reads with :meth:`read_file` instead, since touching a
        mapped page past a file's new end kills the process with SIGBUS.
        """
        ...


#: Filesystems that overwrite a file's allocated blocks in place: a write into a map of
#: zeros already written needs no new space. Not copy-on-write ones (btrfs, zfs), nor
#: xfs: a reflink copy of a live database (plain ``cp`` there, since coreutils 9)
#: shares the zeros allocated ahead, and overwriting them needs new space.
IN_PLACE_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "tmpfs"})


@functools.lru_cache(maxsize=64)
def overwrites_in_place(device: int, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether the filesystem mounted from ``device`` (an ``st_dev``) is one of
    :data:`IN_PLACE_FILESYSTEMS`, read from the mount table; False when it cannot be
    told (no such table, a device it does not list)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as table:
            for line in table:
                fields = line.split()
                # id parent major:minor root mount-point options [optional...] - type ...
                if len(fields) > 2 and fields[2] == wanted and "-" in fields[5:]:
                    kind = fields[fields.index("-", 5) + 1 :][:1]
                    return bool(kind) and kind[0] in IN_PLACE_FILESYSTEMS
    except OSError:
        pass
    return False


class OsDisk:
    """The operating system's filesystem."""

    def lock(self, directory: str) -> int:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def unlock(self, handle: int) -> None:
        os.close(handle)  # closing the last descriptor releases the flock

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_ACCMODE == os.O_RDONLY:
            # A named pipe put in a file's place would block the open for ever (on
            # the event loop, out of any cancel scope's reach); a file it never is.
            flags |= os.O_NONBLOCK
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        # Zeros written, not posix_fallocate: fallocate leaves unwritten extents, and
        # every fdatasync after a write into one must commit its conversion to written
        # through the filesystem journal. Into blocks that hold zeros already, it
        # flushes the data alone: 0.23 -> 0.13 ms per write+fdatasync here (ext4), and
        # group commit's rounds under sync="always" are that much shorter.
        zeros = _zeros(length)
        while zeros:
            n = os.pwrite(fd, zeros, offset)
            zeros, offset = zeros[n:], offset + n

    def map_append(self, fd: int, offset: int, length: int) -> mmap.mmap | None:
        # Why a map: a record copied into it is in the page cache at once, as a pwrite
        # puts it there, without the system call (1.2 -> 0.2 µs a record here), and an
        # fdatasync of the file writes its dirty pages out as it writes a pwrite's.
        # Not for a subclass that overrides pwrite: it sees every write, as it expects.
        # Nor on a filesystem that may need new space to overwrite the zeros allocate()
        # wrote (copy-on-write ones): there a full disk would kill the process with
        # SIGBUS at a write into the map, where pwrite raises ENOSPC.
        st = os.fstat(fd)
        if (
            type(self).pwrite is not OsDisk.pwrite
            or not overwrites_in_place(st.st_dev)
            or offset + length > st.st_size  # past the file's end a write is SIGBUS
        ):
            return None
        return mmap.mmap(
            fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
        )

    def is_private(self, fd: int) -> bool:
        st = os.fstat(fd)
        return stat.S_ISREG(st.st_mode) and not st.st_mode & 0o077 and st.st_uid == os.geteuid()

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_file(self, path: str) -> bytes:
        with _regular(path) as f:
            return f.read()

    def replace(self, source: str, target: str) -> None:
        os.replace(source, target)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def map_file(self, path: str) -> bytes | mmap.mmap:
        with _regular(path) as f:
            if not os.fstat(f.fileno()).st_size:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    @contextlib.contextmanager
    def mapped(self, path: str) -> Iterator[bytes | mmap.mmap]:
        with _regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if not size:
                yield b""
                return
            m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        try:
            yield m
        finally:
            m.close()


def _regular(path: str) -> BinaryIO:
    """``path`` opened for reading, refused (OSError) unless it is a regular file: a
    named pipe or a device in a file's place (a link to ``/dev/zero``, say) would block
    the open for ever or be read without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
