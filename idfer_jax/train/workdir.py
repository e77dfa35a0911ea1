"""The work directory of a run: created and checked up front, and locked while a run writes to it.

`locked(workdir)` creates the folder (one clear `WorkdirError` naming the path when it is a file, lies
under a file, or cannot be written), then takes an exclusive `fcntl.flock` on `workdir/.lock`, which
holds the pid of the process that has it. A second `idfer train` on the same workdir stops at once with a
message naming that pid. The kernel drops the lock when its process ends, however it ends, so a lock left
by a killed run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from idfer_jax.errors import UserError
from idfer_jax.train.checkpoint import WorkdirError, workdir_error

LOCK_FILE = ".lock"


class WorkdirBusyError(UserError):
    """Another process holds the lock on the work directory."""


def prepare(workdir: str) -> str:
    """Creates `workdir` if needed and returns its absolute path; WorkdirError when it cannot be used."""
    path = os.path.abspath(os.fspath(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir {path} is a file, not a directory; pass a directory (it is created "
                           "if missing), e.g. another name.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise workdir_error(e, path, "create the work directory") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise workdir_error(OSError(errno.EACCES, os.strerror(errno.EACCES), path), path,
                            "write to the work directory")
    return path


@contextlib.contextmanager
def locked(workdir: str, command: str = "idfer train") -> Iterator[str]:
    """Holds the work directory's lock for the block; yields its absolute path."""
    path = prepare(workdir)
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise workdir_error(e, path, "write to the work directory") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, holder_command = _read_holder(fd)
            who = f"process {holder}" if holder else "another process"
            raise WorkdirBusyError(
                f"{path} is in use by {who} (`{holder_command or 'idfer'}` on this workdir; lock file "
                f"{lock_path}). Wait for it to finish or stop it{f' (kill {holder})' if holder else ''}, "
                "or use another --workdir."
            ) from None
        except OSError as e:
            raise workdir_error(e, lock_path, "lock") from e
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
            os.fsync(fd)
        except OSError as e:
            raise workdir_error(e, lock_path, "write") from e
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> tuple[int | None, str]:
    """(pid, command) written by the process that holds the lock."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        return None, ""
    pid, _, command = text.partition(" ")
    return (int(pid) if pid.isdigit() else None), command.strip()
