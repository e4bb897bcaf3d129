"""GCN and GAT Siamese networks on superpixel graphs (the 2025 ArtExtract graph Siamese,
docs/papers.md, "ArtExtract"). Flax linen modules on jraph's segment operations;
the graphs come from `xray_flax.hidden_art.graphs`.

The batch (built on the host by `prepare`, or `scene_graphs` + `collate` when graphs are cached):
    "rgb_graph"    jraph.GraphsTuple: the N paintings' RGB graphs, batched and padded to static
                   sizes (n_node, n_edge, n_graph) with jraph's padding graphs (real graphs first)
    "band_graphs"  jraph.GraphsTuple whose every leaf has a leading band axis B: band b's graphs
                   of the N paintings, padded exactly like the RGB graph. ONE segmentation per
                   painting (`graphs.segment` of its RGB) serves the RGB and every band, so all
                   B + 1 graphs share n_node, n_edge, senders and receivers; only the node
                   features (and the unused edge weights) differ
    "labels"       int32 [N, H, W]: each painting's superpixel labels (0..n_i - 1, local)

Public functions and the source of each choice
- `GraphConv`: X W (no bias) -> `jraph.GraphConvolution` with self-edges added and symmetric
  normalisation D^-1/2 (A + I) D^-1/2 -> + bias [Kipf & Welling 2017 as PyG's GCNConv, the
  reference's layer; jraph's own default adds no self-edges and would carry the bias through the
  normalisation].
- `GraphNorm`: per graph and per feature, mean and variance over the graph's REAL nodes
  (padded nodes masked out and set to 0), learnt scale and shift [ours, after GraphNorm, Cai et
  al. ICML 2021, without its learnt mean shift; replaces the reference's BatchNorm, whose
  statistics pooled all nodes of the batch -- several paintings -- and were computed separately
  in each branch, so the "shared" encoder was not one function of its input; here a graph's output
  depends on that graph alone, in training and inference alike, and needs no batch statistics].
- `GCNEncoder`: 2 x (GraphConv -> GraphNorm -> LeakyReLU(0.01)), widths (128, 32) [ArtExtract
  code: GCNConv, BatchNorm, LeakyReLU, hidden 128, out 32], then a global MAX pool over each
  graph's real nodes [ArtExtract code].
- `GATLayer`: multi-head graph attention [Velickovic et al. ICLR 2018, as PyG's GATConv]:
  h = X W per head, logits e_ij = LeakyReLU_0.2(a_s . h_j + a_r . h_i) on every edge j -> i and on
  a self-loop i -> i added to every node (jraph's GAT has neither heads nor self-loops),
  alpha = `jraph.segment_softmax` over each receiver's incoming edges, out_i = sum_j alpha_ij h_j,
  heads concatenated (hidden layers) or averaged (last layer), + bias.
- `GATEncoder`: 3 layers of widths (128, 32, 32), heads 4 by default [ArtExtract code: widths
  128/32/32, heads a parameter (its Siamese ran with 1); the default 4 and the multi-head form are
  the issue's]. On the concatenating hidden layers a width is the TOTAL over the heads (128 = 4 x
  32) [ours: heads = 1 is then exactly the reference's sizes and more heads cost no more];
  the last layer has `width` features per head and averages them. After every layer
  LeakyReLU(0.01) and dropout 0.1 on the node features, in training only, from the explicit
  "dropout" key [ArtExtract code: nn.LeakyReLU(), nn.Dropout(0.1) after each GATConv]. Global
  max pool over real nodes -> 32-d graph embedding.
- `GraphSiamese`: ONE encoder (one parameter tree, params["encoder"]) applied to the disjoint
  union of the RGB graph and the B band graphs (`merge_graphs`), so both branches are exactly
  the same function of their input [the reference's shared backbone; the union is ours: one call,
  one compilation, whatever B].
- `contrastive_loss(z_rgb [N, D], z_bands [N, B, D], margin=1)` -> (loss, terms):
  mean_{n,b} d(z_rgb_n, z_band_{n,b})^2 + mean_{n,b} relu(margin - d(z_rgb_n, z_band_{n-1,b}))^2,
  d Euclidean, negatives = the band embeddings rolled by 1 over the batch (jnp.roll) [ArtExtract
  code, `contrastive_loss`; the mean over (n, b) equals the reference's mean over bands of per-band
  losses]. Needs N >= 2 (with one painting the "negative" would be the positive itself). The
  negative distance is sqrt(|.|^2 + 1e-12) so that its gradient stays finite at 0.
- `init(key, batch, **model)`, `optimizer(config=None)`: AdamW, learning rate 1e-3, weight decay
  0.01 [ArtExtract code: torch AdamW(lr=1e-3) with its default decay];
  schedule: a staircase decay by `decay_rate` 0.8 every `decay_every_steps` steps when that is
  > 0 [the reference's StepLR(step_size=3 epochs, gamma=0.8): set decay_every_steps to 3 x the
  steps of an epoch], constant by default (0) [ours: an epoch's length is the caller's].
- `loss_fn`, `train_step(state, batch, key, tx=..., margin=1, **model)` (pure, jit-able: static
  shapes from the padding). Metrics: loss, grad_norm (optax.tree.norm), positive, negative (mean
  distances).
- `dissimilarity(variables, batch, combination="mean", attention_layers="mean", **model)` ->
  "per_band" [N, H, W, B]: per-node |embedding difference| = || z_i(RGB) - z_i(band b) ||_2 of
      the node embeddings before the pool, painted on the superpixels, for EVERY band [ArtExtract
      code's heatmap, which showed band 0 only];
  "map" [N, H, W]: `dissimilarity.combine(per_band, combination)` (mean over bands by default);
  "graph_distance" [N, B]: d(z_rgb, z_band) of the pooled embeddings;
  GAT only, the attention each node RECEIVES (painted the same way):
  "attention" [N, H, W, B] in band b's branch, "attention_rgb" [N, H, W] in the RGB branch,
  "attention_difference" [N, H, W, B] = |attention - attention_rgb|. Definition [ours]: softmax
  makes the attention over a receiver's incoming edges sum to 1 for every node, so "received"
  means the attention a node's NEIGHBOURS pay to it: sum over the edges j -> i that the node j
  sends (its self-loop left out) of alpha_ij, averaged over the heads, then averaged over the 3
  layers (`attention_layers="mean"`, every layer shapes the embedding) or the last layer only
  ("last"). Raw values, >= 0; min-max scaling and colours are the report's.
- `scene_graphs(scene, ...)`, `collate(items, sizes=None, multiple=64)`, `prepare(scenes, ...)`:
  host-side batch building from the family's scene dicts (segmentation and graphs per scene,
  padding of the batch; `sizes` fixes (n_node, n_edge, n_graph) so every batch of a run has one
  shape, see `graphs.padded_sizes`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax

from xray_flax.hidden_art import dissimilarity as dis
from xray_flax.hidden_art import graphs as gr
from xray_flax.train_state import TrainState

ARCHS = ("gcn", "gat")
DEFAULT_GCN_FEATURES = (128, 32)
DEFAULT_GAT_FEATURES = (128, 32, 32)
DEFAULT_HEADS = 4
DEFAULT_DROPOUT = 0.1
NEGATIVE_SLOPE = 0.01  # [ArtExtract code] torch nn.LeakyReLU() default
ATTENTION_SLOPE = 0.2  # [Velickovic et al. 2018; PyG GATConv default]
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_WEIGHT_DECAY = 1e-2
ATTENTION_LAYERS = ("mean", "last")
_DISTANCE_EPS = 1e-12


# ----------------------------------------------------------------------------- graph helpers


def graph_ids(graph: jraph.GraphsTuple) -> jax.Array:
    """int32 [n_node_total]: the index of the graph each node belongs to (jit-able)."""
    n_graph = graph.n_node.shape[0]
    total = graph.nodes.shape[0]
    return jnp.repeat(jnp.arange(n_graph, dtype=jnp.int32), graph.n_node, total_repeat_length=total)


def real_node_mask(graph: jraph.GraphsTuple, n_real: int) -> jax.Array:
    """bool [n_node_total]: the nodes of the first n_real graphs (`graphs.pad` puts them first)."""
    count = jnp.sum(graph.n_node[:n_real])
    return jnp.arange(graph.nodes.shape[0]) < count


def merge_graphs(rgb_graph: jraph.GraphsTuple, band_graphs: jraph.GraphsTuple, n_real: int):
    """(merged GraphsTuple, real-node mask [K * n]) of the disjoint union of K = 1 + B padded
    graphs with one shape: block 0 is the RGB graph, block 1 + b band b's. Inside a block the
    node order is the padded graph's, so block k's node i is merged node k * n + i."""
    n, e, g = rgb_graph.nodes.shape[0], rgb_graph.senders.shape[0], rgb_graph.n_node.shape[0]
    if band_graphs.nodes.ndim != 3 or band_graphs.nodes.shape[1:] != rgb_graph.nodes.shape:
        raise ValueError(
            f"band_graphs.nodes must be [B, {n}, {rgb_graph.nodes.shape[1]}] (padded like the RGB graph), "
            f"got {band_graphs.nodes.shape}"
        )
    if band_graphs.senders.shape[1:] != (e,) or band_graphs.n_node.shape[1:] != (g,):
        raise ValueError(
            f"band_graphs must be padded like the RGB graph ({e} edges, {g} graphs), got senders "
            f"{band_graphs.senders.shape}, n_node {band_graphs.n_node.shape}"
        )

    def stack(a, b):
        return jnp.concatenate([jnp.asarray(a)[None], jnp.asarray(b)], axis=0)

    k = band_graphs.nodes.shape[0] + 1
    offsets = (jnp.arange(k, dtype=jnp.int32) * n)[:, None]
    n_node = stack(rgb_graph.n_node, band_graphs.n_node)
    merged = jraph.GraphsTuple(
        nodes=stack(rgb_graph.nodes, band_graphs.nodes).reshape(k * n, -1),
        edges=None if rgb_graph.edges is None else stack(rgb_graph.edges, band_graphs.edges).reshape(k * e, -1),
        senders=(stack(rgb_graph.senders, band_graphs.senders) + offsets).reshape(-1),
        receivers=(stack(rgb_graph.receivers, band_graphs.receivers) + offsets).reshape(-1),
        n_node=n_node.reshape(-1),
        n_edge=stack(rgb_graph.n_edge, band_graphs.n_edge).reshape(-1),
        globals=None,
    )
    real = jnp.sum(n_node[:, :n_real], axis=1)
    mask = (jnp.arange(n)[None, :] < real[:, None]).reshape(-1)
    return merged, mask


def max_pool(x: jax.Array, ids: jax.Array, n_graph: int, mask: jax.Array) -> jax.Array:
    """[n_graph, D] max over each graph's real nodes; 0 for graphs without real nodes."""
    pooled = jraph.segment_max(jnp.where(mask[:, None], x, -jnp.inf), ids, n_graph)
    has_nodes = jraph.segment_sum(mask.astype(jnp.int32), ids, n_graph) > 0
    return jnp.where(has_nodes[:, None], pooled, 0.0)


