"""Digests and finiteness of saved state: a checkpoint whose bytes changed is found, not used.

Orbax writes arrays through tensorstore, whose default format stores no checksums of the
array data: flipped bytes in a chunk either fail to decompress (an orbax error) or decode to
other numbers without any error. So every checkpoint's meta records a SHA-256 of each saved
tree (leaf dtypes, shapes and bytes, in tree order), and a restore recomputes it: a mismatch,
or a non-finite parameter, is a corrupt checkpoint, named as such.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def _host_leaf(leaf) -> np.ndarray | None:
    """The full value of one leaf on this host, or None when no single host holds all of it (a
    sharded array of a multi-process run: its digest is then not taken)."""
    if isinstance(leaf, jax.Array):
        if leaf.is_fully_addressable:
            return np.asarray(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return None
    return np.asarray(leaf)


def tree_digest(tree: Any) -> str | None:
    """SHA-256 (hex) of every leaf's dtype, shape and bytes in tree order; None when a leaf is
    not fully held by this process."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        value = _host_leaf(leaf)
        if value is None:
            return None
        value = np.ascontiguousarray(value)
        digest.update(f"{value.dtype.str}{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def nonfinite_leaves(tree: Any, limit: int = 3) -> list[str]:
    """Paths of (up to `limit`) floating-point leaves holding a NaN or an infinity."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = _host_leaf(leaf)
        if value is None or not np.issubdtype(value.dtype, np.inexact):
            continue
        if not np.all(np.isfinite(value)):
            bad.append(jax.tree_util.keystr(path))
            if len(bad) >= limit:
                break
    return bad


def digests(**trees: Any) -> dict[str, str]:
    """{name: digest} of the trees whose digest this process can take."""
    out = {}
    for name, tree in trees.items():
        value = tree_digest(tree)
        if value is not None:
            out[name] = value
    return out


def verify(where: str, meta: dict, **trees: Any) -> str | None:
    """Why the restored `trees` do not match the digests in `meta` or are not finite, or None
    when they are sound. Checkpoints from before digests were kept are only checked for NaNs."""
    recorded = meta.get("digest") or {}
    for name, tree in trees.items():
        if name in recorded:
            actual = tree_digest(tree)
            if actual is not None and actual != recorded[name]:
                return f"{where}: the {name} read back differ from what was saved (SHA-256 mismatch)"
    for name, tree in trees.items():
        if name == "variables":
            bad = nonfinite_leaves(tree)
            if bad:
                return f"{where}: non-finite parameters in {', '.join(bad)}"
    return None
