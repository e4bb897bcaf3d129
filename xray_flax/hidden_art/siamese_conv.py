"""The 2024 ArtExtract Siamese dissimilarity tool, with a training objective (docs/papers.md,
"ArtExtract").

The RGB is projected to one channel by a 3x3 convolution; ONE residual convolution stack
(1 -> 16 -> 32 -> 32 -> 1) is applied to that projection and, separately, to every band; the
per-band |difference| of the two outputs is the dissimilarity. Collage and overlay come from
`xray_flax.hidden_art.dissimilarity`.

Public functions (the family contract of common.md) and the source of each choice
- `ResidualStack`: 3x3 conv 1->16, 3x3 16->32, 5x5 32->32, 3x3 32->1, each followed by a
  normalisation, LeakyReLU(0.01) after the first three, then LeakyReLU(0.01)(input + output)
  [ArtExtract code, `Convlayer`]. Normalisation: per image and per band (GroupNorm with one
  channel per group = instance normalisation, learnt scale and bias) instead of the reference's
  BatchNorm [ours: the reference's BatchNorm pooled the 8 bands of one painting in the band branch
  and the paintings of the batch in the RGB branch, so one image's output depended on the others
  (a quirk listed in docs/papers.md); here every band of every painting is normalised alone, and the model needs
  no batch statistics].
- `SiameseConv`: `rgb_proj` (3x3 conv 3->1, [ArtExtract code]) and one `stack`: a single
  parameter tree serves both branches.
- Training objective [ours; the reference code DID train its network, by maximising the mean
  dissimilarity, an objective its author notes saturates: this loss replaces a degenerate
  objective, it does not add training where there was none]: a patch-level
  contrastive loss with margin 1 (the margin and the form of the 2025 graph Siamese,
  docs/papers.md):
      d(a, b) = mean over a `patch` x `patch` block of |a - b|  (the block mean of `per_band`)
      loss    = mean d(rgb_n, band_{n,b})^2 + mean relu(margin - d(rgb_n, neg_{n,b}))^2
  The positive pair is a painting's RGB and its own band at the same place; the negative is the
  same band of ANOTHER painting (the batch rolled by 1), or, with one painting in the batch, the
  painting's own band shifted by half the image (a misaligned view). Why this: the positive term
  teaches the shared stack to ignore what differs between RGB and band everywhere (exposure,
  the spectral behaviour of the pigments), the negative term forbids the collapse that a positive
  term alone would reach (a constant output makes every difference 0, yet then every negative
  distance is 0 and costs margin^2), so the stack must keep the spatial structure of the
  painting; what remains in a positive pair's difference is structure that the RGB lacks. Block
  distances rather than single pixels: one pixel's difference cannot tell a painting from
  another, a block can; the map itself stays per pixel.
  MEASURED, and a caution: on 4 validation scenes of the simulator (128 px, 4 training scenes,
  300 steps on 64 px crops, loss 0.63 -> 0.17) the trained tool's map scored AUROC 0.47 of the
  hidden mask (correlation -0.04), below the untrained network (0.57) and the plain baseline
  (0.58). The objective does what it says, which is the trouble: the stack's 11 x 11 receptive
  field can learn to smooth away thin hidden strokes from both branches, which lowers the
  positive distance while block-level negatives stay apart. Comparing block means of the
  features instead (no reward for erasing fine structure) measured 0.52. The per-pixel
  regression (`regression.py`, 0.65) has no such capacity.
- `init(key, batch)`, `optimizer(config=None)` (Adam, learning rate 1e-3, constant [ours]; config
  keys `learning_rate`, `weight_decay` > 0 -> AdamW), `loss_fn`, `contrastive_loss`,
  `train_step(state, batch, key, tx=..., crop=...)`: with `crop`, every step trains on one random
  `crop` x `crop` window (the same for the RGB and the bands, drawn with `key`) [ours: bounds the
  memory of the N x B band images at full resolution]. Metrics: loss, grad_norm, positive,
  negative (the mean block distances).
- THE ASYMMETRIC PREDICTOR (`objective="predictor"`, configs/hidden_siamese_conv.py)
  [ours, in the tool's spirit: two branches, one compared with the other]: the trainable RGB
  branch (`PredictorBranch`: 3x3 conv 3->32, LeakyReLU, 3x3 32->32, LeakyReLU, 1x1 32->B, a 5 x 5
  receptive field) predicts every band; the band branch is FIXED, a parameter-free per-image
  z-score of each band, under stop-gradient (`band_targets`). Loss: mean |prediction - target|
  over the pixels and bands of random crops (L1: the training paintings' hidden pixels are a
  minority the median ignores). Map: the signed residual prediction - target (positive: the band
  darker than the RGB predicts), `maps.form` (sign, scale, combination). Why: the contrastive
  objective rewards the branches for agreeing, so its shared stack learns to drop exactly what
  differs, the hidden layer (measured at chance level); with the band as a fixed target the
  network cannot learn to ignore it, only to predict what the RGB shows.
  `predictor_dissimilarity(variables, batch, sign, scale, combination)`.
- `dissimilarity(variables, batch, ...)` -> {"per_band" [N, H, W, B] = |F(proj(RGB)) - F(band)|,
  "map" = combine(per_band) (mean over bands by default), "collage" int32 [N, H, W] (-1 below
  the threshold), "strength" [N, H, W]} (see `dissimilarity.collage` for the fixed threshold).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from xray_flax.hidden_art import dissimilarity as dis
from xray_flax.hidden_art import maps
from xray_flax.train_state import TrainState

DEFAULT_LEARNING_RATE = 1e-3
_NEGATIVE_SLOPE = 0.01  # [ArtExtract code] nn.LeakyReLU(0.01)
OBJECTIVES = ("predictor", "contrastive")


def _norm() -> nn.Module:
    return nn.GroupNorm(num_groups=None, group_size=1)


class ResidualStack(nn.Module):
    """[M, H, W, 1] -> [M, H, W, 1]; each of the M images is normalised on its own."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for width, kernel in ((16, 3), (32, 3), (32, 5)):
            y = nn.leaky_relu(_norm()(nn.Conv(width, (kernel, kernel))(y)), _NEGATIVE_SLOPE)
        y = _norm()(nn.Conv(1, (3, 3))(y))
        return nn.leaky_relu(x + y, _NEGATIVE_SLOPE)


