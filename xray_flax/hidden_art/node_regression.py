"""The 2025 graph tools made to localise, in their own spirit: a GCN or GAT on the painting's SLIC
superpixel graph predicts, per superpixel, the long bands' node statistics from the RGB's; the
signed node residual (predicted - observed: positive where a superpixel is darker in the band
than its colour and its neighbours' say) is the hidden-content map.

Why not the contrastive Siamese of `gnn`: its objective rewards the RGB and band branches for
AGREEING, so it teaches the shared encoder to discard exactly what differs between them, the
hidden layer; its maps measure at chance level (docs/results.md). Here the band is the TARGET,
never an input: the network cannot learn to ignore the hidden layer, only to predict what the
RGB shows, and the hidden layer is what it cannot predict (Blazek et al. 2017 on superpixels).

The item (host side, per painting; built once and cached by the family's loop)
    "graph"    jraph.GraphsTuple of one painting: the RGB's SLIC segmentation
               (`graphs.segment`, shared by every band), 8-connected region adjacency both ways
               (`graphs.region_adjacency`), node features `INPUTS` (below), no edge features
    "targets"  float32 [n, 2B]: per band the node mean and the node MINIMUM of the band
               (a thin dark underdrawing line inside a superpixel lowers its minimum more than its mean)
    "labels"   int32 [H, W]
Node inputs (`INPUTS`, 11 columns) [ours]: the mean, minimum and maximum of each LINEARISED RGB
channel (inverse sRGB: bands are linear reflectance), the standard deviation and the mean Sobel
magnitude of the luma (texture: strokes, hatching of the visible layer).

Public functions and the source of each choice
- `NodeRegressor(arch, heads, dropout)`: the `gnn` encoder (GCN: 2 x GraphConv 128, 32 with
  LeakyReLU; GAT: 3 layers 128/32/32, multi-head, dropout) WITHOUT GraphNorm [ours: the
  colour-to-band relation is absolute, per-graph normalisation would remove the colour level],
  then a linear head on [node embedding, node inputs] (the skip lets the node's own colour act
  directly) -> [n, 2B].
- `loss_fn`: Huber (delta 0.02 reflectance) of the prediction over the real nodes and every
  target [ours: robust: the training paintings' hidden nodes are a minority that a squared
  loss would average into the prediction].
- `dissimilarity(variables, batch, sign, scale, combination, statistic)` -> "signed"
  [N, H, W, B] = the node residual, prediction - observed, of the node mean + minimum
  (`statistic="both"`, default) or of one of them ("mean", "min"), painted on the superpixels;
  "per_band", "map", "band_weights" = `maps.form` of it; "prediction_mean" [N, H, W, B].
- `item`, `collate`, `init`, `optimizer` (`gnn.optimizer`: AdamW), `train_step`.
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
import scipy.ndimage as ndi
from skimage import filters

from xray_flax.hidden_art import gnn, maps, polynomial
from xray_flax.hidden_art import graphs as gr
from xray_flax.train_state import TrainState

INPUTS = ("r_mean", "g_mean", "b_mean", "r_min", "g_min", "b_min", "r_max", "g_max", "b_max", "luma_std", "sobel")
STATISTICS = ("both", "mean", "min")
CALIBRATIONS = ("prediction", "prediction_inputs", "none")
HUBER_DELTA = 0.02


def _linear(rgb: np.ndarray) -> np.ndarray:
    x = np.clip(rgb.astype(np.float64), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def node_inputs(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float32 [n, 11] (`INPUTS`) of an RGB [H, W, 3] on `labels`."""
    labels = gr.check_labels(labels, rgb.shape[:2])
    n, flat = int(labels.max()) + 1, labels.ravel()
    index = np.arange(n)
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    linear = _linear(np.asarray(rgb))
    columns = []
    for stat in ("mean", "min", "max"):
        for c in range(3):
            channel = linear[..., c]
            if stat == "mean":
                columns.append(np.bincount(flat, channel.ravel(), minlength=n) / counts)
            else:
                columns.append((ndi.minimum if stat == "min" else ndi.maximum)(channel, labels, index))
    luma = gr.intensity(np.asarray(rgb))
    mean = np.bincount(flat, luma.ravel(), minlength=n) / counts
    columns.append(np.sqrt(np.bincount(flat, np.square(luma.ravel() - mean[flat]), minlength=n) / counts))
    columns.append(np.bincount(flat, filters.sobel(luma).ravel(), minlength=n) / counts)
    return np.stack(columns, axis=1).astype(np.float32)