# ----------------------------------------------------------------------------- layers


class GraphConv(nn.Module):
    """D^-1/2 (A + I) D^-1/2 X W + b on a (batched, padded) GraphsTuple's nodes."""

    features: int

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        conv = jraph.GraphConvolution(
            update_node_fn=nn.Dense(self.features, use_bias=False, name="linear"),
            add_self_edges=True,
            symmetric_normalization=True,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv(graph).nodes + bias


class GraphNorm(nn.Module):
    """Per graph, per feature normalisation over the real nodes; padded nodes come out 0."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, ids: jax.Array, n_graph: int, mask: jax.Array) -> jax.Array:
        m = mask[:, None].astype(x.dtype)
        count = jnp.maximum(jraph.segment_sum(m, ids, n_graph), 1.0)
        mean = jraph.segment_sum(x * m, ids, n_graph) / count
        centred = (x - mean[ids]) * m
        var = jraph.segment_sum(jnp.square(centred), ids, n_graph) / count
        y = centred * jax.lax.rsqrt(var[ids] + self.epsilon)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        shift = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return (y * scale + shift) * m


class GATLayer(nn.Module):
    """Multi-head graph attention with self-loops; returns (out, edge alpha [E, heads], self-loop
    alpha [n, heads]), alpha summing to 1 over each node's incoming edges plus its self-loop."""

    features: int  # per head
    heads: int = DEFAULT_HEADS
    concat: bool = True
    attention_slope: float = ATTENTION_SLOPE

    @nn.compact
    def __call__(self, x: jax.Array, senders: jax.Array, receivers: jax.Array):
        n, n_edge = x.shape[0], senders.shape[0]
        loops = jnp.arange(n, dtype=senders.dtype)
        s = jnp.concatenate([senders, loops])
        r = jnp.concatenate([receivers, loops])
        h = nn.Dense(self.heads * self.features, use_bias=False, name="linear")(x).reshape(n, self.heads, self.features)
        init = nn.initializers.glorot_uniform()
        a_sender = self.param("attention_sender", init, (self.heads, self.features))
        a_receiver = self.param("attention_receiver", init, (self.heads, self.features))
        # Per-node scores first, then gathered per edge: E x heads work instead of E x heads x F.
        score_s = jnp.sum(h * a_sender, axis=-1)
        score_r = jnp.sum(h * a_receiver, axis=-1)
        logits = nn.leaky_relu(score_s[s] + score_r[r], self.attention_slope)
        alpha = jraph.segment_softmax(logits, r, num_segments=n)
        out = jraph.segment_sum(h[s] * alpha[..., None], r, num_segments=n)
        out = out.reshape(n, -1) if self.concat else jnp.mean(out, axis=1)
        out = out + self.param("bias", nn.initializers.zeros, (out.shape[-1],))
        return out, alpha[:n_edge], alpha[n_edge:]


# ----------------------------------------------------------------------------- encoders


class GCNEncoder(nn.Module):
    features: Sequence[int] = DEFAULT_GCN_FEATURES
    negative_slope: float = NEGATIVE_SLOPE
    norm: bool = True

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, mask: jax.Array, train: bool = False) -> dict:
        del train  # no dropout in the reference's GCN
        ids, n_graph = graph_ids(graph), graph.n_node.shape[0]
        x = jnp.asarray(graph.nodes, jnp.float32) * mask[:, None]
        for width in self.features:
            x = GraphConv(int(width))(graph._replace(nodes=x))
            if self.norm:
                x = GraphNorm()(x, ids, n_graph, mask)
            x = nn.leaky_relu(x, self.negative_slope) * mask[:, None]
        return {"nodes": x, "graph": max_pool(x, ids, n_graph, mask)}


class GATEncoder(nn.Module):
    features: Sequence[int] = DEFAULT_GAT_FEATURES
    heads: int = DEFAULT_HEADS
    dropout: float = DEFAULT_DROPOUT
    negative_slope: float = NEGATIVE_SLOPE
    attention_slope: float = ATTENTION_SLOPE

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, mask: jax.Array, train: bool = False) -> dict:
        ids, n_graph = graph_ids(graph), graph.n_node.shape[0]
        x = jnp.asarray(graph.nodes, jnp.float32) * mask[:, None]
        edge_attention, self_attention = [], []
        for i, width in enumerate(self.features):
            last = i == len(self.features) - 1
            if not last and width % self.heads:
                raise ValueError(f"GAT hidden width {width} is not a multiple of heads={self.heads}")
            per_head = int(width) if last else int(width) // self.heads
            x, alpha_edges, alpha_self = GATLayer(per_head, self.heads, not last, self.attention_slope)(
                x, graph.senders, graph.receivers
            )
            x = nn.leaky_relu(x, self.negative_slope)
            x = nn.Dropout(self.dropout, deterministic=not train)(x) * mask[:, None]
            edge_attention.append(alpha_edges)
            self_attention.append(alpha_self)
        return {
            "nodes": x,
            "graph": max_pool(x, ids, n_graph, mask),
            "edge_attention": jnp.stack(edge_attention),
            "self_attention": jnp.stack(self_attention),
        }


