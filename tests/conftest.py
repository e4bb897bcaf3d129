"""Shared test setup: a persistent XLA compilation cache for the session, parsed absl flags."""

from __future__ import annotations

import os
import sys

import jax
import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
DTD_ROOT = os.path.join(SHARED, "data", "dtd")


def pytest_configure(config):
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags outside app.run
    # Tests compile the same tiny networks many times; the cache makes the later ones cheap.
    cache = os.environ.get("XRAY_FLAX_TEST_JAX_CACHE", os.path.join(REPO, ".pytest_cache", "jax"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def dtd_root():
    if not os.path.isdir(DTD_ROOT):
        pytest.skip(f"{DTD_ROOT} not found (shared/ must sit beside the repository)")
    return DTD_ROOT


def python() -> str:
    return sys.executable
