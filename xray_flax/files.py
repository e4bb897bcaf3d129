"""Result files written so that a crash, a kill or a full disk never leaves a truncated one."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable

from xray_flax import errors


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "the file") -> None:
    """Write `text` to `path` through `atomic_output`: a reader sees the old file or the whole
    new one; on an error (a full disk: DiskSpaceError naming `path`) `path` is left as it was.
    The temporary name carries the process id, so the processes of a multi-host run that
    write the same file never interleave."""
    with atomic_output(path, what) as tmp, open(tmp, "w") as f:
        f.write(text)


class DiskSpaceError(errors.UserError, OSError):
    """Not enough free space to write a file (or a checkpoint); nothing was written."""

    def __str__(self) -> str:
        return str(self.strerror)


def free_bytes(directory: str | os.PathLike) -> int:
    """Bytes available to this user on the file system holding `directory` (or its nearest
    existing parent)."""
    path = os.path.abspath(os.fspath(directory))
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


# Headroom kept free beyond what a write needs: file-system metadata, the logs and
# TensorBoard events written meanwhile, orbax's temporary copies of small files.
SPACE_MARGIN_BYTES = 16 << 20


def require_free_space(directory: str | os.PathLike, nbytes: int, what: str) -> None:
    """Raise DiskSpaceError (naming `directory`, the bytes needed and free) unless `nbytes`
    plus a small margin fit on its file system. Called before writes that would otherwise die
    half-way (checkpoints, whole-scan maps)."""
    available = free_bytes(directory)
    needed = int(nbytes) + SPACE_MARGIN_BYTES
    if available < needed:
        raise DiskSpaceError(
            28,  # errno.ENOSPC
            f"not enough disk space for {what} in {os.path.abspath(os.fspath(directory))}: needs "
            f"{_human(needed)} (incl. {_human(SPACE_MARGIN_BYTES)} margin), {_human(available)} free. "
            f"Free some space (earlier files there are intact) and rerun the same command",
        )


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --- added for whole-scan maps and result files (report/*, predict.py) --------------------

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """True for the OSErrors a full disk (or an exhausted quota) raises."""
    return isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS


def disk_space_error(path: str | os.PathLike, nbytes: int | None, what: str) -> DiskSpaceError:
    """The one-line DiskSpaceError of a write of `what` to `path` that did not fit."""
    path = os.path.abspath(os.fspath(path))
    needs = f"needs {_human(nbytes)}, " if nbytes is not None else ""
    return DiskSpaceError(
        errno.ENOSPC,
        f"not enough disk space for {what} {path}: {needs}{_human(free_bytes(os.path.dirname(path)))} free. "
        f"Free some space (earlier files there are intact) and rerun the same command",
        path,
    )


def reserve(fd: int, nbytes: int, path: str | os.PathLike, what: str) -> None:
    """Allocate the first `nbytes` of the open file `fd` (`path`) now, so later writes -
    through a memory map above all, where a full disk is a SIGBUS that kills the process -
    cannot run out of space; a full disk raises DiskSpaceError here instead.

    Where the file system cannot allocate ahead (posix_fallocate not supported), the free
    space is checked instead (`require_free_space`)."""
    try:
        os.posix_fallocate(fd, 0, int(nbytes))
    except OSError as error:
        if is_disk_full(error):
            raise disk_space_error(path, nbytes, what) from None
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        require_free_space(os.path.dirname(os.path.abspath(os.fspath(path))), nbytes, what)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, what: str = "the file"):
    """Yields a temporary path beside `path` to write; renamed to `path` once the block
    completes, removed on any error, so `path` is the old file or the whole new one, never
    a partial one. A full disk while writing raises DiskSpaceError naming `path`.

    The temporary name keeps `path`'s suffix after the process id (`map.tif` ->
    `map.<pid>.tmp.tif`), so writers that choose the format by suffix still can."""
    path = os.fspath(path)
    stem, suffix = os.path.splitext(path)
    tmp = f"{stem}.{os.getpid()}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if is_disk_full(error) and not isinstance(error, DiskSpaceError):
            raise disk_space_error(path, None, what) from None
        raise


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike, is_complete: Callable[[str], bool], prefix: str = ".staged-"):
    """Yields a private temporary folder beside `folder` to fill; when the block completes it is
    renamed to `folder`, so `folder` is either absent, complete, or left as it was. Safe when
    several processes build the same folder at once: a folder that `is_complete` (another process
    finished first) is kept and the copy dropped; an incomplete or stale one is replaced. The
    temporary folder is removed on any error."""
    folder = os.fspath(folder)
    parent = os.path.dirname(os.path.abspath(folder)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if is_complete(folder):
            return
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not is_complete(folder):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
