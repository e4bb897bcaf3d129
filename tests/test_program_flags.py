"""The small programs' absl flags (xray_flax/program_flags.py): values, lists, repeats, help and
one-line usage errors, on a FlagValues of their own beside the command line's global flags."""

from __future__ import annotations

import pytest
from absl import flags

from xray_flax import compare, errors, program_flags, table2


def _flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("root", None, "a folder", required=True, flag_values=fv)
    flags.DEFINE_list("names", None, "comma-separated", flag_values=fv)
    flags.DEFINE_multi_string("set", [], "repeatable", flag_values=fv)
    flags.DEFINE_bool("paper", False, "a switch", flag_values=fv)
    return fv


def test_values_lists_repeats_and_positional_arguments():
    fv = _flag_values()
    rest = program_flags.parse(
        fv, ["a", "--root", "r", "--names=x,y", "--set", "k=1", "--set=j=2", "b", "--paper"], "p", "", positional=True
    )
    assert rest == ["a", "b"]
    assert (fv.root, fv.names, fv.set, fv.paper) == ("r", ["x", "y"], ["k=1", "j=2"], True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--root=r", "--bogus=1"], "Unknown command line flag 'bogus'"),
        ([], "root"),  # a required flag
        (["--root=r", "stray"], r"unexpected arguments \['stray'\]: use --names"),
    ],
)
def test_mistakes_are_usage_errors_naming_the_flag(argv, message):
    with pytest.raises(errors.UsageError, match=message) as info:
        program_flags.parse(_flag_values(), argv, "p", "", hint="use --names")
    assert errors.exit_status_of(info.value) == errors.EXIT_USAGE


def test_help_prints_usage_and_flags(capsys):
    assert program_flags.parse(_flag_values(), ["--help"], "p", "usage: p --root DIR") is None
    out = capsys.readouterr().out
    assert out.startswith("usage: p --root DIR") and "--names" in out


def test_programs_exit_2_with_one_line(tmp_path, capsys):
    assert table2.main(["--root", str(tmp_path), "configs/tiny.py"]) == 2
    assert compare.main(["--bogus"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: python -m xray_flax.") for line in lines)
