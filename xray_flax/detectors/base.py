"""The detector contract: what every anomaly detector gives the shared loop, evaluation and predict.

A detector is a `Detector` value built by `xray_flax.detectors.build(config)`. Its functions
are pure (explicit variables, batches and keys, no hidden state); the loop jits them over the
device mesh. Two kinds:

* ``gradient``: trained by an optax optimiser. ``train_step(state, batch, key, aux) ->
  (state, metrics)`` takes a `TrainState` and a batch ``{"image": [b, P, P, C]}`` of clean
  normal tiles; ``metrics`` holds at least ``loss`` and ``grad_norm`` (scalars, already
  reduced over the global batch). The loop adds the NaN guard: a step whose loss or
  gradients are not finite leaves the state unchanged (`guard_nonfinite`).
* ``fit``: fitted in one finite pass over the clean training tiles, no optimiser (memory-bank
  models), as a resumable stream:

      fit_init(variables) -> fit_state                     static shapes, independent of the data size
      fit_update(fit_state, variables, batch) -> fit_state  once per batch, in a fixed order
      fit_finish(fit_state, variables) -> variables         e.g. a final selection, an inverse
      fit_summary(fit_state) -> {name: float}               optional, shown in progress lines

  ``batch`` is ``{"image": [B, P, P, C], "valid": [B]}`` of global device arrays of one fixed size
  B (the last batch is padded; ``valid`` is 1 for real tiles, 0 for padding). ``fit_state`` is a
  pytree of numpy or jax arrays that the loop checkpoints every few batches with the data
  position (``fit_partial/``), so a killed fit resumes from its last save; ``fit_update`` must
  therefore be a pure function of its arguments. The loop saves the finished variables once.

Both give ``init(key, sample) -> variables`` (a Flax variables dict: ``params`` are trained,
every other collection — batch statistics, a frozen backbone, a memory bank — is carried
but never differentiated) with static shapes, so ``jax.eval_shape(init, key, sample)`` is the
restore target of every checkpoint, and ``anomaly_map(variables, images) -> dict`` in
inference mode with

    "map"    float32 [b, H, W]   per pixel, any real scale, higher = more anomalous (required)
    "score"  float32 [b]         image score (optional; else the shared mean-filtered max)
    any other key                extras drawn by reports when present, e.g.
                                 "reconstruction" [b, H, W, C] in [0, 1]

`bounded_map` says the map is already a probability in [0, 1] whose natural cut is 0.5 (DRAEM's
softmax): then the shared score normalisation is the identity. Otherwise a normalisation is
fitted on the validation split's normal tiles (`xray_flax.normalization`).

Pretrained parts (frozen ImageNet backbones) are random in ``init`` and filled in by the
optional host-side ``pretrained(variables) -> variables`` before a run starts from scratch; the
checkpoints then hold them, so evaluation and predict need no weights file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax

# The state and the NaN guard of gradient training, shared with the hidden-art family's loop.
from xray_flax.train_state import TrainState as TrainState
from xray_flax.train_state import guard_nonfinite as guard_nonfinite
from xray_flax.train_state import split_variables as split_variables

Variables = dict[str, Any]

GRADIENT = "gradient"
FIT = "fit"
KINDS = (GRADIENT, FIT)


def init_module(key: jax.Array, sample: jax.Array, *, model: Any) -> Variables:
    """`Detector.init` of a detector that is one Flax Linen module called as model(x, train)."""
    return model.init(key, sample, train=False)


@dataclasses.dataclass(frozen=True)
class Detector:
    """One anomaly detector, as the shared loop, evaluation and predict see it."""

    name: str
    kind: str
    init: Callable[[jax.Array, jax.Array], Variables]
    anomaly_map: Callable[[Variables, jax.Array], dict]
    # Patch sides must be multiples of this (e.g. one halving per pooling level).
    size_multiple: int = 1
    # Maps are probabilities in [0, 1] with the natural cut at 0.5: no score normalisation.
    bounded_map: bool = False
    # Scalars of `train_step`'s metrics shown in progress lines (all are written to TensorBoard).
    metric_names: tuple[str, ...] = ("loss",)
    # --- gradient kind ---
    optimizer: optax.GradientTransformation | None = None
    train_step: Callable[[TrainState, dict, jax.Array, Any], tuple[TrainState, dict]] | None = None
    # Host arrays made once before training and passed to every step (replicated on the mesh),
    # e.g. DRAEM's texture bank; None = no auxiliary inputs.
    make_aux: Callable[[], Any] | None = None
    # The train step learns from labelled anomalous tiles too: with config.train.
    # labelled_anomalies > 0 a batch also holds "label" [b] (1 = a real anomaly) and "mask"
    # [b, P, P] (its pixels; 0 for normal rows), xray_flax/data/labelled.py. False: such a
    # config is refused (the step would learn the anomalies as normal).
    labelled_anomalies: bool = False
    # Optional: (variables, batch, key, aux) -> variables whose running statistics (BatchNorm's)
    # took one more forward pass in training mode on `batch` (as the train step sees it, e.g.
    # with its synthetic anomalies), the weights unchanged. The loop repeats it over
    # config.train.refresh_statistics_batches batches before each validation, so the
    # statistics belong to the weights being validated. None = no running statistics.
    refresh_statistics: Callable[[Variables, dict, jax.Array, Any], Variables] | None = None
    # Optional TensorBoard images: (variables, batch, key, aux) -> {name: [b, H, W, C] in [0, 1]}.
    preview: Callable[[Variables, dict, jax.Array, Any], dict] | None = None
    # --- fit kind (see the module docstring) ---
    fit_init: Callable[[Variables], Any] | None = None
    fit_update: Callable[[Any, Variables, dict], Any] | None = None
    fit_finish: Callable[[Any, Variables], Variables] | None = None
    fit_summary: Callable[[Any], dict[str, float]] | None = None
    # --- both kinds ---
    # Host-side, once, before training or fitting from scratch (never on restore: checkpoints
    # hold the result): freshly initialised variables -> the same tree with its pretrained
    # parts filled in from their files (e.g. an ImageNet backbone in a frozen collection).
    # `init` itself stays pure and file-free, so eval_shape(init) is every restore target.
    pretrained: Callable[[Variables], Variables] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"detector {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == GRADIENT and (self.optimizer is None or self.train_step is None):
            raise ValueError(f"detector {self.name!r}: a gradient detector needs an optimizer and a train_step")
        if self.kind == FIT and None in (self.fit_init, self.fit_update, self.fit_finish):
            raise ValueError(f"detector {self.name!r}: a fit detector needs fit_init, fit_update and fit_finish")

    def abstract_variables(self, patch_size: int, channels: int) -> Variables:
        """Shapes and dtypes of the variables without allocating them (the restore target)."""
        sample = jax.ShapeDtypeStruct((1, patch_size, patch_size, channels), jnp.float32)
        return jax.eval_shape(self.init, jax.random.key(0), sample)


def run_fit(detector: Detector, variables: Variables, batches: Iterable[dict]) -> Variables:
    """A fit detector's whole pass without checkpoints (tests, benchmarks): init, every batch, finish."""
    state = detector.fit_init(variables)
    for batch in batches:
        state = detector.fit_update(state, variables, batch)
    return detector.fit_finish(state, variables)
