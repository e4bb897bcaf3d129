"""Console logging for the command line: our progress at INFO, library chatter at WARNING."""

from __future__ import annotations

import logging
import sys

# Orbax, grain and TensorFlow log every save and restore at INFO through absl; the summary
# writer logs every TensorBoard scalar (the progress lines already show the losses).
_QUIET = ("absl", "orbax", "grain", "tensorflow", "jax._src", "xray_flax.summary")


def configure(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