class GraphSiamese(nn.Module):
    """One encoder on the RGB graph and every band graph (see `merge_graphs`). Returns per block
    (K = 1 + B, block 0 = RGB): "nodes" [K, n, D], "graph" [K, n_graph, D], "mask" [K, n], and for
    the GAT "edge_attention" [L, K, E, heads], "self_attention" [L, K, n, heads]."""

    arch: str = "gat"
    features: Sequence[int] | None = None
    heads: int = DEFAULT_HEADS
    dropout: float = DEFAULT_DROPOUT
    negative_slope: float = NEGATIVE_SLOPE
    attention_slope: float = ATTENTION_SLOPE
    norm: bool = True

    def setup(self):
        if self.arch == "gcn":
            features = DEFAULT_GCN_FEATURES if self.features is None else tuple(self.features)
            self.encoder = GCNEncoder(features, self.negative_slope, self.norm)
        elif self.arch == "gat":
            features = DEFAULT_GAT_FEATURES if self.features is None else tuple(self.features)
            self.encoder = GATEncoder(features, self.heads, self.dropout, self.negative_slope, self.attention_slope)
        else:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")

    def __call__(self, rgb_graph, band_graphs, n_real: int, train: bool = False) -> dict:
        merged, mask = merge_graphs(rgb_graph, band_graphs, n_real)
        k = band_graphs.nodes.shape[0] + 1
        out = self.encoder(merged, mask, train)
        result = {
            "nodes": out["nodes"].reshape(k, -1, out["nodes"].shape[-1]),
            "graph": out["graph"].reshape(k, -1, out["graph"].shape[-1]),
            "mask": mask.reshape(k, -1),
        }
        for name in ("edge_attention", "self_attention"):
            if name in out:
                a = out[name]
                result[name] = a.reshape(a.shape[0], k, -1, a.shape[-1])
        return result


