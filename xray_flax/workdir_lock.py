"""One training job per workdir: an exclusive lock taken before anything is written.

Two trainings on one workdir interleave their checkpoints and `best/` entries (orbax then
refuses a step that already exists, and every rerun stops there). `WorkdirLock` takes an
advisory `flock` on `<workdir>/.lock`: the kernel releases it when the holder exits in any
way (kill -9 included), so a lock of a dead process is never stale. The file itself keeps
who holds it (host, pid, start time, command) for the error message. Where the file system
has no `flock` (some network mounts), an exclusive-create lock file is used instead, and a
lock left by a dead process on the same host is detected and taken over.

Only process 0 of a multi-process run takes it: one lock for the whole run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time

from xray_flax import errors

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class WorkdirLockedError(errors.UserError, RuntimeError):
    """Another process is training in this workdir."""


def _holder_info() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
    }


def _describe(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return f"pid {info['pid']} on {info['host']} since {info['started']} ({info['command']})"
    except (OSError, ValueError, KeyError):
        return "a process whose details could not be read"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir's lock for the block, or raises
    WorkdirLockedError naming the holder."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        self.enabled = enabled
        self._fd: int | None = None
        self._exclusive_file = False

    def __enter__(self) -> WorkdirLock:
        if self.enabled:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self):
        raise WorkdirLockedError(
            f"{os.path.dirname(self.path)} is in use by another training job: {_describe(self.path)}. Wait for "
            f"it to finish or stop it (it saves a checkpoint on SIGTERM), or train into another --workdir"
        )

    def _acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._refuse()
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            self._acquire_exclusive_file()
            return
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder_info()).encode())
        os.fsync(fd)
        self._fd = fd

    def _acquire_exclusive_file(self) -> None:
        """Fallback without flock: the lock is a file created with O_EXCL beside the flock file."""
        path = self.path + ".pid"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(path) as f:
                        info = json.load(f)
                except (OSError, ValueError):
                    info = {}
                if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", 0))):
                    log.warning("removing the stale lock %s of process %s, which is gone", path, info.get("pid"))
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                    continue
                self.path = path
                self._refuse()
            with os.fdopen(fd, "w") as f:
                json.dump(_holder_info(), f)
            self._exclusive_file = True
            self.path = path
            return
        self._refuse()

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: removing it would let a third process lock a new inode while a
            # second one still waits on the old.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._exclusive_file:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self._exclusive_file = False
