"""SuperSimpleNet's training objective on the segmentation and classification logits (pure).

    L = focal(map, mask) + truncated_l1(map, mask) + focal(score, label)

    focal(x, y)        = mean over elements of  CE(sigmoid(x), y) (1 - p_t)^gamma,
                         p_t = sigmoid(x) y + (1 - sigmoid(x)) (1 - y), gamma = 4, no alpha
    truncated_l1(x, m) = mean over normal pixels (m = 0) of max(x + t, 0)
                       + mean over anomalous pixels (m > 0) of max(t - x, 0),  t = 0.5
                         (each mean 0 when it has no pixel)

The truncated L1 pushes normal logits below -t and anomalous ones above t and stops there (no
over-fitting to the synthetic noise). [paper eq. 1-3; anomalib loss.py: torchvision's
sigmoid_focal_loss(alpha=-1, gamma=4, reduction='mean') and SSNLoss.trunc_l1_loss with
truncation_term 0.5; original code common/loss.py (DeSTSeg's focal loss on sigmoid
probabilities, the same value) and train.py]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, *, gamma: float, alpha: float = -1.0) -> jax.Array:
    """torchvision.ops.sigmoid_focal_loss(reduction='mean'): the cross-entropy from logits (stable
    for any logit) times (1 - p_t)^gamma, weighted by alpha / 1 - alpha when alpha >= 0."""
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(logits)
    ce = jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return jnp.mean(loss)


def truncated_l1(logits: jax.Array, masks: jax.Array, *, truncation: float) -> jax.Array:
    """The truncated L1 of the module docstring, as masked means (static shapes under jit)."""
    logits = logits.astype(jnp.float32)
    normal = (masks == 0).astype(jnp.float32)
    anomalous = (masks > 0).astype(jnp.float32)

    def masked_mean(values, weights):
        count = jnp.sum(weights)
        return jnp.where(count > 0, jnp.sum(values * weights) / jnp.maximum(count, 1.0), 0.0)

    normal_loss = masked_mean(jnp.maximum(logits + truncation, 0.0), normal)
    anomalous_loss = masked_mean(jnp.maximum(truncation - logits, 0.0), anomalous)
    return normal_loss + anomalous_loss


def supersimplenet_loss(
    map_logits: jax.Array,
    score_logits: jax.Array,
    target_masks: jax.Array,
    target_labels: jax.Array,
    *,
    gamma: float,
    alpha: float,
    truncation: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(L, its three terms) for map logits [n, h, w], score logits [n] and their 0/1 targets."""
    terms = {
        "seg_focal": sigmoid_focal_loss(map_logits, target_masks, gamma=gamma, alpha=alpha),
        "seg_l1": truncated_l1(map_logits, target_masks, truncation=truncation),
        "cls_focal": sigmoid_focal_loss(score_logits, target_labels, gamma=gamma, alpha=alpha),
    }
    return terms["seg_focal"] + terms["seg_l1"] + terms["cls_focal"], terms