def make_model(
    arch: str = "gat",
    *,
    features: Sequence[int] | None = None,
    heads: int = DEFAULT_HEADS,
    dropout: float = DEFAULT_DROPOUT,
    negative_slope: float = NEGATIVE_SLOPE,
    attention_slope: float = ATTENTION_SLOPE,
    norm: bool = True,
) -> GraphSiamese:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if heads < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"need heads >= 1 and 0 <= dropout < 1, got heads={heads}, dropout={dropout}")
    return GraphSiamese(
        arch=arch,
        features=None if features is None else tuple(int(f) for f in features),
        heads=int(heads),
        dropout=float(dropout),
        negative_slope=float(negative_slope),
        attention_slope=float(attention_slope),
        norm=bool(norm),
    )


# ----------------------------------------------------------------------------- the batch


def validate_graph_batch(batch: Mapping, what: str = "the graph batch") -> tuple[int, int]:
    """(N paintings, B bands); ValueError naming `what` when keys or shapes are wrong."""
    missing = [k for k in ("rgb_graph", "band_graphs", "labels") if k not in batch]
    if missing:
        raise ValueError(
            f"{what} lacks {missing}: graph methods need 'rgb_graph', 'band_graphs', 'labels' (see prepare)"
        )
    labels, rgb, bands = batch["labels"], batch["rgb_graph"], batch["band_graphs"]
    if len(labels.shape) != 3 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{what}: 'labels' must be integer [N, H, W], got {labels.dtype} {tuple(labels.shape)}")
    n_real = labels.shape[0]
    if rgb.n_node.shape[0] <= n_real:
        raise ValueError(
            f"{what}: the RGB graph holds {rgb.n_node.shape[0]} graphs for {n_real} paintings; "
            "it must be padded (graphs.pad) with at least one padding graph"
        )
    if bands.nodes.ndim != 3:
        raise ValueError(f"{what}: band_graphs.nodes must be [B, n_node, F], got {tuple(bands.nodes.shape)}")
    return n_real, bands.nodes.shape[0]


def scene_graphs(
    scene: Mapping,
    *,
    n_segments: int = gr.DEFAULT_N_SEGMENTS,
    compactness: float = gr.DEFAULT_COMPACTNESS,
    standardise: str = "image",
    labels=None,
) -> dict:
    """{"labels" [H, W], "rgb": GraphsTuple, "bands": [GraphsTuple] * B} of one scene dict: one
    SLIC segmentation of the RGB (or the given `labels`) shared by the RGB and every band."""
    name = scene.get("name", "?")
    for key in ("rgb", "bands"):
        if key not in scene:
            raise ValueError(f"scene {name!r} lacks {key!r}")
    rgb, bands = np.asarray(scene["rgb"]), np.asarray(scene["bands"])
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or bands.ndim != 3 or bands.shape[:2] != rgb.shape[:2]:
        raise ValueError(
            f"scene {name!r}: need rgb [H, W, 3] and bands [H, W, B] of one size, got {rgb.shape}, {bands.shape}"
        )
    if labels is None:
        labels = gr.segment(rgb, n_segments=n_segments, compactness=compactness)
    labels = gr.check_labels(labels, rgb.shape[:2], what=f"scene {name!r} labels")
    return {
        "labels": labels,
        "rgb": gr.build_graph(rgb, labels, standardise=standardise),
        "bands": [gr.build_graph(bands[..., b], labels, standardise=standardise) for b in range(bands.shape[-1])],
    }


