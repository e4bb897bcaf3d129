"""Labelled anomalies for training (xray_flax/data/labelled.py): tiles of the train split only,
their masks as the mask files hold them, mixed into batches by a fixed rule, and refused for
detectors that would learn them as normal."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from xray_flax import config_check, detectors, errors
from xray_flax.data import config as data_config_lib
from xray_flax.data import labelled, pipeline, tiling


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    c = data_config_lib.defaults()
    c.simulated.cache_dir = str(tmp_path_factory.mktemp("sim"))
    c.simulated.n_scans, c.simulated.height, c.simulated.width = 5, 288, 256
    c.simulated.paint_losses, c.simulated.white_spots = 2, 3
    c.patch_size, c.stride = 32, 32
    return c, pipeline.prepare_splits(c, None)


def test_tiles_come_from_the_train_scans_with_their_masks(sim):
    c, splits = sim
    table = pipeline.split_tiles(splits, "train", c)
    rows = np.flatnonzero(tiling.anomalous_rows(table))
    assert rows.size >= 3
    tiles = labelled.labelled_tiles(splits, c, 3, seed=0)
    assert tiles["image"].shape == (3, 32, 32, 1) and tiles["mask"].shape == (3, 32, 32)
    np.testing.assert_array_equal(tiles["label"], np.ones(3))
    # Which tiles: recompute the draw, then read each mask file directly.
    rng = np.random.default_rng(np.random.SeedSequence([0, 0x1ABE1]))
    chosen = np.sort(rng.choice(rows, size=3, replace=False))
    for i, row in enumerate(chosen):
        record = splits.train[int(table.scan_index[row])]
        y, x = int(table.y[row]), int(table.x[row])
        mask = np.asarray(Image.open(record.mask_path)) > 0
        np.testing.assert_array_equal(tiles["mask"][i], mask[y : y + 32, x : x + 32].astype(np.float32))
        assert tiles["mask"][i].any() or table.label[row] == tiling.LABEL_ANOMALOUS
    val_test = {r.path for r in splits.val + splits.test}
    assert not val_test & {splits.train[int(table.scan_index[r])].path for r in chosen}
    assert labelled.labelled_tiles(splits, c, 0, seed=0) is None
    everything = labelled.labelled_tiles(splits, c, 10_000, seed=0)  # at most what there is
    assert everything["image"].shape[0] == rows.size


def test_mix_cycles_through_the_labelled_tiles_in_the_last_rows():
    batch = {"image": np.zeros((4, 2, 2, 1), np.float32)}
    tiles = {
        "image": np.arange(3, dtype=np.float32)[:, None, None, None] + np.ones((3, 2, 2, 1), np.float32),
        "mask": np.ones((3, 2, 2), np.float32),
        "label": np.ones(3, np.float32),
    }
    out = labelled.mix_into_batch(batch, tiles, step=1, per_batch=2)
    np.testing.assert_array_equal(out["label"], [0, 0, 1, 1])
    np.testing.assert_array_equal(out["image"][:, 0, 0, 0], [0, 0, 3, 1])  # tiles 2 and 0 at step 1
    np.testing.assert_array_equal(out["mask"].sum(axis=(1, 2)), [0, 0, 4, 4])
    assert batch["image"].sum() == 0  # the input batch is untouched


def test_detectors_that_learn_normal_only_refuse_labelled_anomalies():
    config = tiny.get_config("draem")
    config.train.labelled_anomalies = 5
    with pytest.raises(
        errors.ConfigError, match="labelled_anomalies=5: detector 'draem' learns from normal tiles only"
    ):
        config_check.check(config, "train")
    config.train.labelled_anomalies = -1
    with pytest.raises(errors.ConfigError, match="labelled_anomalies"):
        config_check.check(config, "train")


def test_a_detector_that_learns_from_labels_trains_with_them_through_the_loop(tmp_path, caplog, monkeypatch):
    """The real loop on the tiny config: every step's batch carries the labelled tiles, their
    labels and masks into the detector's step."""
    from xray_flax import train  # noqa: PLC0415 - the loop pulls in orbax and every detector

    mixed, original = [], labelled.mix_into_batch

    def recording_mix(batch, tiles, step, per_batch):
        out = original(batch, tiles, step, per_batch)
        mixed.append(out)
        return out

    monkeypatch.setattr(labelled, "mix_into_batch", recording_mix)
    config = tiny.get_config("supersimplenet")
    config.data.simulated.cache_dir = str(tmp_path / "simulated")
    config.train.update(predict_test_scans=0, image_summary_every=0, num_steps=2, eval_every=2)
    config.train.update(checkpoint_every=2, log_every=1, labelled_anomalies=4, labelled_per_batch=2)
    with caplog.at_level("INFO"):
        assert train.train(config, str(tmp_path / "run"))
    assert "labelled anomalies: 4 tiles" in caplog.text
    assert len(mixed) == 2
    for batch in mixed:
        b = config.train.batch_size
        np.testing.assert_array_equal(batch["label"], [0] * (b - 2) + [1, 1])
        assert batch["mask"][-2:].any(axis=(1, 2)).all() and not batch["mask"][:-2].any()


def test_the_list_in_the_refusal_is_the_detectors_that_take_labels():
    """detectors._LEARNS_FROM_LABELS (named in the error without importing every detector)
    is exactly the detectors whose `labelled_anomalies` is True."""
    taking = {name for name in detectors.names() if detectors.build(tiny.get_config(name)).labelled_anomalies}
    assert taking == set(detectors._LEARNS_FROM_LABELS)
