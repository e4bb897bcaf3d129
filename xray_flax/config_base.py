"""The full config tree of the X-ray detectors, shared by every experiment config (configs/*.py).

Each package documents its own section (`xray_flax/data/config.py`,
`xray_flax/evaluation_config.py`); the loop and mesh sections live here; the detector's own
sections (`model`, `loss`, `optim`, ...) come from `xray_flax/detectors/<name>/config.py`.
Experiment configs start from `get_base_config(detector)` and override what they change, with
the source of each value.

Config files are loaded by path, never as an installed package, so they import `xray_flax` and
nothing else (`xray_flax.config_files`).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from xray_flax import detectors, evaluation_config
from xray_flax.data import config as data_config


def get_base_config(detector: str = "draem") -> ml_collections.ConfigDict:
    """Shared sections, then the sections `detector` owns (its `config.defaults()`)."""
    config = ml_collections.ConfigDict()
    config.detector = detector  # xray_flax/detectors/__init__.py lists the names
    config.seed = 0  # initialisation and per-step keys; data order has its own seeds
    # The row of the paper's Table 2 this method is (e.g. "FastFlow"; "" = none): the Table 2
    # command (python -m xray_flax.table2) prints the published numbers beside ours.
    config.paper_row = ""

    config.data = data_config.defaults()
    config.eval = evaluation_config.defaults()

    train = ml_collections.ConfigDict()
    train.num_steps = 1000
    train.batch_size = 8  # global batch (split over devices and processes); DRAEM: 8
    train.log_every = 50  # progress line + TensorBoard scalars
    train.image_summary_every = 500  # TensorBoard images (input, synthetic, reconstruction, map); 0 = off
    train.eval_every = 500  # validation ROC-AUC -> best checkpoint
    train.checkpoint_every = 500  # latest checkpoint for resuming
    train.keep_checkpoints = 3  # latest checkpoints kept
    # The host dispatches at most this many steps ahead of the device. JAX's asynchronous
    # dispatch would otherwise queue many steps, all of which run before a SIGTERM can stop
    # the loop; SLURM and TPU preemption give ~30 s before SIGKILL. [ours]
    train.max_steps_in_flight = 2
    # Stop this run after this step (with a checkpoint) and resume later with the same
    # command, e.g. to fit a long job into time-limited allocations.
    train.halt_after_steps = config_dict.placeholder(int)
    # Labelled anomalies (xray_flax/data/labelled.py): N anomalous tiles with their masks, from
    # the TRAIN split's scans only, and how many of them go into every batch beside the normal
    # tiles. Only for detectors that learn from real positives (their `labelled_anomalies`);
    # 0 = unsupervised, as the papers. [ours]
    train.labelled_anomalies = 0
    train.labelled_per_batch = 2
    # Before each validation, re-estimate the running statistics (BatchNorm's) of the weights
    # being validated: this many forward passes in training mode over training batches at
    # FIXED weights (detectors with `refresh_statistics`; others ignore it). During training
    # the running averages mix the last ~10 steps' weights; at a high learning rate they then
    # belong to no weights, and validation (and the best checkpoint) sees a broken network
    # (docs/results.md, the paper's model's training dynamics; "precise BN", Wu & Johnson,
    # "Rethinking 'Batch' in BatchNorm", 2021). The best checkpoint keeps the re-estimated
    # statistics; the latest (for resuming) keeps the training ones. 0 = off, as the papers. [ours]
    train.refresh_statistics_batches = 0
    # After training, whole-scan heatmaps and HTML reports of this many test scans
    # (<workdir>/predictions); 0 = none.
    train.predict_test_scans = 1
    # Fit-kind detectors (PaDiM, PatchCore, ...): peak resident memory of the process in GB;
    # 0 = no limit. Checked before the first batch against the fit state the detector
    # allocates, and after every batch against the measured RSS; over budget, the fit saves
    # its partial state and stops with an error naming both numbers. [ours; docs/performance.md]
    train.memory_budget_gb = 0.0
    # Fit-kind detectors: at most this many pixels per fit update (a batch of train.batch_size
    # tiles is split into smaller updates beyond it); one update is one jitted call that a
    # SIGTERM cannot interrupt. 0 = by platform: 131,072 on a CPU (32 tiles of 64 px, so a stop
    # is served within seconds), no limit on GPU/TPU; -1 = no limit. [ours; benchmarks/bench_sigterm.py]
    train.fit_max_update_pixels = 0
    config.train = train

    mesh = ml_collections.ConfigDict()
    mesh.data = -1  # devices on the data-parallel axis; -1 = all devices of all processes
    config.mesh = mesh

    config.update(detectors.config_module(detector).defaults())
    return config
