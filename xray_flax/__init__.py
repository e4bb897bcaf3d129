"""xray_flax: anomaly detection in X-ray images of paintings, in JAX/Flax."""

import os as _os

# TensorFlow is not a dependency; where it is installed (the `.[tensorflow]` extra, for TFDS's
# mnist / fashion_mnist in one_class) keep its C++ start-up notices off the console unless the
# user asked for them.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's oneDNN kernels are never used, and the notice about them is the one start-up
# line the log level above does not silence.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# The Python API (xray_flax/api.py, docs/api.md). `train_and_evaluate` is `api.train`: the name
# `xray_flax.train` is the training loop's module.
_API = {"load": "load", "train_and_evaluate": "train"}


def __getattr__(name: str):
    """`xray_flax.load` and `xray_flax.train_and_evaluate`, imported on first use so that
    `import xray_flax` stays light (the command line imports it before jax.distributed starts)."""
    if name in _API:
        from xray_flax import api  # noqa: PLC0415 - lazy: see the docstring

        return getattr(api, _API[name])
    raise AttributeError(f"module 'xray_flax' has no attribute {name!r}")
