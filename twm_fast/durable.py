"""Files that survive a crash: atomic writes, the run directory's lock, and a full disk as one message.

An atomic write goes to `<name>.tmp` in the same directory, is fsynced, renamed over `<name>` and the
directory is fsynced: after a SIGKILL or a power cut the file holds either its old or its new
content, never a part of the new one. A failed write removes its temporary file.

One training process owns a run directory at a time: `RunLock` holds an exclusive `flock` on
`<run>/.lock` for the process's life (the kernel releases it when the process dies, SIGKILL
included, so a crashed run never leaves a stale lock) and records the owner's pid for the message
the next process gets.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"
# errno values that mean "the disk (or the user's quota) is full".
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A write failed for lack of space; its message names the file and the free space."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_message(exc: OSError) -> str:
    """One line for a full disk, whichever write hit it (a checkpoint, a log line, an image)."""
    if isinstance(exc, DiskFull):
        return exc.strerror
    name = exc.filename or "a file"
    return f"no space left on the device writing {name} ({describe_bytes(free_bytes(Path(name)))} free)"


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem of `path` (or of its nearest existing parent), None if unknown."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def describe_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX: the entry lives in the directory's own data)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a filesystem or platform without directory handles: nothing more can be done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Crc32Writer:
    """A binary file that also keeps the CRC32 and the size of what was written through it, and the
    first OSError a write raised (torch.save reports a failed write as a RuntimeError of its own)."""

    def __init__(self, file: BinaryIO):
        self._file, self.crc32, self.size = file, 0, 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            n = self._file.write(view)
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.crc32 = zlib.crc32(view, self.crc32)
        self.size += len(view)
        return n

    def flush(self) -> None:
        self._file.flush()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> tuple[int, int]:
    """Write `path` atomically with `write(file)`; returns (size in bytes, CRC32 of the content).

    On any failure the temporary file is removed and `path` keeps its old content; a full disk
    raises `DiskFull` naming the file and the free space."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    out: _Crc32Writer | None = None
    try:
        with open(tmp, "wb") as f:
            out = _Crc32Writer(f)
            write(out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt too: never leave a half-written file behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if out is not None and out.error is not None and not isinstance(exc, OSError):
            exc = out.error
        if is_disk_full(exc):
            raise DiskFull(exc.errno, f"no space left on the device writing {path} "
                                      f"({describe_bytes(free_bytes(path))} free)") from exc
        raise
    fsync_directory(path.parent)
    return out.size, out.crc32


def file_crc32(path: Path, chunk: int = 1 << 22) -> tuple[int, int]:
    """(size, CRC32) of a file's content, read in 4 MiB chunks."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, crc


class RunDirectoryBusy(ValueError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on a run directory for this process's life (see the module docstring)."""

    NAME = ".lock"

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl  # POSIX; the training CLI's platforms (Linux, macOS)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            raise RunDirectoryBusy(f"run directory {self.path.parent} is in use by another training process "
                                   f"({self._owner()}); wait for it to finish or stop it, then pass --resume "
                                   f"{self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def _owner(self) -> str:
        try:
            return self.path.read_text().strip() or "pid unknown"
        except OSError:
            return "pid unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
