"""Whole files or none: written under a temporary name, renamed when complete.

The temporary name is `.NAME.tmpPID` beside the file (hidden, and no image extension, so
no directory listing of images picks it up). It is removed when the write fails (a full
disk, an unwritable directory, an exception); a process killed while writing leaves it,
and `sweep_stale_temporaries` removes such files whose process is gone.
"""

import contextlib
import os
import re
from collections.abc import Iterator

# Also matches the names of earlier versions (NAME.tmpPID, not hidden).
_TEMPORARY = re.compile(r"^\.?(.+)\.tmp(\d+)$")


def temporary_path(path: str) -> str:
    """Where `path` is written before it is complete (this process's temporary name)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path to write; renames it to `path` when the block completes, and
    removes it if the block (or the rename) fails, whatever the error."""
    partial = temporary_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise


def write_atomically(path: str, data: bytes) -> None:
    """Writes a whole file or nothing: a failure leaves the old file (or none), and no
    temporary file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as partial, open(partial, "wb") as f:
        f.write(data)


_MAX_PID = 2**22  # Linux's limit: a larger number is no process ID jaxseg wrote


def _stale(pid: int) -> bool:
    """Whether `pid` is a process ID that no process on this machine has now."""
    if not 0 < pid <= _MAX_PID or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: another user's process
        return False
    return False


def sweep_stale_temporaries(
    directory: str,
    *,
    of: str | None = None,
    recursive: bool = True,
    skip: tuple[str, ...] = (),
) -> list[str]:
    """Removes the temporary files of jaxseg's naming whose writing process no longer runs
    on this machine, in `directory` and (if `recursive`) its subdirectories but those
    named in `skip`; given `of` (a file name), only that file's. Any other file is left.

    Returns:
      The paths removed.
    """
    removed = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if recursive and d not in skip]
        for name in files:
            match = _TEMPORARY.match(name)
            if match is None or of not in (None, match.group(1)):
                continue
            if not _stale(int(match.group(2))):
                continue
            path = os.path.join(root, name)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed
