"""Superpixel graphs of a painting for the GCN/GAT Siamese networks (the 2025 ArtExtract code,
docs/papers.md, "ArtExtract"). Host side: NumPy, SciPy and scikit-image; the graphs are
`jraph.GraphsTuple` values of NumPy arrays, padded to static sizes for jit.

Public functions and the source of each choice
- `segment(rgb, n_segments=5000, compactness=1.0, max_num_iter=10, sigma=0.0)` -> int32 labels
  [H, W], 0..n-1, every label present. `skimage.segmentation.slic` on the RGB (channel axis -1,
  so scikit-image segments in CIELAB), `start_label=0` and then relabelled with np.unique so no
  label is empty (THE FIX of the reference's empty node 0 from start_label=1). n_segments 5000
  and compactness 1 [ArtExtract code, `image_to_graph_rgb`; about 2.4k superpixels on a 256 px
  simulated painting]. ONE segmentation, computed on the RGB, is SHARED by the RGB and every band
  (THE FIX of the reference, which segmented every band separately in training and reused the
  RGB's segments at inference): node i is the same patch of canvas in every graph of a painting,
  so node-wise differences between the branches mean something.
- `intensity(image)` -> float64 [H, W]: the one channel the node features are computed from.
  A band ([H, W] or [H, W, 1]) as it is; an RGB image [H, W, 3] by its BT.601 luma, the
  coefficients of `dissimilarity.grey` [ours: the same columns in both branches need one
  intensity per pixel; the reference used R, G, B columns for the RGB and one column for a band,
  so column 4 was the std of G in one branch and the centroid y in the other].
- `node_features(image, labels, standardise="image")` -> float32 [n, 7], columns `FEATURES`:
  mean, std, min, max of the intensity per superpixel [ArtExtract code], the mean Sobel magnitude
  (`skimage.filters.sobel`) per superpixel [ours: the reference computes it for its edge weights
  only; as a node feature it shows the thin strokes of an underdrawing that fall inside one
  superpixel, which the mean misses], and the centroid (y, x) divided by (H - 1, W - 1), so in
  [0, 1] [ArtExtract code for the centroid; the scaling ours: the same for every painting size].
  Standardisation (`STANDARDISATIONS`):
    "image" (default) [ours]: the intensity is z-scored over the image's PIXELS (mean 0, std 1)
      before the statistics are taken. One affine map per image, so a band's exposure, gain and
      offset vanish (the same choice as the pixel baseline's per-band normalisation), while the
      four intensity columns keep their relations (std and Sobel in units of the image's spread,
      min <= mean <= max) and LOCAL differences between the branches -- the hidden content --
      survive unchanged.
    "graph" [ArtExtract code]: raw statistics, then every intensity column z-scored over the
      graph's nodes. Kept for comparison; it hides absolute differences between the branches
      (each column of each graph is forced to mean 0, std 1 on its own, e.g. a band where a large
      hidden region raises the std column everywhere looks like one where it does not).
    "none": raw statistics of the [0, 1] intensity.
  The centroid columns are never standardised: with the shared segmentation they are identical
  in both branches and in [0, 1] already.
- `region_adjacency(labels)` -> (senders, receivers) int32 [E]: region adjacency with
  8-connectivity (the pixel pairs right, down, down-right, down-left), every undirected pair
  once in each direction, no self-edges, sorted by (receiver, sender) [ArtExtract code:
  `skimage.graph.RAG(labels, connectivity=2)`, both directions; vectorised NumPy here, tested
  against the RAG].
- `edge_weights(features, senders, receivers)` -> float32 [E]: |d mean| + |d std| + |d Sobel
  mean| of the two superpixels, from the node feature columns [ArtExtract code, `build_rag`].
  They are stored in the graph's `edges` [E, 1] but the networks of `gnn` do NOT use them
  [ours, deliberate: they are dissimilarities (large across a boundary), while GCN aggregation
  weights are affinities, so using them as they are would average most across the strongest
  boundaries; and they are functions of node features the networks already see, which a GAT's
  attention on [W h_i || W h_j] can compare by itself. The reference computed them and never
  used them either].
- `build_graph(image, labels, standardise="image")` -> jraph.GraphsTuple of one graph: nodes
  float32 [n, 7], edges float32 [E, 1] (the weights), senders, receivers int32 [E], n_node,
  n_edge int32 [1], globals None.
- `padded_sizes(graphs, batch_size=None, multiple=64)` -> (n_node, n_edge, n_graph): static
  sizes that hold any `batch_size` graphs as large as the largest of `graphs`, rounded up to a
  multiple [ours: few distinct shapes, few recompilations]; n_node has room for the one padding
  node jraph's padding needs, n_graph = batch_size + 1.
- `pad(graphs, n_node, n_edge, n_graph)` -> one batched GraphsTuple padded with
  `jraph.pad_with_graphs` (a clear error when the graphs do not fit); `unpad(padded)` ->
  the batched real graphs (`jraph.unpad_with_graphs`), `unbatch(graph)` -> list of graphs;
  `node_padding_mask(padded)` -> bool [n_node] (`jraph.get_node_padding_mask`, True = real).
- `paint(labels, node_values)` -> [H, W] (or [H, W, K]): every pixel gets its superpixel's value
  (the heatmaps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jraph
import numpy as np
import scipy.ndimage as ndi
from skimage import filters, segmentation

FEATURES = ("mean", "std", "min", "max", "sobel", "y", "x")
INTENSITY_COLUMNS = (0, 1, 2, 3, 4)
STANDARDISATIONS = ("image", "graph", "none")
# BT.601 luma, the coefficients of dissimilarity.grey (dm_pix "rec601").
LUMA = np.array([0.2989, 0.5870, 0.1140])
DEFAULT_N_SEGMENTS = 5000
DEFAULT_COMPACTNESS = 1.0
# Keeps a constant image's z-score finite (all zeros) instead of 0 / 0.
_EPS = 1e-6


def _as_float_image(image, what: str) -> np.ndarray:
    image = np.asarray(image)
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise ValueError(f"{what}: expected a numeric image, got dtype {image.dtype}")
    image = image.astype(np.float64)
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{what}: the image holds NaN or infinite values")
    return image


def check_labels(labels, shape: tuple[int, int] | None = None, what: str = "labels") -> np.ndarray:
    """int labels [H, W] with values exactly 0..n-1 (no gaps); ValueError saying what is wrong."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: expected an integer [H, W] label image, got {labels.dtype} {labels.shape}")
    if shape is not None and labels.shape != tuple(shape):
        raise ValueError(f"{what}: labels are {labels.shape} but the image is {tuple(shape)}")
    if labels.size == 0:
        raise ValueError(f"{what}: empty label image")
    if labels.min() < 0:
        raise ValueError(f"{what}: negative labels")
    counts = np.bincount(labels.ravel())
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"{what}: labels must be 0..n-1 with every label present; missing e.g. {missing}")
    return labels.astype(np.int32, copy=False)


def segment(
    rgb,
    *,
    n_segments: int = DEFAULT_N_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    max_num_iter: int = 10,
    sigma: float = 0.0,
) -> np.ndarray:
    """SLIC superpixels of an RGB image [H, W, 3] in [0, 1] -> int32 labels 0..n-1, none empty."""
    rgb = _as_float_image(rgb, "segment")
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"segment: expected an RGB image [H, W, 3], got {rgb.shape}")
    if n_segments < 1:
        raise ValueError(f"segment: n_segments must be >= 1, got {n_segments}")
    labels = segmentation.slic(
        rgb,
        n_segments=int(n_segments),
        compactness=float(compactness),
        max_num_iter=int(max_num_iter),
        sigma=float(sigma),
        start_label=0,
        channel_axis=-1,
    )
    # SLIC's connectivity step can leave gaps in the label range; np.unique closes them.
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def intensity(image) -> np.ndarray:
    """float64 [H, W]: a band as it is, an RGB image by its BT.601 luma."""
    image = _as_float_image(image, "intensity")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] == 3:
        image = image @ LUMA
    elif image.ndim != 2:
        raise ValueError(f"intensity: expected a band [H, W] / [H, W, 1] or an RGB image [H, W, 3], got {image.shape}")
    return image


def node_features(image, labels, *, standardise: str = "image") -> np.ndarray:
    """float32 [n, 7] node features (columns `FEATURES`); see the module text."""
    if standardise not in STANDARDISATIONS:
        raise ValueError(f"standardise must be one of {STANDARDISATIONS}, got {standardise!r}")
    values = intensity(image)
    labels = check_labels(labels, values.shape)
    if standardise == "image":
        values = (values - values.mean()) / (values.std() + _EPS)
    n = int(labels.max()) + 1
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    mean = np.bincount(flat, values.ravel(), minlength=n) / counts
    # Two passes (deviations from each node's mean): no cancellation of E[x^2] - E[x]^2.
    std = np.sqrt(np.bincount(flat, np.square(values.ravel() - mean[flat]), minlength=n) / counts)
    index = np.arange(n)
    low = ndi.minimum(values, labels, index)
    high = ndi.maximum(values, labels, index)
    sobel = np.bincount(flat, filters.sobel(values).ravel(), minlength=n) / counts
    h, w = values.shape
    ys, xs = np.indices((h, w))
    cy = np.bincount(flat, ys.ravel(), minlength=n) / counts / max(h - 1, 1)
    cx = np.bincount(flat, xs.ravel(), minlength=n) / counts / max(w - 1, 1)
    features = np.stack([mean, std, low, high, sobel, cy, cx], axis=1)
    if standardise == "graph":
        cols = list(INTENSITY_COLUMNS)
        block = features[:, cols]
        features[:, cols] = (block - block.mean(0)) / (block.std(0) + _EPS)
    return features.astype(np.float32)


def region_adjacency(labels) -> tuple[np.ndarray, np.ndarray]:
    """(senders, receivers) int32 [E] of the 8-connected region adjacency, both directions,
    no self-edges, sorted by (receiver, sender)."""
    labels = check_labels(labels)
    n = int(labels.max()) + 1
    # The 4 forward neighbours of every pixel; with both directions added below this is the
    # full 3x3 (8-connected) neighbourhood.
    pairs = [
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
        (labels[:-1, :-1], labels[1:, 1:]),
        (labels[:-1, 1:], labels[1:, :-1]),
    ]
    a = np.concatenate([p.ravel() for p, _ in pairs]).astype(np.int64)
    b = np.concatenate([q.ravel() for _, q in pairs]).astype(np.int64)
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    undirected = np.unique(lo * n + hi)
    u, v = undirected // n, undirected % n
    senders = np.concatenate([u, v])
    receivers = np.concatenate([v, u])
    order = np.lexsort((senders, receivers))
    return senders[order].astype(np.int32), receivers[order].astype(np.int32)


def edge_weights(features, senders, receivers) -> np.ndarray:
    """|d mean| + |d std| + |d Sobel mean| per edge, float32 [E] (columns of `node_features`)."""
    features = np.asarray(features, np.float64)
    cols = [FEATURES.index(c) for c in ("mean", "std", "sobel")]
    diff = np.abs(features[np.asarray(senders)][:, cols] - features[np.asarray(receivers)][:, cols])
    return diff.sum(axis=1).astype(np.float32)


def build_graph(image, labels, *, standardise: str = "image") -> jraph.GraphsTuple:
    """One superpixel graph of `image` (a band [H, W] / [H, W, 1] or an RGB [H, W, 3]) on the
    shared segmentation `labels`."""
    nodes = node_features(image, labels, standardise=standardise)
    senders, receivers = region_adjacency(labels)
    weights = edge_weights(nodes, senders, receivers)
    return jraph.GraphsTuple(
        nodes=nodes,
        edges=weights[:, None],
        senders=senders,
        receivers=receivers,
        n_node=np.array([nodes.shape[0]], np.int32),
        n_edge=np.array([senders.shape[0]], np.int32),
        globals=None,
    )


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def padded_sizes(
    graphs: Sequence[jraph.GraphsTuple], batch_size: int | None = None, multiple: int = 64
) -> tuple[int, int, int]:
    """(n_node, n_edge, n_graph) that hold any `batch_size` (default: len(graphs)) of graphs as
    large as the largest single graph among `graphs` (each may be a batch), rounded up."""
    if not graphs:
        raise ValueError("padded_sizes: no graphs")
    if multiple < 1:
        raise ValueError(f"padded_sizes: multiple must be >= 1, got {multiple}")
    batch_size = len(graphs) if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"padded_sizes: batch_size must be >= 1, got {batch_size}")
    max_nodes = max(int(np.max(g.n_node)) for g in graphs)
    max_edges = max(int(np.max(g.n_edge)) for g in graphs)
    n_node = _round_up(batch_size * max_nodes + 1, multiple)
    n_edge = _round_up(max(batch_size * max_edges, 1), multiple)
    return n_node, n_edge, batch_size + 1


def pad(
    graphs: jraph.GraphsTuple | Sequence[jraph.GraphsTuple], n_node: int, n_edge: int, n_graph: int
) -> jraph.GraphsTuple:
    """The graphs batched and padded to exactly (n_node, n_edge, n_graph) with jraph's padding
    graphs: the real graphs come first, then one graph holding every padding node and edge, then
    empty graphs."""
    batched = graphs if isinstance(graphs, jraph.GraphsTuple) else jraph.batch_np(list(graphs))
    real_nodes, real_edges, real_graphs = int(np.sum(batched.n_node)), int(np.sum(batched.n_edge)), len(batched.n_node)
    if real_nodes >= n_node or real_edges > n_edge or real_graphs >= n_graph:
        raise ValueError(
            f"pad: {real_graphs} graphs with {real_nodes} nodes and {real_edges} edges do not fit the padding "
            f"(n_node={n_node}, n_edge={n_edge}, n_graph={n_graph}); need n_node > nodes, n_edge >= edges, "
            f"n_graph > graphs (see padded_sizes)"
        )
    return jraph.pad_with_graphs(batched, n_node=int(n_node), n_edge=int(n_edge), n_graph=int(n_graph))


def unpad(padded: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """The batched real graphs of a `pad` result."""
    return jraph.unpad_with_graphs(padded)


def unbatch(graph: jraph.GraphsTuple) -> list[jraph.GraphsTuple]:
    return jraph.unbatch_np(graph)


def node_padding_mask(padded: jraph.GraphsTuple):
    """bool [n_node]: True for real nodes, False for jraph's padding nodes."""
    return jraph.get_node_padding_mask(padded)


def paint(labels, node_values) -> np.ndarray:
    """Every pixel gets its superpixel's value: [H, W] for node_values [n], [H, W, K] for [n, K].
    node_values may be longer than n (e.g. a padded graph's first nodes)."""
    labels = check_labels(labels)
    node_values = np.asarray(node_values)
    n = int(labels.max()) + 1
    if node_values.ndim < 1 or node_values.shape[0] < n:
        raise ValueError(f"paint: {n} superpixels but node_values has shape {node_values.shape}")
    return node_values[labels]
