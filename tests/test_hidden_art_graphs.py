"""Superpixel graphs (xray_flax.hidden_art.graphs) against scikit-image, NumPy loops and jraph."""

import numpy as np
import pytest
import skimage.graph
from skimage import filters, segmentation

from xray_flax.hidden_art import graphs


def _painting(seed=0, size=64):
    """A small RGB image with smooth regions and a few edges (SLIC has structure to follow)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in range(3)], axis=-1)
    rgb[size // 4 : size // 2, size // 3 : 2 * size // 3] = [0.9, 0.2, 0.1]
    return np.clip(rgb + 0.02 * rng.standard_normal(rgb.shape), 0, 1).astype(np.float32)


def _band(seed=1, size=64):
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + 0.2 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def labels():
    return graphs.segment(_painting(), n_segments=60)


def test_segment_is_slic_relabelled_without_gaps(labels):
    rgb = _painting()
    raw = segmentation.slic(rgb.astype(np.float64), n_segments=60, compactness=1.0, start_label=0, channel_axis=-1)
    assert labels.dtype == np.int32 and labels.shape == rgb.shape[:2]
    n = labels.max() + 1
    assert np.all(np.bincount(labels.ravel(), minlength=n) > 0)  # 0..n-1, none empty
    # Same partition as scikit-image's SLIC: a bijection between the two label sets.
    pairs = np.unique(np.stack([raw.ravel(), labels.ravel()]), axis=1)
    assert pairs.shape[1] == n == len(np.unique(raw))
    assert 20 < n < 120


def test_segment_rejects_a_band():
    with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\]"):
        graphs.segment(_band())


def test_check_labels_names_gaps():
    with pytest.raises(ValueError, match="missing"):
        graphs.check_labels(np.array([[0, 2], [2, 0]]))
    with pytest.raises(ValueError, match="labels are"):
        graphs.check_labels(np.zeros((3, 3), int), (4, 4))


def _loop_features(values, labels, standardise):
    """Reference: one boolean mask per superpixel."""
    values = values.astype(np.float64)
    if standardise == "image":
        values = (values - values.mean()) / (values.std() + 1e-6)
    sobel = filters.sobel(values)
    h, w = values.shape
    rows = []
    for i in range(labels.max() + 1):
        mask = labels == i
        ys, xs = np.nonzero(mask)
        v = values[mask]
        rows.append([v.mean(), v.std(), v.min(), v.max(), sobel[mask].mean(), ys.mean() / (h - 1), xs.mean() / (w - 1)])
    rows = np.array(rows)
    if standardise == "graph":
        block = rows[:, :5]
        rows[:, :5] = (block - block.mean(0)) / (block.std(0) + 1e-6)
    return rows


@pytest.mark.parametrize("standardise", ["image", "graph", "none"])
def test_node_features_match_numpy_loops(labels, standardise):
    band = _band()
    got = graphs.node_features(band, labels, standardise=standardise)
    assert got.shape == (labels.max() + 1, len(graphs.FEATURES)) and got.dtype == np.float32
    np.testing.assert_allclose(got, _loop_features(band, labels, standardise), rtol=1e-5, atol=1e-5)


def test_rgb_branch_uses_luma_columns(labels):
    rgb = _painting()
    luma = rgb.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(graphs.node_features(rgb, labels), graphs.node_features(luma, labels), atol=1e-6)
    # Column order is the same in both branches: the centroid columns of RGB and band agree.
    np.testing.assert_array_equal(
        graphs.node_features(rgb, labels)[:, 5:], graphs.node_features(_band(), labels)[:, 5:]
    )


def test_image_standardisation_removes_gain_and_offset_only(labels):
    band = _band().astype(np.float64)
    base = graphs.node_features(band, labels)
    np.testing.assert_allclose(graphs.node_features(0.3 * band + 0.2, labels), base, atol=2e-4)
    # A local change survives: only the touched superpixels' mean moves much.
    changed = band.copy()
    changed[labels == 3] += 0.5
    moved = np.abs(graphs.node_features(changed, labels)[:, 0] - base[:, 0])
    assert np.argmax(moved) == 3 and moved[3] > 5 * np.median(moved)


def _rag_edges(labels):
    rag = skimage.graph.RAG(labels, connectivity=2)
    return {(int(a), int(b)) for a, b in rag.edges} | {(int(b), int(a)) for a, b in rag.edges}


def test_region_adjacency_matches_skimage_rag(labels):
    senders, receivers = graphs.region_adjacency(labels)
    got = list(zip(senders.tolist(), receivers.tolist()))
    assert len(got) == len(set(got))  # no duplicates
    assert all(s != r for s, r in got)  # no self-edges
    assert set(got) == _rag_edges(labels)
    order = np.lexsort((senders, receivers))
    np.testing.assert_array_equal(order, np.arange(len(order)))


def test_region_adjacency_is_8_connected():
    labels = np.array([[0, 1], [2, 3]])
    senders, receivers = graphs.region_adjacency(labels)
    assert set(zip(senders.tolist(), receivers.tolist())) == {(a, b) for a in range(4) for b in range(4) if a != b}
    rng = np.random.default_rng(3)
    scattered = rng.integers(0, 6, (9, 11))
    scattered = np.unique(scattered, return_inverse=True)[1].reshape(scattered.shape)
    senders, receivers = graphs.region_adjacency(scattered)
    assert set(zip(senders.tolist(), receivers.tolist())) == _rag_edges(scattered)


def test_edge_weights_and_build_graph(labels):
    band = _band()
    g = graphs.build_graph(band, labels)
    feats = graphs.node_features(band, labels)
    n = labels.max() + 1
    assert g.n_node.tolist() == [n] and g.n_edge.tolist() == [len(g.senders)] and g.globals is None
    np.testing.assert_array_equal(g.nodes, feats)
    for e in range(0, len(g.senders), 7):
        a, b = feats[g.senders[e]], feats[g.receivers[e]]
        expected = abs(a[0] - b[0]) + abs(a[1] - b[1]) + abs(a[4] - b[4])
        assert g.edges[e, 0] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_pad_unpad_round_trip_and_mask(labels):
    other = graphs.segment(_painting(seed=5, size=48), n_segments=30)
    g1 = graphs.build_graph(_band(), labels)
    g2 = graphs.build_graph(_band(seed=2, size=48), other)
    n_node, n_edge, n_graph = graphs.padded_sizes([g1, g2], batch_size=3, multiple=32)
    big_n, big_e = max(g1.n_node[0], g2.n_node[0]), max(g1.n_edge[0], g2.n_edge[0])
    assert n_node % 32 == 0 and n_node >= 3 * big_n + 1 and n_node - 32 < 3 * big_n + 1
    assert n_edge % 32 == 0 and n_edge >= 3 * big_e and n_graph == 4
    padded = graphs.pad([g1, g2], n_node, n_edge, n_graph)
    assert padded.nodes.shape[0] == n_node and padded.senders.shape[0] == n_edge and padded.n_node.shape[0] == n_graph
    real = g1.n_node[0] + g2.n_node[0]
    np.testing.assert_array_equal(graphs.node_padding_mask(padded), np.arange(n_node) < real)
    back = graphs.unbatch(graphs.unpad(padded))
    assert len(back) == 2
    for original, restored in zip((g1, g2), back):
        for field in ("nodes", "edges", "senders", "receivers", "n_node", "n_edge"):
            np.testing.assert_array_equal(getattr(restored, field), getattr(original, field))
    # Padding edges stay among padding nodes.
    assert np.all(padded.senders[g1.n_edge[0] + g2.n_edge[0] :] >= real)


def test_pad_too_small_is_a_clear_error(labels):
    g = graphs.build_graph(_band(), labels)
    with pytest.raises(ValueError, match="do not fit the padding"):
        graphs.pad([g], int(g.n_node[0]), int(g.n_edge[0]), 2)


def test_paint(labels):
    values = np.arange(labels.max() + 1, dtype=np.float32) * 1.5
    painted = graphs.paint(labels, values)
    for y, x in [(0, 0), (10, 40), (63, 63), (31, 2)]:
        assert painted[y, x] == values[labels[y, x]]
    # Longer arrays (a padded graph's nodes) are fine; 2-D values give [H, W, K].
    assert graphs.paint(labels, np.zeros((labels.max() + 9, 2))).shape == labels.shape + (2,)
    with pytest.raises(ValueError, match="superpixels"):
        graphs.paint(labels, values[:-1])
