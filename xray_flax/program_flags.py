"""Flags of the small programs (table2, compare, the synthesis gallery), parsed with absl as main.py's.

Each program defines its flags on a `flags.FlagValues` of its own rather than on absl's global
`flags.FLAGS`, so that its `main(argv)` can be called from Python (tests, notebooks) in the same
process as the command line's flags without two definitions of `--workdir` or `--verbose`
meeting. absl's forms hold: `--name=value` or `--name value`, lists comma-separated
(`--names=a,b`), repeatable flags given again (`--set a=1 --set b=2`), `--flag` / `--noflag`
for booleans.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from xray_flax import errors

HELP = ("--help", "-h", "-help", "--helpshort")


def parse(
    flag_values: flags.FlagValues,
    argv: Sequence[str] | None,
    program: str,
    usage: str,
    positional: bool = False,
    hint: str = "",
) -> list[str] | None:
    """The positional arguments of `argv` (default: the command line's) after its flags are parsed
    into `flag_values`; None after printing the help when asked for it.

    Raises errors.UsageError, naming the flag, for an unknown flag, a bad value or a missing
    required flag, and for positional arguments unless the program takes them (`hint` then says
    what to do instead).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in HELP for arg in argv):
        print(f"{usage.strip()}\n\nflags:\n{flag_values.get_help()}")
        return None
    try:
        rest = flag_values([program, *argv])
    except flags.Error as e:
        raise errors.UsageError(f"{program}: {errors.one_line(e)}") from e
    if len(rest) > 1 and not positional:
        raise errors.UsageError(f"{program}: unexpected arguments {rest[1:]}{': ' + hint if hint else ''}")
    return list(rest[1:])


def report(error: BaseException) -> int:
    """Prints `error` as one line on stderr; returns the exit status of a command-line mistake."""
    print(f"error: {errors.one_line(error)}", file=sys.stderr)
    return errors.EXIT_USAGE
