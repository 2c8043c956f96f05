"""One writer per output: an exclusive lock that names the process holding it.

A command that writes an output (a run folder, a result file, a dataset folder) holds an
exclusive ``flock`` on a small lock file for as long as it writes. A second writer is refused at
once with one line naming the first: its process id, command and start time, read from the lock
file. The kernel releases a ``flock`` when its process dies, however it dies, so the lock of a
killed process is simply taken over by the next writer: there are no stale locks to clean up.
The lock file itself stays (empty of meaning once unlocked).

The descriptor is opened close-on-exec; worker pools here start their processes with
``forkserver`` or ``spawn``, which do not inherit it, so a worker never keeps a lock alive.

POSIX only: without ``fcntl`` (Windows) outputs are not locked.
"""

import datetime
import os
import socket
import sys

from dr_saliency.core.errors import BusyError

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["LOCK_NAME", "OutputLock", "describe_holder", "lock_file", "lock_folder"]

#: The lock file of a folder output.
LOCK_NAME = ".dr_saliency.lock"


class OutputLock:
    """An exclusive, non-blocking lock on ``lock_path``; a context manager.

    Args:
        lock_path: str, the lock file (created when missing).
        target: str, the output it protects, for messages.
        what: str, what the output is ("a run folder", ...), for messages.

    Raises (on entering):
        BusyError: another live process holds the lock (naming it).
    """

    def __init__(self, lock_path, target, what):
        self.lock_path, self.target, self.what = os.fspath(lock_path), os.fspath(target), what
        self._fd = None

    def __enter__(self):
        if fcntl is None:  # pragma: no cover
            return self
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise BusyError(f"Expected {self.what} no other process is writing. Received: "
                            f"{self.target!r} is being written by {holder}; wait for it to "
                            "finish or stop it", self.target, holder) from None
        os.ftruncate(fd, 0)
        command = " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])
        started = datetime.datetime.now().isoformat(timespec="seconds")
        # An argument that is not valid UTF-8 (a file name) is shown escaped, not refused.
        os.write(fd, f"{os.getpid()}\n{socket.gethostname()}\n{started}\n{command}\n"
                 .encode("utf-8", "backslashreplace"))
        self._fd = fd
        return self

    def __exit__(self, *exc):
        self.release()

    def release(self):
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_holder(fd):
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").splitlines()
    except OSError:
        text = []
    if len(text) >= 4:
        pid, host, started, command = text[:4]
        return f"process {pid} on {host} ({command[:120]}, since {started})"
    return "another process"


def describe_holder(lock_path):
    """Who holds the lock file ``lock_path``, for messages ("another process" when nobody does:
    its content then names a process that is gone)."""
    try:
        fd = os.open(os.fspath(lock_path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "another process"
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return "another process"  # not held: the recorded writer has finished
            except BlockingIOError:
                pass
        return _read_holder(fd)
    finally:
        os.close(fd)


def lock_folder(folder, what="a folder"):
    """An :class:`OutputLock` on ``folder/.dr_saliency.lock`` (the folder must exist)."""
    return OutputLock(os.path.join(os.fspath(folder), LOCK_NAME), folder, what)


def lock_file(path, what="a file"):
    """An :class:`OutputLock` on ``<path>.lock`` beside the file ``path``."""
    return OutputLock(os.fspath(path) + ".lock", path, what)
