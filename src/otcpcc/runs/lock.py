"""One writer per run directory: an advisory lock held for the whole of a training run.

``RunLock(out)`` creates ``out/.lock`` and holds an exclusive ``flock`` on it (``msvcrt.locking``
on Windows); the file records the holder's pid and host. A second writer finds the lock taken
and is refused with one line naming the holder. The operating system drops the lock when its
process dies (``kill -9`` included), so a lock file left behind by a dead process is stale and
simply taken over. Advisory: only otcpcc processes honour it; on network file systems without
working ``flock`` it protects nothing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType

from ..flags import make_dir

LOCK_FILE = ".lock"


class RunLockedError(ValueError):
    """Another process is writing this run directory."""


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class RunLock:
    """Exclusive lock on run directory ``out`` (created when missing), as a context manager.

    ``acquire`` raises :class:`RunLockedError` (a ``ValueError``) when another live process holds
    it. ``release`` removes the lock file, and ``out`` itself when this lock created it and it is
    left empty (a run refused before it wrote anything leaves no directory behind).
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self._fd: int | None = None
        self._made_dir = False

    def acquire(self) -> RunLock:
        if self.out.exists() and not self.out.is_dir():
            raise RunLockedError(f"--out {self.out} is a file, not a directory; choose another --out")
        self._made_dir = make_dir(self.out, "--out")  # a path under a file: one line, no mkdir
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = os.read(fd, 200).decode("utf-8", "replace").split() or ["?"]
                os.close(fd)
                self._remove_dir_if_made()
                raise RunLockedError(
                    f"run directory {self.out} is being written by another otcpcc process "
                    f"(pid {' on '.join(holder[:2])}); wait for it to finish or choose another --out"
                )
            # the file may have been removed (and recreated) by its previous holder between our
            # open and our lock: then we hold a lock on a dead file, so try again
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_dir_if_made()

    def _remove_dir_if_made(self) -> None:
        if self._made_dir:
            try:
                self.out.rmdir()  # only if empty
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
