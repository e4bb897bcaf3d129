"""CFA's pure init, train step (memory-bank pass, then descriptor training) and anomaly map.

Variables:

    params        {"descriptor": the 1x1 CoordConv}, trained
    backbone      the frozen pretrained backbone {"params", "batch_stats"}
    memory_bank   {"centres": [h0 w0, C_d]}, one centre per position of the first tap's map

The memory bank. anomalib builds it in `on_train_start` (initialize_centroid): one pass over
the training loader with the *initial*, untrained descriptor, a running mean of the batch
means of the descriptor maps, (bank * i + mean_b) / (i + 1) over batches i, then one centre
per position (gamma_c = 1). The contract gives a gradient detector no data before its first
step (`pretrained` has none), so the pass is the first `memory_bank_steps` train steps: each
of them adds its batch to the running mean with exactly that formula (i = the step) and leaves
the descriptor and the optimiser state untouched; every later step trains the descriptor
against the now fixed bank, which no step changes again. The bank is a non-params collection,
so it is checkpointed, restored mid-pass on resume, and never differentiated. With a fixed
batch size the bank is the mean descriptor map over every tile those steps saw; with
memory_bank_steps = floor(tiles / batch) that is one pass in which no tile repeats (the train
iterator is a shuffled, repeated stream). A validation before the pass ends sees a partial
bank (means of fewer tiles), which is still a valid detector, only a weaker one. [ours, to
reproduce anomalib within the contract]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from xray_flax.backbones import COLLECTION, Backbone
from xray_flax.backbones.base import frozen
from xray_flax.detectors.base import TrainState
from xray_flax.detectors.cfa import network
from xray_flax.detectors.cfa.loss import cfa_loss
from xray_flax.nn.anomaly_maps import upsample_and_blur
from xray_flax.optim import make_torch_optimizer

BANK = "memory_bank"


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """torch.optim.AdamW(lr, betas, eps, weight_decay, amsgrad) at a constant rate: decoupled
    decay, torch's AMSGrad maximum of the raw second moment. [anomalib: AdamW lr 1e-3,
    weight_decay 5e-4, amsgrad, torch's default betas (0.9, 0.999) and eps 1e-8]"""
    return make_torch_optimizer(optim, "adamw")


def patches_of(backbone: Backbone, backbone_variables: dict, images: jax.Array) -> jax.Array:
    """The frozen backbone's pooled, upsampled, concatenated taps [B, h0, w0, C] (no gradient)."""
    return network.patch_features(frozen(backbone.features(backbone_variables, images)), backbone.taps)


def init(key: jax.Array, sample: jax.Array, *, backbone: Backbone, descriptor: network.Descriptor) -> dict:
    """Random backbone (replaced by `pretrained`) and descriptor; a zero memory bank of one
    centre per position of the first tap's map for tiles of the sample's size."""
    backbone_key, descriptor_key = jax.random.split(key)
    backbone_variables = backbone.init(backbone_key, sample)
    patches = patches_of(backbone, backbone_variables, sample)
    params = descriptor.init(descriptor_key, patches)["params"]
    _, h, w, _ = patches.shape
    return {
        "params": {"descriptor": params},
        COLLECTION: backbone_variables,
        BANK: {"centres": jnp.zeros((h * w, descriptor.out_channels), jnp.float32)},
    }


def descriptors_of(descriptor: network.Descriptor, params: dict, patches: jax.Array) -> jax.Array:
    return descriptor.apply({"params": params["descriptor"]}, patches)


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    aux: None,
    *,
    backbone: Backbone,
    descriptor: network.Descriptor,
    tx: optax.GradientTransformation,
    loss_config: ml_collections.ConfigDict,
    memory_bank_steps: int,
) -> tuple[TrainState, dict]:
    """A memory-bank step while step < memory_bank_steps, else one AdamW step (module docstring)."""
    del key, aux
    patches = patches_of(backbone, state.collections[COLLECTION], batch["image"])
    centres = state.collections[BANK]["centres"]

    def bank_step(_):
        batch_mean = jnp.mean(descriptors_of(descriptor, state.params, patches), axis=0)
        batch_mean = batch_mean.reshape(centres.shape)
        i = state.step.astype(jnp.float32)
        # anomalib's running mean of batch means, in its own form.
        new_centres = (centres * i + batch_mean) / (i + 1.0)
        collections = {**state.collections, BANK: {"centres": new_centres}}
        zero = jnp.zeros((), jnp.float32)
        metrics = {
            "loss": zero,
            "grad_norm": zero,
            "attraction": zero,
            "repulsion": zero,
            "memory_bank_pass": 1.0 + zero,
        }
        return state.replace(step=state.step + 1, collections=collections), metrics

    def descriptor_step(_):
        def loss_fn(params):
            squared = network.squared_distances(descriptors_of(descriptor, params, patches), centres)
            return cfa_loss(
                squared,
                num_nearest=loss_config.num_nearest,
                num_hard_negatives=loss_config.num_hard_negatives,
                radius=loss_config.radius,
                alpha=loss_config.alpha,
                nu=loss_config.nu,
            )

        (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {"loss": total, "grad_norm": optax.tree.norm(grads), **terms}
        metrics["memory_bank_pass"] = jnp.zeros((), jnp.float32)
        return state.apply_gradients(grads, tx), metrics

    return jax.lax.cond(state.step < memory_bank_steps, bank_step, descriptor_step, None)


def anomaly_map(
    variables: dict,
    images: jax.Array,
    *,
    backbone: Backbone,
    descriptor: network.Descriptor,
    num_nearest: int,
    blur_sigma: float,
) -> dict:
    """{'map' [B, H, W]: the softmin score of the nearest centres on the first tap's grid,
    upsampled bilinearly and blurred (sigma 4), 'score' [B]: its maximum}. [anomalib]"""
    patches = patches_of(backbone, variables[COLLECTION], images)
    desc = descriptors_of(descriptor, variables["params"], patches)
    b, h, w, _ = desc.shape
    squared = network.squared_distances(desc, variables[BANK]["centres"])
    score = network.softmin_score(squared, num_nearest).reshape(b, h, w)
    out = upsample_and_blur(score, images.shape[1:3], blur_sigma)
    return {"map": out, "score": jnp.max(out, axis=(1, 2))}


def preview(variables: dict, batch: dict, key: jax.Array, aux: None, **kwargs) -> dict:
    """TensorBoard images: the input and its map scaled by each tile's maximum."""
    del key, aux
    out = anomaly_map(variables, batch["image"], **kwargs)["map"]
    peak = jnp.max(out, axis=(1, 2), keepdims=True)
    return {"input": batch["image"], "anomaly_map": (out / jnp.maximum(peak, 1e-12))[..., None]}