class SiameseConv(nn.Module):
    """(RGB features [N, H, W], band features [N, H, W, B]) from one shared `stack`."""

    def setup(self):
        self.rgb_proj = nn.Conv(1, (3, 3))
        self.stack = ResidualStack()

    def embed_rgb(self, rgb: jax.Array) -> jax.Array:
        return self.stack(self.rgb_proj(jnp.asarray(rgb, jnp.float32)))[..., 0]

    def embed_bands(self, bands: jax.Array) -> jax.Array:
        n, h, w, b = bands.shape
        # Every band becomes its own one-channel image: [N, H, W, B] -> [N * B, H, W, 1].
        images = jnp.moveaxis(jnp.asarray(bands, jnp.float32), -1, 1).reshape(n * b, h, w, 1)
        return jnp.moveaxis(self.stack(images).reshape(n, b, h, w), 1, -1)

    def __call__(self, rgb: jax.Array, bands: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.embed_rgb(rgb), self.embed_bands(bands)


MODEL = SiameseConv()


def init(key: jax.Array, batch: dict) -> dict:
    dis.validate_batch(batch)
    return MODEL.init(key, batch["rgb"][:1], batch["bands"][:1])


def optimizer(config: Mapping | None = None) -> optax.GradientTransformation:
    return dis.adam(config, DEFAULT_LEARNING_RATE)


def block_mean(values: jax.Array, patch: int) -> jax.Array:
    """[N, H, W, B] -> [N, H // patch, W // patch, B] means over patch x patch blocks (the last
    H mod patch rows and W mod patch columns are left out)."""
    n, h, w, b = values.shape
    if patch < 1 or patch > min(h, w):
        raise ValueError(f"patch must lie in 1..{min(h, w)} for {h} x {w} images, got {patch}")
    hp, wp = h // patch, w // patch
    blocks = values[:, : hp * patch, : wp * patch].reshape(n, hp, patch, wp, patch, b)
    return jnp.mean(blocks, axis=(2, 4))


def negatives(band_features: jax.Array) -> jax.Array:
    """Bands of another painting (the batch rolled by 1), or with N = 1 the bands shifted by half
    the image in both directions."""
    n, h, w, _ = band_features.shape
    if n > 1:
        return jnp.roll(band_features, 1, axis=0)
    return jnp.roll(band_features, (h // 2, w // 2), axis=(1, 2))


def contrastive_loss(
    rgb_features: jax.Array, band_features: jax.Array, *, margin: float = 1.0, patch: int = 16
) -> tuple[jax.Array, dict]:
    """(loss, {"positive", "negative"} mean block distances); the formula is in the module text."""
    rgb = rgb_features[..., None]
    positive = block_mean(jnp.abs(rgb - band_features), patch)
    negative = block_mean(jnp.abs(rgb - negatives(band_features)), patch)
    loss = jnp.mean(jnp.square(positive)) + jnp.mean(jnp.square(jax.nn.relu(margin - negative)))
    return loss, {"positive": jnp.mean(positive), "negative": jnp.mean(negative)}


def random_crop(batch: dict, key: jax.Array, crop: int) -> dict:
    """The same random crop x crop window of every image of the batch."""
    _, h, w, _ = dis.validate_batch(batch)
    if not 1 <= crop <= min(h, w):
        raise ValueError(f"crop must lie in 1..{min(h, w)} for {h} x {w} images, got {crop}")
    key_y, key_x = jax.random.split(key)
    y = jax.random.randint(key_y, (), 0, h - crop + 1)
    x = jax.random.randint(key_x, (), 0, w - crop + 1)
    return {
        name: jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_slice_in_dim(batch[name], y, crop, 1), x, crop, 2)
        for name in ("rgb", "bands")
    }


def loss_fn(params, batch: dict, *, margin: float = 1.0, patch: int = 16) -> tuple[jax.Array, dict]:
    rgb_features, band_features = MODEL.apply({"params": params}, batch["rgb"], batch["bands"])
    return contrastive_loss(rgb_features, band_features, margin=margin, patch=patch)


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    *,
    tx: optax.GradientTransformation | None = None,
    margin: float = 1.0,
    patch: int = 16,
    crop: int | None = None,
) -> tuple[TrainState, dict]:
    """One contrastive step; `tx` must be the optimiser the state was created with."""
    tx = optimizer() if tx is None else tx
    dis.validate_batch(batch)
    if crop is not None:
        batch = random_crop(batch, key, crop)
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, margin=margin, patch=patch)
    return state.apply_gradients(grads, tx), {"loss": loss, "grad_norm": optax.tree.norm(grads), **terms}