def collate(items: Sequence[Mapping], sizes: tuple[int, int, int] | None = None, multiple: int = 64) -> dict:
    """The batch (module text) of `scene_graphs` results; `sizes` = (n_node, n_edge, n_graph),
    default `graphs.padded_sizes` of these graphs."""
    if not items:
        raise ValueError("collate: no scenes")
    shape, n_bands = items[0]["labels"].shape, len(items[0]["bands"])
    for i, item in enumerate(items):
        if item["labels"].shape != shape or len(item["bands"]) != n_bands:
            raise ValueError(
                f"collate: scene {i} is {item['labels'].shape} with {len(item['bands'])} bands, scene 0 is "
                f"{shape} with {n_bands}; crop or resize first"
            )
        for b, g in enumerate(item["bands"]):
            if not (np.array_equal(g.senders, item["rgb"].senders) and np.array_equal(g.n_node, item["rgb"].n_node)):
                raise ValueError(f"collate: scene {i} band {b} is not on the RGB's segmentation")
    if n_bands < 1:
        raise ValueError("collate: scenes without bands")
    if sizes is None:
        sizes = gr.padded_sizes([it["rgb"] for it in items], len(items), multiple)
    rgb = gr.pad([it["rgb"] for it in items], *sizes)
    per_band = [gr.pad([it["bands"][b] for it in items], *sizes) for b in range(n_bands)]
    bands = jax.tree.map(lambda *leaves: np.stack(leaves), *per_band)
    return {"rgb_graph": rgb, "band_graphs": bands, "labels": np.stack([it["labels"] for it in items]).astype(np.int32)}


def prepare(
    scenes: Sequence[Mapping],
    *,
    n_segments: int = gr.DEFAULT_N_SEGMENTS,
    compactness: float = gr.DEFAULT_COMPACTNESS,
    standardise: str = "image",
    sizes: tuple[int, int, int] | None = None,
    multiple: int = 64,
) -> dict:
    """The graph batch of scene dicts (common.md data model)."""
    items = [scene_graphs(s, n_segments=n_segments, compactness=compactness, standardise=standardise) for s in scenes]
    return collate(items, sizes, multiple)


# ----------------------------------------------------------------------------- training


def init(key: jax.Array, batch: Mapping, **model) -> dict:
    n_real, _ = validate_graph_batch(batch)
    # Jitted: op-by-op initialisation of the GAT takes several times longer than its compilation.
    net = make_model(**model)
    return jax.jit(functools.partial(net.init, n_real=n_real, train=False))(
        key, batch["rgb_graph"], batch["band_graphs"]
    )


def optimizer(config: Mapping | None = None) -> optax.GradientTransformation:
    """AdamW; config keys learning_rate, weight_decay, decay_rate, decay_every_steps (module text)."""
    config = {} if config is None else config
    learning_rate = float(config.get("learning_rate", DEFAULT_LEARNING_RATE))
    every = int(config.get("decay_every_steps", 0))
    if every < 0:
        raise ValueError(f"decay_every_steps must be >= 0 (0 = constant), got {every}")
    schedule = learning_rate
    if every > 0:
        schedule = optax.exponential_decay(
            learning_rate, transition_steps=every, decay_rate=float(config.get("decay_rate", 0.8)), staircase=True
        )
    return optax.adamw(schedule, weight_decay=float(config.get("weight_decay", DEFAULT_WEIGHT_DECAY)))


def embeddings(out: Mapping, n_real: int) -> tuple[jax.Array, jax.Array]:
    """(z_rgb [N, D], z_bands [N, B, D]) of the real graphs from `GraphSiamese`'s output."""
    z = out["graph"][:, :n_real]
    return z[0], jnp.moveaxis(z[1:], 0, 1)


