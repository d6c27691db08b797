"""The lock that keeps two stores, in one process or in several, off one SQLite file.

SQLite itself lets many connections share a file, but two brokers on one store would each
route only the events they stored themselves, and hand out interleaved seqs to their own
clients. So :class:`SQLiteStore` holds an exclusive :func:`fcntl.flock` lock on a sidecar file,
``<store file>-lock`` (next to the real file, symbolic links resolved), while it is open:

* the kernel releases it when the process ends, however it ends (even ``kill -9``), so a
  crashed broker never leaves a stale lock behind;
* it is taken on its own open file description, so a second store in the *same* process is
  refused too (a POSIX ``fcntl`` record lock would not be: those are per process, and closing
  any descriptor of the file drops them);
* it is taken without waiting (``LOCK_NB``), and the sidecar holds the holder's pid and host
  name, so that the refusal can say who holds it;
* it is released with ``LOCK_UN`` before the descriptor is closed, so that a child process
  forked meanwhile (which shares the descriptor) does not keep it.

The sidecar is left in place when the lock is released (emptied): removing it would let a
process that opened it just before lock a file that no longer has a name. Its presence means
nothing; only the lock counts. On Windows, where there is no ``flock``, a byte far past the
text is locked with :func:`msvcrt.locking`, which the system also releases with the process.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Final

from .._errors import StoreError

__all__ = ["LOCK_SUFFIX", "StoreLock"]

#: The sidecar file is the store file's real path with this added.
LOCK_SUFFIX: Final = "-lock"

# The Windows lock covers one byte here, so that the holder's pid stays readable.
_WINDOWS_LOCK_OFFSET: Final = 1 << 30
# At most this much of the sidecar is read to name the holder.
_HOLDER_TEXT_MAX: Final = 256


class StoreLock:
    """An exclusive lock on one store file, held through an open sidecar file."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str) -> StoreLock:
        """Lock the store file *path* for this store, or fail at once if another holds it.

        Raises:
            StoreError: if another store (in this process or another) holds the lock; the
                message names the file and, when known, the holder's pid and host.
            StoreError: if the sidecar file cannot be created or locked.
        """
        lock_path = os.path.realpath(path) + LOCK_SUFFIX
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"event store {path!r}: cannot create its lock file {lock_path!r} "
                f"({exc.strerror}): check that its directory exists and is writable"
            ) from exc
        try:
            if _try_lock(fd):
                _write_holder(fd)
                return cls(path, fd)
            holder = _holder(fd)
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"event store {path!r}: cannot lock it through {lock_path!r} "
                f"({exc.strerror}): put the store on a local disk"
            ) from exc
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        raise StoreError(f"event store {path!r} is in use by {holder}")

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            _unlock(fd)  # explicitly: a forked child may share the descriptor
        except OSError:
            pass  # closing releases it all the same
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())


def _holder(fd: int) -> str:
    """Who holds the lock, and what to do about it, from what the holder wrote."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, _HOLDER_TEXT_MAX).decode("utf-8", "replace")
    except OSError:
        text = ""
    pid, _, host = text.strip().partition(" ")
    host = "".join(c for c in host if c.isprintable())  # one line, whatever the file holds
    here = socket.gethostname()
    advice = "stop it, or use another store path"
    if not pid.isdigit():  # it has not written it yet, or a foreign file
        return f"another broker: {advice}"
    if int(pid) == os.getpid() and host == here:
        return (
            f"another store in this process (pid {pid}): close that store first, or use "
            f"another store path"
        )
    if host and host != here:
        return f"another broker (pid {pid} on host {host!r}): {advice}"
    return f"another broker (pid {pid}): {advice}"


if sys.platform == "win32":  # pragma: no cover - not tested on CI
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
