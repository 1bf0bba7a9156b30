"""One workdir, one training run: an exclusive lock on <workdir>/train.lock while a run lives.

Process 0 of a run takes an OS lock (`flock`) on the file, which the kernel
releases when the process ends, however it ends; the file names the holder
(pid, host, start time) so that a second run can say who holds the workdir.
A lock file left by a run that was killed is taken over, saying so. Where the
filesystem has no `flock` (some network filesystems), the file itself is the
lock (created exclusively): a holder on this host that no longer runs is
taken over, saying so; one on another host cannot be checked, and the message
names the file to remove once that run is known to be gone.

Reading a run (evaluate.py, predict.py, `load_run`) takes no lock and writes nothing.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket

from jaxseg.errors import WorkdirLockedError

LOCK_FILE = "train.lock"
# flock fails with these where a filesystem does not support it.
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _holder_record() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _describe(holder: dict | None) -> str:
    holder = holder or {}  # a holder that has not written its record yet
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        f" (since {holder.get('started', '?')})"
    )


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class WorkdirLock:
    """The lock of one workdir; `acquire()` and `release()`, or use it as a context manager."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self.took_over: dict | None = None  # the holder that ended without releasing
        self._fd = None

    def acquire(self) -> "WorkdirLock":
        """Takes the lock; WorkdirLockedError naming the holder if another run has it."""
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise self._locked_error(holder) from None
            except OSError as e:
                os.close(fd)
                if e.errno not in _NO_FLOCK:
                    raise
                self._acquire_without_flock()
                return self
            # The holder before us may have removed the file between our open and flock;
            # then we hold the lock of a file nobody else will open again: start over.
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            self.took_over = _read_holder(fd)
            _write_holder(fd)
            self._fd = fd
        return self

    def _acquire_without_flock(self) -> None:
        """The lock file itself is the lock: linked into place whole, so that it never
        exists without its holder's record."""
        partial = f"{self.path}.{os.getpid()}"
        with open(partial, "w") as f:
            json.dump(_holder_record(), f)
        try:
            for _ in range(3):
                try:
                    os.link(partial, self.path)  # atomic: fails if the file exists
                except FileExistsError:
                    with open(self.path) as f:
                        text = f.read()
                    holder = _parse(text)
                    if text.strip():  # empty: left by a process that tried flock first
                        same_host = holder.get("host") == socket.gethostname()
                        if not same_host or _is_running(int(holder.get("pid", -1))):
                            raise self._locked_error(holder, checked=same_host) from None
                        self.took_over = holder  # its holder is gone: take it over
                    os.remove(self.path)
                    continue
                self._fd = os.open(self.path, os.O_RDONLY)
                return
        finally:
            os.remove(partial)
        raise self._locked_error({})

    def _locked_error(self, holder: dict, checked: bool = True) -> WorkdirLockedError:
        message = (
            f"{self.workdir} is in use by another training run: {_describe(holder)} holds"
            f" {self.path}. Two runs in one workdir would interleave their checkpoints and"
            " metrics: wait for that run to end, or give this one another --workdir."
        )
        if not checked:
            message += (
                f" (This filesystem has no flock and the holder runs on another host, so"
                f" jaxseg cannot tell whether it still runs; remove {self.path} if it does not.)"
            )
        return WorkdirLockedError(message)

    def release(self) -> None:
        """Removes the lock file, then lets the lock go (a no-op if not held)."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _parse(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _read_holder(fd: int) -> dict | None:
    """The record in the lock file, None if it is empty (a new file)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    return _parse(text) if text.strip() else None


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(_holder_record()).encode())
    os.fsync(fd)


@contextlib.contextmanager
def lock_for_training(workdir: str):
    """Holds the workdir's lock inside the `with` block: process 0 takes it; with several
    processes, all of them fail if process 0 could not. Says so when it takes over the
    lock of a run that ended without releasing it."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    lock, error = WorkdirLock(workdir), None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirLockedError as e:
            error = e
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if refused and error is None:
            error = WorkdirLockedError(
                f"{lock.workdir} is in use by another training run (process 0 of this run names it)"
            )
    if error is not None:
        raise error
    if lock.took_over:
        print(
            f"Took over the workdir lock {lock.path} from {_describe(lock.took_over)}: that"
            " run ended without releasing it."
        )
    try:
        yield lock
    finally:
        lock.release()
