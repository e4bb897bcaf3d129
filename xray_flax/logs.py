"""Logging for the command line: our progress at INFO, library chatter at WARNING, on stderr
and appended to <workdir>/log.txt.

Every line is `2026-12-05 11:08:50 I xray_flax.train] message` (date, time, level, module).
`workdir_log(workdir)` copies the lines of a run into `<workdir>/log.txt` between a line naming
the command and one saying how the run ended; `timed` and `compile_on_first_call` put a line
before and after the silent waits (data simulation, compilation, scoring a split).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator

from xray_flax import errors, progress

# Orbax, grain and TensorFlow log every save and restore at INFO through absl; the summary
# writer logs every TensorBoard scalar (the progress lines already show the losses).
_QUIET = ("absl", "orbax", "grain", "tensorflow", "jax._src", "xray_flax.summary")

LOG_NAME = "log.txt"
FORMAT = "%(asctime)s %(levelname).1s %(name)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

log = logging.getLogger(__name__)


def formatter() -> logging.Formatter:
    return logging.Formatter(FORMAT, DATE_FORMAT)


def configure(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def format_seconds(seconds: float) -> str:
    """12.3s under a minute, 4m05s above (the lines of `timed`)."""
    return f"{seconds:.1f}s" if seconds < 60 else progress.format_duration(seconds)


@contextlib.contextmanager
def timed(logger: logging.Logger, doing: str, done: str) -> Iterator[None]:
    """Logs `<doing> ...` before the block and `<done> in 12.3s` after it (nothing after a
    failure: the error says what happened)."""
    logger.info("%s ...", doing)
    start = time.perf_counter()
    yield
    logger.info("%s in %s", done, format_seconds(time.perf_counter() - start))


def compile_on_first_call(jitted, what: str, logger: logging.Logger = log) -> Callable:
    """`jitted` (a `jax.jit` function), whose first call is compiled ahead of time between the
    lines `compiling <what> ...` and `compiled <what> in 31.2s`.

    The compilation uses the first call's own arguments (`jitted.lower(*args).compile()`), which
    fills the cache that `jitted` looks up, so that call and every later one run the program
    `jitted` always ran, without compiling again; the progress line of the first step then
    shows the step's time, the log the compilation's.
    """
    compiled = False

    def call(*args):
        nonlocal compiled
        if not compiled:
            with timed(logger, f"compiling {what}", f"compiled {what}"):
                jitted.lower(*args).compile()
            compiled = True
        return jitted(*args)

    return call


_typed_command: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """The command line as typed, for the log's first line: the command line's flag parsing
    rewrites sys.argv (evaluate and predict add the workdir's config)."""
    global _typed_command
    _typed_command = list(argv)


def command_line() -> str:
    """The command as typed: `python -m xray_flax.main ...` (sys.argv names the module's file)."""
    argv = list(sys.argv if _typed_command is None else _typed_command)
    if argv and argv[0].endswith(os.path.join("xray_flax", "main.py")):
        argv[:1] = ["python", "-m", "xray_flax.main"]
    return shlex.join(argv)


@contextlib.contextmanager
def workdir_log(workdir: str, enabled: bool = True) -> Iterator[str | None]:
    """Appends the log lines of the block to `<workdir>/log.txt` (the workdir must exist),
    after a line naming the command; yields the file's path (None when disabled or the file
    cannot be opened: the run goes on without it).

    The run's end is the file's last line: `run ended after 1m02s`, or, when the block raises,
    `run failed after 12.0s: <error>` in the file only (the command line prints its own
    `error:` line on stderr), with the traceback of an error that is not the user's to fix.
    The file is closed at the end, so a process may run many blocks.
    """
    path = os.path.join(workdir, LOG_NAME)
    handler = _open(path) if enabled else None
    if handler is None:
        yield None
        return
    root = logging.getLogger()
    root.addHandler(handler)
    # From Python (a notebook, table2 under pytest) nothing may have set a level: the default
    # WARNING would keep the progress lines out of the file. Ours at INFO for the block.
    package = logging.getLogger("xray_flax")
    package_level = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        log.info(
            "run started: %s (in %s, pid %d on %s); log in %s",
            command_line(),
            os.getcwd(),
            os.getpid(),
            socket.gethostname(),
            path,
        )
        yield path
        log.info("run ended after %s", format_seconds(time.perf_counter() - start))
    except BaseException as error:
        handler.handle(_failure_record(error, time.perf_counter() - start))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
        package.setLevel(package_level)


class _LogFile(logging.FileHandler):
    """The workdir's log file, which never turns a run's outcome into its own error: on a full
    disk (the run is then failing with a clear error of its own) a line that cannot be written
    is dropped, and closing the file does not raise."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass


def _open(path: str) -> logging.Handler | None:
    try:
        handler = _LogFile(path, mode="a", encoding="utf-8")
    except OSError as e:
        # A workdir that is not ours to write (evaluating someone's checkpoints): no log file,
        # the run itself does not need one.
        log.warning("no log file: %s cannot be opened (%s)", path, e.strerror or e)
        return None
    handler.setFormatter(formatter())
    return handler


def _failure_record(error: BaseException, seconds: float) -> logging.LogRecord:
    after = format_seconds(seconds)
    if isinstance(error, KeyboardInterrupt):
        return log.makeRecord(log.name, logging.ERROR, __file__, 0, "run interrupted after %s", (after,), None)
    # The user's errors are one sentence; anything else is a bug, whose traceback belongs in the log.
    exc_info = None if isinstance(error, (errors.UserError, OSError)) else (type(error), error, error.__traceback__)
    message = errors.one_line(error) or type(error).__name__
    return log.makeRecord(log.name, logging.ERROR, __file__, 0, "run failed after %s: %s", (after, message), exc_info)
