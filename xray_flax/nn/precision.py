"""Compute dtypes by config name (parameters always stay float32)."""

from __future__ import annotations

import jax.numpy as jnp

from xray_flax import errors

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    try:
        return _DTYPES[name]
    except KeyError:
        raise errors.ConfigError(f"config.model.compute_dtype={name!r}; expected one of {sorted(_DTYPES)}") from None
