"""Errors the user can fix, and how the command line reports them.

`python -m xray_flax.main` prints such an error as one line, ``error: <message>``, on stderr
and exits with `EXIT_USAGE` (the command line or the config is wrong) or `EXIT_FAILURE`
(bad input data, a missing or corrupt checkpoint, a full disk, a diverged training, ...);
``--debug`` adds the traceback. Any other exception is a bug and keeps its traceback.

`UserError` is the shared base: every error class the user can fix inherits from it (keeping
its other bases, so that callers catching those still do) and is reported the same way
without touching the command line; `ConfigError` (a bad config value, file or override)
exits with `EXIT_USAGE`, any other `UserError` with `EXIT_FAILURE`. Its message must be one
sentence naming the file, folder or config key at fault and what to do.

A run checks its whole config before it writes anything (`xray_flax.config_check`): every
problem found is one sentence naming the key, the value and what is allowed, and all of them
are raised together as one `ConfigError` (`config_problems`), whose `problems` keep them
apart for a caller that gathers problems from several checks (`problems_of`).
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class UserError(Exception):
    """An error the user can fix; the command line prints its message, no traceback."""


class ConfigError(UserError, ValueError):
    """A config (file, saved config.json or override) that cannot be used; names the key or file.

    A ValueError too, so that callers catching the ValueError of a bad config value still do.
    `problems`: the problems it lists, one sentence each (set by `config_problems`; empty for
    an error raised with a message of its own, which is then its one problem).
    """

    problems: tuple[str, ...] = ()


class UsageError(UserError):
    """The command line asks for something it cannot do (a missing flag, a mode the family lacks)."""


class TrainingDivergedError(UserError, RuntimeError):
    """The loss or the gradients became NaN or infinite; names the last good checkpoint."""


def config_problems(problems: Sequence[str]) -> ConfigError:
    """One `ConfigError` listing every problem on one line: the problem itself when there is one,
    else ``config has N problems: <first>; <second>; ...``."""
    problems = tuple(dict.fromkeys(one_line(p) for p in problems))  # in order, each once
    if not problems:
        raise ValueError("config_problems needs at least one problem")
    listing = problems[0] if len(problems) == 1 else f"config has {len(problems)} problems: " + "; ".join(problems)
    error = ConfigError(listing)
    error.problems = problems
    return error


def problems_of(error: ConfigError) -> list[str]:
    """The problems `error` lists (its message when it was raised with one of its own)."""
    return list(error.problems) or [one_line(error)]


def require(problems: Sequence[str]) -> None:
    """Raises `config_problems(problems)` when there are any: a rule applied where its value is used."""
    if problems:
        raise config_problems(problems)


def exit_status_of(error: BaseException) -> int:
    """The exit status of a `UserError`: `EXIT_USAGE` for the command line or the config, else
    `EXIT_FAILURE`."""
    return EXIT_USAGE if isinstance(error, (ConfigError, UsageError)) else EXIT_FAILURE


def one_line(message: object) -> str:
    """The message on one line: a traceback-free report must not look truncated or framed."""
    return " ".join(str(message).split())


def root_cause(error: BaseException) -> BaseException:
    """The innermost explicitly chained or implicitly raised-during-handling exception.

    absl and ml_collections re-raise config-file errors wrapped in their own (with the
    original traceback pasted into the message); the original says what is wrong.
    """
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner
