"""The one error type of xray_flax.weights, and the 'file not found' message."""

from __future__ import annotations

import os

from xray_flax import errors


class WeightsError(errors.UserError, ValueError):
    """A weights file that is missing, unreadable, refused or does not fit the model.

    The message always names the file (and the key or pickle global where there is one).
    """


def missing_weights_error(path: str | os.PathLike, how_to_get: str) -> WeightsError:
    """The error for a weights file that is not there, with how to get it (said once, here)."""
    return WeightsError(f"weights file {os.fspath(path)} not found; {how_to_get}")
