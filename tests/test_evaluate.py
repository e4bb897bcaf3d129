"""Evaluation helpers: the patch gallery chosen batch by batch equals the one chosen at once."""

from __future__ import annotations

import numpy as np
import pytest

from xray_flax.scoring import best_of_each_class, gallery_rows


def batch(rng, n):
    return {
        "score": rng.random(n),
        "label": (rng.random(n) < 0.2).astype(np.int32),
        "image": rng.random((n, 4, 4, 1)),
        "map": rng.random((n, 4, 4)),
    }


@pytest.mark.parametrize("rows", [1, 4, 8])
def test_gallery_picked_incrementally_equals_picking_from_everything(rows):
    rng = np.random.default_rng(rows)
    batches = [batch(rng, 16) for _ in range(12)]
    kept = {}
    for b in batches:
        kept = best_of_each_class([kept, b] if kept else [b], rows)
    incremental = gallery_rows(kept, rows)
    everything = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.argsort(-everything["score"], kind="stable")
    anomalous = [i for i in order if everything["label"][i] == 1][: (rows + 1) // 2]
    normal = [i for i in order if everything["label"][i] != 1][: rows - len(anomalous)]
    np.testing.assert_array_equal(incremental["score"], everything["score"][anomalous + normal])
    np.testing.assert_array_equal(incremental["image"], everything["image"][anomalous + normal])


def test_gallery_fills_rows_with_normals_when_few_anomalies():
    only_normal = {"score": np.array([0.3, 0.9, 0.1]), "label": np.array([0, 0, 1])}
    picked = gallery_rows(best_of_each_class([only_normal], 4), 4)
    np.testing.assert_array_equal(picked["score"], [0.1, 0.9, 0.3])
