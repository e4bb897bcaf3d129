"""xray_flax: anomaly detection in X-ray images of paintings, in JAX/Flax."""

import os as _os

# TensorFlow is imported only for TensorBoard summaries (clu's metric writers); keep its
# C++ start-up notices off the console unless the user asked for them.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's oneDNN kernels are never used, and the notice about them is the one start-up
# line the log level above does not silence.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