def dissimilarity(
    variables: dict,
    batch: dict,
    *,
    combination: str = "mean",
    threshold: float = 0.5,
    reference_quantile: float = 0.99,
) -> dict[str, jax.Array]:
    dis.validate_batch(batch)
    rgb_features, band_features = MODEL.apply(variables, batch["rgb"], batch["bands"])
    per_band = jnp.abs(rgb_features[..., None] - band_features)
    pieces = dis.collage(per_band, threshold=threshold, reference_quantile=reference_quantile)
    return {
        "per_band": per_band,
        "map": dis.combine(per_band, combination),
        "collage": pieces["collage"],
        "strength": pieces["strength"],
    }


# ----------------------------------------------------------------------------- the asymmetric predictor


class PredictorBranch(nn.Module):
    """The trainable RGB branch: RGB [N, H, W, 3] -> predicted band targets [N, H, W, B]."""

    n_bands: int
    width: int = 32

    @nn.compact
    def __call__(self, rgb: jax.Array) -> jax.Array:
        x = jnp.asarray(rgb, jnp.float32) - 0.5
        for kernel in (3, 3):
            x = nn.leaky_relu(nn.Conv(self.width, (kernel, kernel))(x), _NEGATIVE_SLOPE)
        return nn.Conv(self.n_bands, (1, 1))(x)


def band_targets(bands: jax.Array) -> jax.Array:
    """The fixed band branch: each band z-scored per image, under stop-gradient."""
    return jax.lax.stop_gradient(dis.normalise(bands, "zscore"))


def predictor_init(key: jax.Array, batch: dict) -> dict:
    n_bands = dis.validate_batch(batch)[-1]
    return PredictorBranch(n_bands).init(key, batch["rgb"][:1])


def predictor_loss(params, batch: dict) -> jax.Array:
    n_bands = dis.validate_batch(batch)[-1]
    prediction = PredictorBranch(n_bands).apply({"params": params}, batch["rgb"])
    return jnp.mean(jnp.abs(prediction - band_targets(batch["bands"])))


def predictor_train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    *,
    tx: optax.GradientTransformation | None = None,
    crop: int | None = None,
) -> tuple[TrainState, dict]:
    """One L1 step of the RGB branch on (a random crop of) the batch."""
    tx = optimizer() if tx is None else tx
    if crop is not None:
        batch = random_crop(batch, key, crop)
    value, grads = jax.value_and_grad(predictor_loss)(state.params, batch)
    return state.apply_gradients(grads, tx), {"loss": value, "grad_norm": optax.tree.norm(grads)}


def predictor_dissimilarity(
    variables: dict,
    batch: dict,
    *,
    sign: str = "signed",
    scale: str = "noise",
    combination: str = "longest",
    threshold: float = 0.5,
    reference_quantile: float = 0.99,
) -> dict[str, jax.Array]:
    """{"per_band", "map", "band_weights" (`maps.form`), "signed" = prediction - target,
    "prediction", "collage", "strength"}."""
    n_bands = dis.validate_batch(batch)[-1]
    prediction = PredictorBranch(n_bands).apply(variables, batch["rgb"])
    signed = prediction - band_targets(batch["bands"])
    out = maps.form(signed, sign=sign, scale=scale, combination=combination)
    pieces = dis.collage(jnp.abs(out["per_band"]), threshold=threshold, reference_quantile=reference_quantile)
    return {
        **out,
        "signed": signed,
        "prediction": prediction,
        "collage": pieces["collage"],
        "strength": pieces["strength"],
    }
