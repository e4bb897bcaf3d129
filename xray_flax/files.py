"""Result files written so that a crash, a kill or a full disk never leaves a truncated one."""

from __future__ import annotations

import os


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`.

    The temporary name carries the process id, so the processes of a multi-host run that
    write the same file never interleave; the rename is atomic on POSIX file systems, so a
    reader sees the old file or the whole new one. On an error (e.g. a full disk) the
    temporary file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