def contrastive_loss(z_rgb: jax.Array, z_bands: jax.Array, *, margin: float = 1.0) -> tuple[jax.Array, dict]:
    """(loss, {"positive", "negative"} mean distances); z_bands [N, B, D] or [N, D]."""
    if z_bands.ndim == 2:
        z_bands = z_bands[:, None]
    if z_rgb.ndim != 2 or z_bands.ndim != 3 or z_bands.shape[0] != z_rgb.shape[0] or z_bands.shape[2] != z_rgb.shape[1]:
        raise ValueError(f"contrastive_loss: need z_rgb [N, D], z_bands [N, B, D]; got {z_rgb.shape}, {z_bands.shape}")
    if z_rgb.shape[0] < 2:
        raise ValueError("contrastive_loss: the rolled-batch negatives need at least 2 paintings in a batch")
    positive_sq = jnp.sum(jnp.square(z_rgb[:, None] - z_bands), axis=-1)
    negative = jnp.sqrt(jnp.sum(jnp.square(z_rgb[:, None] - jnp.roll(z_bands, 1, axis=0)), axis=-1) + _DISTANCE_EPS)
    loss = jnp.mean(positive_sq) + jnp.mean(jnp.square(jax.nn.relu(margin - negative)))
    return loss, {"positive": jnp.mean(jnp.sqrt(positive_sq + _DISTANCE_EPS)), "negative": jnp.mean(negative)}


def loss_fn(params, batch: Mapping, key: jax.Array, *, margin: float = 1.0, **model) -> tuple[jax.Array, dict]:
    n_real, _ = validate_graph_batch(batch)
    out = make_model(**model).apply(
        {"params": params}, batch["rgb_graph"], batch["band_graphs"], n_real, train=True, rngs={"dropout": key}
    )
    return contrastive_loss(*embeddings(out, n_real), margin=margin)


def train_step(
    state: TrainState,
    batch: Mapping,
    key: jax.Array,
    *,
    tx: optax.GradientTransformation | None = None,
    margin: float = 1.0,
    **model,
) -> tuple[TrainState, dict]:
    """One contrastive step; `tx` must be the optimiser the state was created with."""
    tx = optimizer() if tx is None else tx
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key, margin=margin, **model)
    return state.apply_gradients(grads, tx), {"loss": loss, "grad_norm": optax.tree.norm(grads), **terms}


# ----------------------------------------------------------------------------- heatmaps


def _paint(values: jax.Array, labels: jax.Array, n_node: jax.Array) -> jax.Array:
    """values [K, n_node_total] of padded graphs -> [N, H, W, K] on each painting's superpixels."""
    n_real = labels.shape[0]
    sizes = n_node[:n_real]
    offsets = jnp.cumsum(sizes) - sizes
    index = labels + offsets[:, None, None]
    return jnp.moveaxis(values[:, index], 0, -1)


def received_attention(edge_attention: jax.Array, senders: jax.Array, n_node_total: int, layers: str = "mean"):
    """[K, n] attention each node's neighbours pay to it (module text), from edge_attention
    [L, K, E, heads] of graphs that share `senders` [E] (block-local indices)."""
    if layers not in ATTENTION_LAYERS:
        raise ValueError(f"attention_layers must be one of {ATTENTION_LAYERS}, got {layers!r}")
    per_edge = jnp.mean(edge_attention, axis=-1)
    per_edge = jnp.mean(per_edge, axis=0) if layers == "mean" else per_edge[-1]
    return jraph.segment_sum(per_edge.T, senders, n_node_total).T


def dissimilarity(
    variables: Mapping, batch: Mapping, *, combination: str = "mean", attention_layers: str = "mean", **model
) -> dict[str, jax.Array]:
    """The heatmaps of the module text."""
    n_real, _ = validate_graph_batch(batch)
    rgb_graph, labels = batch["rgb_graph"], jnp.asarray(batch["labels"])
    out = make_model(**model).apply(variables, rgb_graph, batch["band_graphs"], n_real, train=False)
    nodes = out["nodes"]
    difference = jnp.sqrt(jnp.sum(jnp.square(nodes[1:] - nodes[:1]), axis=-1))
    per_band = _paint(difference, labels, rgb_graph.n_node)
    z_rgb, z_bands = embeddings(out, n_real)
    result = {
        "per_band": per_band,
        "map": dis.combine(per_band, combination),
        "graph_distance": jnp.sqrt(jnp.sum(jnp.square(z_rgb[:, None] - z_bands), axis=-1)),
    }
    if "edge_attention" in out:
        received = received_attention(out["edge_attention"], rgb_graph.senders, nodes.shape[1], attention_layers)
        painted = _paint(received, labels, rgb_graph.n_node)
        result["attention_rgb"] = painted[..., 0]
        result["attention"] = painted[..., 1:]
        result["attention_difference"] = jnp.abs(painted[..., 1:] - painted[..., :1])
    return result