def node_targets(bands: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float32 [n, 2B]: per band its node mean (columns 0..B-1) and node minimum (B..2B-1)."""
    n, flat, index = int(labels.max()) + 1, labels.ravel(), np.arange(int(labels.max()) + 1)
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    b = bands.shape[-1]
    mean = [np.bincount(flat, bands[..., i].ravel().astype(np.float64), minlength=n) / counts for i in range(b)]
    low = [ndi.minimum(bands[..., i].astype(np.float64), labels, index) for i in range(b)]
    return np.stack(mean + low, axis=1).astype(np.float32)


def item(scene: Mapping, *, n_segments: int = 1250, compactness: float = 1.0) -> dict:
    """{"graph", "targets", "labels"} of one painting (module text)."""
    rgb, bands = np.asarray(scene["rgb"]), np.asarray(scene["bands"])
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or bands.ndim != 3 or bands.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"need rgb [H, W, 3] and bands [H, W, B] of one size, got {rgb.shape}, {bands.shape}")
    labels = gr.segment(rgb, n_segments=n_segments, compactness=compactness)
    nodes = node_inputs(rgb, labels)
    senders, receivers = gr.region_adjacency(labels)
    graph = jraph.GraphsTuple(
        nodes=nodes,
        edges=None,
        senders=senders,
        receivers=receivers,
        n_node=np.array([nodes.shape[0]], np.int32),
        n_edge=np.array([senders.shape[0]], np.int32),
        globals=None,
    )
    return {"graph": graph, "targets": node_targets(bands, labels), "labels": labels}


def sizes(items: Sequence[Mapping], batch_size: int) -> tuple[int, int, int]:
    return gr.padded_sizes([it["graph"] for it in items], batch_size)


def collate(items: Sequence[Mapping], sizes_: tuple[int, int, int] | None = None) -> dict:
    """{"graph": padded GraphsTuple, "targets" [n_node, 2B] (0 on padding), "labels" [N, H, W]}."""
    if not items:
        raise ValueError("collate: no paintings")
    if sizes_ is None:
        sizes_ = gr.padded_sizes([it["graph"] for it in items], len(items))
    graph = gr.pad([it["graph"] for it in items], *sizes_)
    targets = np.zeros((graph.nodes.shape[0], items[0]["targets"].shape[1]), np.float32)
    stacked = np.concatenate([it["targets"] for it in items])
    targets[: len(stacked)] = stacked
    return {"graph": graph, "targets": targets, "labels": np.stack([it["labels"] for it in items]).astype(np.int32)}


class NodeRegressor(nn.Module):
    """Encoder without GraphNorm, then a linear head on [embedding, inputs] -> [n, n_targets]."""

    n_targets: int
    arch: str = "gcn"
    heads: int = gnn.DEFAULT_HEADS
    dropout: float = gnn.DEFAULT_DROPOUT

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, mask: jax.Array, train: bool = False) -> jax.Array:
        if self.arch == "gcn":
            encoder = gnn.GCNEncoder(gnn.DEFAULT_GCN_FEATURES, norm=False)
        elif self.arch == "gat":
            encoder = gnn.GATEncoder(gnn.DEFAULT_GAT_FEATURES, self.heads, self.dropout)
        else:
            raise ValueError(f"arch must be one of {gnn.ARCHS}, got {self.arch!r}")
        embedding = encoder(graph, mask, train)["nodes"]
        x = jnp.concatenate([embedding, jnp.asarray(graph.nodes, jnp.float32)], axis=-1)
        return nn.Dense(self.n_targets, name="head")(x)


def _mask(batch: Mapping) -> jax.Array:
    graph, n_real = batch["graph"], batch["labels"].shape[0]
    return jnp.arange(graph.nodes.shape[0]) < jnp.sum(graph.n_node[:n_real])


def _model(batch: Mapping, arch: str, heads: int, dropout: float) -> NodeRegressor:
    return NodeRegressor(n_targets=int(batch["targets"].shape[-1]), arch=arch, heads=int(heads), dropout=float(dropout))


def init(key: jax.Array, batch: Mapping, *, arch: str = "gcn", heads: int = 1, dropout: float = 0.0) -> dict:
    model = _model(batch, arch, heads, dropout)
    return jax.jit(functools.partial(model.init, train=False))(key, batch["graph"], _mask(batch))


def optimizer(config: Mapping | None = None) -> optax.GradientTransformation:
    return gnn.optimizer(config)


def loss_fn(params, batch: Mapping, key: jax.Array, *, arch: str = "gcn", heads: int = 1, dropout: float = 0.0):
    mask = _mask(batch)
    prediction = _model(batch, arch, heads, dropout).apply(
        {"params": params}, batch["graph"], mask, train=True, rngs={"dropout": key}
    )
    error = optax.huber_loss(prediction, jnp.asarray(batch["targets"]), delta=HUBER_DELTA) / HUBER_DELTA
    weights = mask[:, None].astype(jnp.float32)
    return jnp.sum(error * weights) / jnp.maximum(jnp.sum(weights) * error.shape[-1], 1.0)


def train_step(
    state: TrainState,
    batch: Mapping,
    key: jax.Array,
    *,
    tx: optax.GradientTransformation | None = None,
    arch: str = "gcn",
    heads: int = 1,
    dropout: float = 0.0,
) -> tuple[TrainState, dict]:
    tx = optimizer() if tx is None else tx
    value, grads = jax.value_and_grad(loss_fn)(state.params, batch, key, arch=arch, heads=heads, dropout=dropout)
    return state.apply_gradients(grads, tx), {"loss": value, "grad_norm": optax.tree.norm(grads)}


def calibrated(prediction: jax.Array, batch: Mapping, *, with_inputs: bool = False) -> jax.Array:
    """[n_node_total, T]: per painting, the targets' robust (Huber IRLS) linear fit on
    [1, the network's predictions (+ the node inputs)] over that painting's superpixels: the
    cross-painting network as a prior, refitted to the painting being analysed (its varnish,
    light and exposure); no truth, the painting's own nodes only."""
    graph = batch["graph"]
    n_real = batch["labels"].shape[0]
    total = graph.nodes.shape[0]
    ids = jnp.repeat(jnp.arange(graph.n_node.shape[0]), graph.n_node, total_repeat_length=total)
    mask = ids[None, :] == jnp.arange(n_real)[:, None]  # [N, n_node_total]
    columns = [jnp.ones((total, 1), jnp.float32), prediction]
    if with_inputs:
        columns.append(jnp.asarray(graph.nodes, jnp.float32))
    x = jnp.concatenate(columns, axis=-1)
    x = jnp.where(mask[..., None], x[None], 0.0)
    y = jnp.where(mask[..., None], jnp.asarray(batch["targets"])[None], 0.0)
    coef = polynomial.robust_fit(x, y, robust="huber", iterations=10, mask=mask, ridge=1e-4)
    fitted = jnp.einsum("npf,nft->npt", x, coef)  # each painting's rows, 0 elsewhere
    return jnp.where(ids[:, None] < n_real, jnp.sum(fitted, axis=0), prediction)


def _paint(values: jax.Array, labels: jax.Array, n_node: jax.Array) -> jax.Array:
    """values [n_node_total, K] -> [N, H, W, K] on each painting's superpixels."""
    n_real = labels.shape[0]
    counts = n_node[:n_real]
    offsets = jnp.cumsum(counts) - counts
    return values[labels + offsets[:, None, None]]


def dissimilarity(
    variables: Mapping,
    batch: Mapping,
    *,
    arch: str = "gcn",
    heads: int = 1,
    dropout: float = 0.0,
    statistic: str = "both",
    calibrate: str = "prediction",
    **form,
) -> dict[str, jax.Array]:
    """The signed node residual painted on the superpixels, in the map form `form` (module text)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if calibrate not in CALIBRATIONS:
        raise ValueError(f"calibrate must be one of {CALIBRATIONS}, got {calibrate!r}")
    graph = batch["graph"]
    prediction = _model(batch, arch, heads, dropout).apply(variables, graph, _mask(batch), train=False)
    if calibrate != "none":
        prediction = calibrated(prediction, batch, with_inputs=calibrate == "prediction_inputs")
    residual = prediction - jnp.asarray(batch["targets"])
    b = residual.shape[-1] // 2
    node = {"both": residual[:, :b] + residual[:, b:], "mean": residual[:, :b], "min": residual[:, b:]}[statistic]
    labels = jnp.asarray(batch["labels"])
    signed = _paint(node, labels, graph.n_node)
    return {
        **maps.form(signed, **form),
        "signed": signed,
        "prediction_mean": _paint(prediction[:, :b], labels, graph.n_node),
    }
