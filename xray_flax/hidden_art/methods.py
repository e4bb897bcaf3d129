"""The hidden-art method contract and registry: every method by name, as the shared run sees it.

A `Method` (built by `build(config)` from `config.method_name`) gives

    init(key, batch) -> variables                 Flax variables ({} when training-free)
    dissimilarity(variables, batch) -> {"per_band": [N, H, W, B] >= 0, "map": [N, H, W], extras}
    optimizer, train_step(state, batch, key) -> (state, metrics)   gradient methods only
                   (state: xray_flax.train_state.TrainState; metrics hold "loss", "grad_norm")
    item(scene) -> item                           host side, per painting (graph methods: its
                   superpixel graphs, built once per painting and cached by the run)
    sizes(items, batch_size) -> static sizes      padded sizes that hold any batch of these items
                   (graph methods: nodes, edges, graphs; None for pixel methods)
    collate(items, sizes) -> batch                the method's batch (stacked arrays, or padded graphs)
    augment                                       whether the run augments paintings each step
                   (pixel methods; graph methods train on their cached graphs)

The family's loop (`xray_flax.hidden_art.train`) trains, checkpoints, evaluates and writes reports for any
of them and never branches on a method's name; adding a method touches its module, its config
and one line of `REGISTRY`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import optax

from xray_flax import errors
from xray_flax.hidden_art import data, gnn, graphs, regression, siamese_conv
from xray_flax.hidden_art import dissimilarity as plain


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    init: Callable[[Any, dict], dict]
    dissimilarity: Callable[[dict, dict], dict]
    item: Callable[[Mapping], Any]
    sizes: Callable[[Sequence[Any], int], Any]
    collate: Callable[[Sequence[Any], Any], dict]
    augment: bool = True
    optimizer: optax.GradientTransformation | None = None
    train_step: Callable | None = None

    @property
    def trained(self) -> bool:
        return self.train_step is not None


def _pixel_batch(scenes: Sequence[Mapping], sizes: Any = None) -> dict:
    del sizes
    batch = data.to_batch(list(scenes))
    return {"rgb": batch["rgb"], "bands": batch["bands"]}


PIXEL = {"item": lambda scene: scene, "sizes": lambda items, batch_size: None, "collate": _pixel_batch}


def _graph_sizes(items: Sequence[Mapping], batch_size: int) -> tuple[int, int, int]:
    return graphs.padded_sizes([it["rgb"] for it in items], batch_size)


def _plain(config) -> Method:
    m = config.model
    return Method(
        name="plain",
        init=plain.init,
        dissimilarity=functools.partial(plain.dissimilarity, normalisation=m.normalisation, combination=m.combination),
        **PIXEL,
    )


def _regression(config) -> Method:
    m = config.model
    hidden = tuple(int(h) for h in m.hidden)
    tx = regression.optimizer(config.optim.to_dict())
    return Method(
        name="regression",
        init=functools.partial(regression.init, hidden=hidden),
        dissimilarity=functools.partial(regression.dissimilarity, hidden=hidden, combination=m.combination),
        **PIXEL,
        optimizer=tx,
        train_step=functools.partial(
            regression.train_step, tx=tx, hidden=hidden, pixels_per_step=int(m.pixels_per_step), loss=m.loss
        ),
    )


def _siamese_conv(config) -> Method:
    m = config.model
    tx = siamese_conv.optimizer(config.optim.to_dict())
    return Method(
        name="siamese_conv",
        init=siamese_conv.init,
        dissimilarity=functools.partial(
            siamese_conv.dissimilarity,
            combination=m.combination,
            threshold=float(m.threshold),
            reference_quantile=float(m.reference_quantile),
        ),
        **PIXEL,
        optimizer=tx,
        train_step=functools.partial(
            siamese_conv.train_step, tx=tx, margin=float(m.margin), patch=int(m.patch), crop=m.crop or None
        ),
    )


def _graph(arch: str, config) -> Method:
    m = config.model
    model = {"arch": arch, "heads": int(m.heads), "dropout": float(m.dropout)}
    tx = gnn.optimizer(config.optim.to_dict())
    return Method(
        name=arch,
        init=functools.partial(gnn.init, **model),
        dissimilarity=functools.partial(gnn.dissimilarity, combination=m.combination, **model),
        item=functools.partial(
            gnn.scene_graphs, n_segments=int(m.n_segments), compactness=float(m.compactness), standardise=m.standardise
        ),
        sizes=_graph_sizes,
        collate=gnn.collate,
        augment=False,
        optimizer=tx,
        train_step=functools.partial(gnn.train_step, tx=tx, margin=float(m.margin), **model),
    )


REGISTRY: dict[str, Callable[[ml_collections.ConfigDict], Method]] = {
    "plain": _plain,
    "regression": _regression,
    "siamese_conv": _siamese_conv,
    "gcn": functools.partial(_graph, "gcn"),
    "gat": functools.partial(_graph, "gat"),
}


def build(config: ml_collections.ConfigDict) -> Method:
    name = config.method_name
    if name not in REGISTRY:
        raise errors.ConfigError(f"config.method_name={name!r} is not a hidden-art method; known: {sorted(REGISTRY)}")
    return REGISTRY[name](config)
