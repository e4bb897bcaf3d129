"""Numerical effect of compute_dtype='bfloat16' on the paper model, against fp32, same weights.

    python benchmarks/bench_precision.py [--config paper] [--size 256] [--out FILE]

Same initial weights and inputs for both dtypes (parameters are fp32 either way). Reports
the reconstruction's error relative to its spread, the anomaly map's largest difference, the
loss terms of one train step and the cosine similarity of the two gradients. The inputs are
smooth random images (sums of Gaussian blobs), closer to X-ray patches than white noise.

The detector is `detectors.build(config)` as in train.py; its anomaly map is
`detector.anomaly_map`. The gradient needs the step cut open (the train step returns only the
updated state), so the loss is DRAEM's own: the network of `detectors.draem.network` and
`detectors.draem.loss.draem_loss` with every term of `config.loss`, on a fixed corrupted image
and mask instead of a synthesised one.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.ndimage  # noqa: E402
from bench_model import DEFAULT_CHANNELS, load_config  # noqa: E402

from xray_flax import detectors  # noqa: E402
from xray_flax.detectors.draem import network as draem_model  # noqa: E402
from xray_flax.detectors.draem.loss import draem_loss  # noqa: E402


def smooth_images(batch: int, size: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = scipy.ndimage.gaussian_filter(rng.random((batch, size, size, channels)), sigma=(0, 6, 6, 0))
    x = (x - x.min()) / (x.max() - x.min())
    return x.astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="paper")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    channels = DEFAULT_CHANNELS[args.config]
    images = jnp.asarray(smooth_images(args.batch, args.size, channels))
    mask = jnp.asarray((smooth_images(args.batch, args.size, 1) > 0.6).astype(np.float32))
    corrupted = images * (1 - mask) + 0.9 * mask

    out = {}
    for dtype in ("float32", "bfloat16"):
        config = load_config(args.config, dtype, channels)
        detector = detectors.build(config)
        model = draem_model.build_model(config.model, channels)  # the network inside the detector's step
        variables = detector.init(jax.random.key(0), images[:1])

        def loss_fn(params, model=model, loss=config.loss, variables=variables):
            collections = {k: v for k, v in variables.items() if k != "params"}
            (rec, logits), _ = model.apply(
                {"params": params, **collections}, corrupted, train=True, mutable=["batch_stats"]
            )
            return draem_loss(
                images,
                rec,
                logits,
                mask,
                ssim_weight=loss.ssim_weight,
                ssim_window=loss.ssim_window,
                ssim_sigma=loss.ssim_sigma,
                focal_gamma=loss.focal_gamma,
                focal_alpha=loss.focal_alpha,
            )

        (total, terms), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
        predicted = jax.jit(detector.anomaly_map)(variables, corrupted)
        maps, rec = predicted["map"], predicted["reconstruction"]
        out[dtype] = {
            "terms": {k: float(v) for k, v in terms.items()},
            "loss_dtype": str(total.dtype),
            "grads": jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)]),
            "maps": maps,
            "rec": rec,
        }

    a, b = out["float32"], out["bfloat16"]
    cosine = float(jnp.dot(a["grads"], b["grads"]) / (jnp.linalg.norm(a["grads"]) * jnp.linalg.norm(b["grads"])))
    report = {
        "config": args.config,
        "size": args.size,
        "batch": args.batch,
        "env": common.env_info(),
        "loss_terms_fp32": a["terms"],
        "loss_terms_bf16": b["terms"],
        "loss_dtype_bf16": b["loss_dtype"],
        "reconstruction_max_abs_diff_over_std": float(jnp.max(jnp.abs(a["rec"] - b["rec"])) / jnp.std(a["rec"])),
        "reconstruction_rms_diff_over_std": float(jnp.sqrt(jnp.mean((a["rec"] - b["rec"]) ** 2)) / jnp.std(a["rec"])),
        "anomaly_map_max_abs_diff": float(jnp.max(jnp.abs(a["maps"] - b["maps"]))),
        "anomaly_map_mean_abs_diff": float(jnp.mean(jnp.abs(a["maps"] - b["maps"]))),
        "image_score_max_abs_diff": float(jnp.max(jnp.abs(a["maps"].max((1, 2)) - b["maps"].max((1, 2))))),
        "gradient_cosine_similarity": cosine,
        "gradient_norm_ratio_bf16_over_fp32": float(jnp.linalg.norm(b["grads"]) / jnp.linalg.norm(a["grads"])),
    }
    for k, v in report.items():
        if k != "env":
            print(f"{k}: {v}")
    common.write_json(args.out, report)


if __name__ == "__main__":
    main()
