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

No peeking: `build` wraps every method so that `item` receives the painting WITHOUT its truth
(`TRUTH_KEYS`: the hidden layer, its mask, and the simulator's noiseless and visible-only bands
are removed) and `dissimilarity` and `train_step` refuse a batch that carries any of them
(`check_blind`). The map form knobs every method reads from `config.model` (`form_of`):
`sign`, `scale` and `combination` (`xray_flax.hidden_art.maps`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import optax

from xray_flax import errors
from xray_flax.hidden_art import data, gnn, graphs, maps, node_regression, polynomial, regression, siamese_conv
from xray_flax.hidden_art import dissimilarity as plain

# What a method must never see: the simulator's truth and its noiseless / hidden-free bands.
TRUTH_KEYS = ("hidden", "hidden_mask", "visible_only", "bands_clean")


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


def blind(scene: Mapping) -> dict:
    """The painting without its truth (`TRUTH_KEYS` removed)."""
    return {k: v for k, v in scene.items() if k not in TRUTH_KEYS}


def check_blind(batch: Mapping, what: str = "the batch") -> None:
    """ValueError when `batch` carries any of `TRUTH_KEYS`: no method may see the truth."""
    seen = sorted(k for k in TRUTH_KEYS if k in batch)
    if seen:
        raise ValueError(f"{what} carries the truth {seen}: no hidden-art method may see it")


def _blinded(method: Method) -> Method:
    """`method` with `item` fed blind paintings and its batches checked (module text)."""

    def item(scene):
        return method.item(blind(scene))

    def dissimilarity(variables, batch):
        check_blind(batch, f"{method.name}'s batch")
        return method.dissimilarity(variables, batch)

    train_step = None
    if method.train_step is not None:

        def train_step(state, batch, key):
            check_blind(batch, f"{method.name}'s training batch")
            return method.train_step(state, batch, key)

    return dataclasses.replace(method, item=item, dissimilarity=dissimilarity, train_step=train_step)


def form_of(model: Mapping, defaults: Mapping | None = None) -> dict:
    """{"sign", "scale", "combination"} of `config.model` (missing knobs: `defaults`, else the
    first version's absolute mean); ConfigError naming the bad knob."""
    defaults = defaults or {"sign": "absolute", "scale": "none", "combination": "mean"}
    out = {k: model.get(k, v) for k, v in defaults.items()}
    try:
        maps.check_form(out["sign"], out["scale"], out["combination"])
    except ValueError as e:
        raise errors.ConfigError(f"config.model: {e}") from e
    return out


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
        dissimilarity=functools.partial(plain.dissimilarity, normalisation=m.normalisation, **form_of(m)),
        **PIXEL,
    )


def _polynomial(config) -> Method:
    m = config.model
    if int(m.degree) not in polynomial.DEGREES or m.robust not in polynomial.ROBUST or int(m.iterations) < 0:
        raise errors.ConfigError(
            f"config.model: degree={m.degree!r} must be one of {polynomial.DEGREES}, robust={m.robust!r} one of "
            f"{polynomial.ROBUST}, iterations={m.iterations!r} >= 0"
        )
    return Method(
        name="polynomial",
        init=polynomial.init,
        dissimilarity=functools.partial(
            polynomial.dissimilarity,
            degree=int(m.degree),
            robust=m.robust,
            iterations=int(m.iterations),
            linear_rgb=bool(m.linear_rgb),
            **form_of(m, maps.DEFAULT_FORM),
        ),
        **PIXEL,
    )


def _regression(config) -> Method:
    m = config.model
    hidden = tuple(int(h) for h in m.hidden)
    tx = regression.optimizer(config.optim.to_dict())
    return Method(
        name="regression",
        init=functools.partial(regression.init, hidden=hidden),
        dissimilarity=functools.partial(
            regression.dissimilarity,
            hidden=hidden,
            test_time_steps=int(m.get("test_time_steps", 0)),
            test_time_learning_rate=float(m.get("test_time_learning_rate", 1e-3)),
            **form_of(m),
        ),
        **PIXEL,
        optimizer=tx,
        train_step=functools.partial(
            regression.train_step, tx=tx, hidden=hidden, pixels_per_step=int(m.pixels_per_step), loss=m.loss
        ),
    )


def _siamese_predictor(config) -> Method:
    """The 2024 tool made to localise: the asymmetric predictor (`siamese_conv`, module text)."""
    m = config.model
    tx = siamese_conv.optimizer(config.optim.to_dict())
    return Method(
        name="siamese_conv",
        init=siamese_conv.predictor_init,
        dissimilarity=functools.partial(
            siamese_conv.predictor_dissimilarity,
            threshold=float(m.threshold),
            reference_quantile=float(m.reference_quantile),
            **form_of(m, maps.DEFAULT_FORM),
        ),
        **PIXEL,
        optimizer=tx,
        train_step=functools.partial(siamese_conv.predictor_train_step, tx=tx, crop=m.crop or None),
    )


def _siamese_conv(config) -> Method:
    m = config.model
    objective = m.get("objective", "contrastive")
    if objective not in siamese_conv.OBJECTIVES:
        raise errors.ConfigError(f"config.model.objective={objective!r} must be one of {siamese_conv.OBJECTIVES}")
    if objective == "predictor":
        return _siamese_predictor(config)
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


GRAPH_OBJECTIVES = ("contrastive", "regression")


def _graph_regression(arch: str, config) -> Method:
    """The graph tools made to localise: node-level regression of the bands' node statistics
    (`node_regression`), map = the signed node residual."""
    m = config.model
    model = {"arch": arch, "heads": int(m.heads), "dropout": float(m.dropout)}
    statistic, calibrate = m.get("statistic", "both"), m.get("calibrate", "prediction")
    if statistic not in node_regression.STATISTICS or calibrate not in node_regression.CALIBRATIONS:
        raise errors.ConfigError(
            f"config.model.statistic={statistic!r} must be one of {node_regression.STATISTICS} and "
            f"config.model.calibrate={calibrate!r} one of {node_regression.CALIBRATIONS}"
        )
    tx = node_regression.optimizer(config.optim.to_dict())
    return Method(
        name=arch,
        init=functools.partial(node_regression.init, **model),
        dissimilarity=functools.partial(
            node_regression.dissimilarity,
            statistic=statistic,
            calibrate=calibrate,
            **model,
            **form_of(m, maps.DEFAULT_FORM),
        ),
        item=functools.partial(node_regression.item, n_segments=int(m.n_segments), compactness=float(m.compactness)),
        sizes=node_regression.sizes,
        collate=node_regression.collate,
        augment=False,
        optimizer=tx,
        train_step=functools.partial(node_regression.train_step, tx=tx, **model),
    )


def _graph(arch: str, config) -> Method:
    m = config.model
    objective = m.get("objective", "contrastive")
    if objective not in GRAPH_OBJECTIVES:
        raise errors.ConfigError(f"config.model.objective={objective!r} must be one of {GRAPH_OBJECTIVES}")
    if objective == "regression":
        return _graph_regression(arch, config)
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
    "polynomial": _polynomial,
    "regression": _regression,
    "siamese_conv": _siamese_conv,
    "gcn": functools.partial(_graph, "gcn"),
    "gat": functools.partial(_graph, "gat"),
}


def build(config: ml_collections.ConfigDict) -> Method:
    name = config.method_name
    if name not in REGISTRY:
        raise errors.ConfigError(f"config.method_name={name!r} is not a hidden-art method; known: {sorted(REGISTRY)}")
    return _blinded(REGISTRY[name](config))
