"""Rules for config values, each giving its problems as one-sentence strings (none: the value is fine).

Every problem names the key, the value and what is allowed, e.g.
``config.data.border='padd' is not one of 'pad', 'shift', 'drop'``. The config-owning packages
build their `check(...) -> list[str]` from these rules, `xray_flax.config_check` gathers them
into one `errors.ConfigError` before a run writes anything, and code that uses a value applies
the same rule with `errors.require(...)` (the last line of defence), so each rule is written once.

A leaf: imports nothing but the standard library.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable


def listing(values: Iterable) -> str:
    """'a', 'b', 'c': the allowed values as a problem lists them."""
    return ", ".join(repr(v) for v in values)


def is_int(value) -> bool:
    """An int that is not a bool (ml_collections lets True into an int field)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def given(value) -> str:
    """'(a float was given)': the type of a value where another type belongs."""
    name = type(value).__name__
    return f"({'an' if name[:1] in 'aeiou' else 'a'} {name} was given)"


def one_of(key: str, value, allowed: Iterable) -> list[str]:
    """`value` must be one of `allowed`."""
    allowed = tuple(allowed)
    try:
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return []
    except TypeError:  # unhashable or incomparable: not one of them
        pass
    return [f"{key}={value!r} is not one of {listing(allowed)}"]


def integer(key: str, value, minimum: int | None = None, maximum: int | None = None) -> list[str]:
    """`value` must be an int in [minimum, maximum] (either bound may be None)."""
    wanted = _bounds("an int", minimum, maximum)
    if not is_int(value):
        return [f"{key}={value!r} must be {wanted} {given(value)}"]
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        return [f"{key}={value!r} must be {wanted}"]
    return []


def optional_integer(key: str, value, minimum: int | None = None) -> list[str]:
    """None, or an int >= minimum."""
    return [] if value is None else integer(key, value, minimum)


def number(
    key: str, value, low: float | None = None, high: float | None = None, *, low_open=False, high_open=False
) -> list[str]:
    """`value` must be a number in the interval from `low` to `high` (closed unless *_open; None: unbounded)."""
    if low is not None and high is not None:
        wanted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        wanted = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        wanted = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        wanted = "a number"
    if not is_number(value):
        return [f"{key}={value!r} must be {wanted} {given(value)}"]
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # NaN is in no interval
        return [f"{key}={value!r} must be {wanted}"]
    return []


def fraction(key: str, value) -> list[str]:
    """A number in [0, 1]."""
    return number(key, value, 0.0, 1.0)


def numbers_in(key: str, value, length: int, low: float | None = None, high: float | None = None) -> list[str]:
    """A tuple of `length` numbers, each in [low, high]."""
    if not isinstance(value, (tuple, list)) or len(value) != length or not all(is_number(v) for v in value):
        return [f"{key}={value!r} must be a tuple of {length} numbers"]
    if any((low is not None and v < low) or (high is not None and v > high) for v in value):
        return [f"{key}={tuple(value)!r}: each must be a number in [{low:g}, {high:g}]"]
    return []


def folder(key: str, path, why: str = "", *, expand: bool = False) -> list[str]:
    """`path` must name an existing folder (`why`: when it is needed, e.g. "for data.source='scans'";
    `expand`: `~` means the home folder, as where the path is used)."""
    if not isinstance(path, str) or not path:
        return [f"{key}={path!r} must name a folder{' ' + why if why else ''}"]
    found = os.path.expanduser(path) if expand else path
    if not os.path.exists(found):
        return [f"{key}={path!r}: no such folder"]
    if not os.path.isdir(found):
        return [f"{key}={path!r} is a file, not a folder"]
    return []


def file(key: str, path, *, expand: bool = False) -> list[str]:
    """`path` must name an existing file (`expand`: as `folder`)."""
    if not isinstance(path, str) or not path:
        return [f"{key}={path!r} must name a file"]
    found = os.path.expanduser(path) if expand else path
    if not os.path.exists(found):
        return [f"{key}={path!r}: no such file"]
    if os.path.isdir(found):
        return [f"{key}={path!r} is a folder, not a file"]
    return []


def _bounds(what: str, minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"{what} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{what} >= {minimum}"
    if maximum is not None:
        return f"{what} <= {maximum}"
    return what
