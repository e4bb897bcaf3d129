"""Labelled anomalous tiles for training, when a lab has marked a few defects.

Conservators often have a handful of marked defects. `config.train.labelled_anomalies = N`
takes N anomalous tiles (with their masks) from the TRAIN split's scans only - the tiles that
training otherwise skips because they touch a mask - and the loop puts
`config.train.labelled_per_batch` of them into every batch, with ``label`` 1 and their masks,
beside the clean normal tiles (label 0, empty masks). Validation and test scans are never read
here, so the test numbers stay those of unseen scans.

The N tiles are drawn once, by the run's seed, among the anomalous train tiles (all of them when
there are at most N); a run with N = 0 reads nothing and trains as before.
"""

from __future__ import annotations

import logging

import numpy as np

from xray_flax import errors
from xray_flax.data import pipeline, tiling

log = logging.getLogger(__name__)


def labelled_tiles(splits, data_config, count: int, seed: int) -> dict[str, np.ndarray] | None:
    """{"image" [N, P, P, C], "mask" [N, P, P] float32 in {0, 1}, "label" [N] float32 (ones)} of
    `count` anomalous tiles of the train split, drawn by `seed`; None when count is 0."""
    if count <= 0:
        return None
    if splits.tfds_dir:
        raise errors.ConfigError(
            "config.train.labelled_anomalies needs scans with masks (source 'simulated' or 'folder'); "
            "a TFDS dataset holds only the clean training tiles"
        )
    table = pipeline.split_tiles(splits, "train", data_config)
    rows = np.flatnonzero(tiling.anomalous_rows(table))
    if rows.size == 0:
        raise errors.ConfigError(
            f"config.train.labelled_anomalies={count}: the train split has no anomalous tile (no masks or "
            f"labelled tiles in its {len(splits.train)} scans)"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1ABE1]))
    chosen = np.sort(rng.choice(rows, size=min(count, rows.size), replace=False))
    if chosen.size < count:
        log.warning("config.train.labelled_anomalies=%d: the train split has only %d anomalous tiles", count, rows.size)
    source = tiling.TileSource(splits.train, table.select(chosen), data_config)
    items = [source[i] for i in range(len(source))]
    images = np.stack([item["image"] for item in items]).astype(np.float32)
    masks = np.stack([np.asarray(item["mask"], np.float32).reshape(images.shape[1:3]) for item in items])
    log.info(
        "labelled anomalies: %d tiles of %d scans of the train split (%.1f %% of their pixels masked)",
        len(items),
        len(set(int(item["scan_index"]) for item in items)),
        100.0 * float(masks.mean()),
    )
    return {"image": images, "mask": (masks > 0).astype(np.float32), "label": np.ones(len(items), np.float32)}


def mix_into_batch(batch: dict[str, np.ndarray], labelled: dict[str, np.ndarray], step: int, per_batch: int) -> dict:
    """The batch with its last `per_batch` rows replaced by labelled tiles, and ``label`` [b]
    and ``mask`` [b, P, P] for every row (normal rows 0). Which labelled tiles: a cycle through
    all N in a fixed order, `per_batch` at each step, so the same step gets the same tiles on a
    resumed run."""
    images = np.array(batch["image"], np.float32, copy=True)
    b = images.shape[0]
    k = min(int(per_batch), b)
    n = labelled["image"].shape[0]
    index = (np.arange(k) + step * k) % n
    images[b - k :] = labelled["image"][index]
    masks = np.zeros(images.shape[:3], np.float32)
    masks[b - k :] = labelled["mask"][index]
    labels = np.zeros(b, np.float32)
    labels[b - k :] = 1.0
    return {"image": images, "label": labels, "mask": masks}
