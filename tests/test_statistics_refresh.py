"""Re-estimated running statistics before validation (config.train.refresh_statistics_batches).

The detector's `refresh_statistics` is checked against a NumPy computation of the first
BatchNorm's batch statistics (its convolution by hand), and the loop's use of it on the tiny
config: the best checkpoint carries re-estimated statistics, the latest (for resuming) the
training ones, the weights are the same in both.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax.traverse_util import flatten_dict

from configs import tiny
from xray_flax import checkpoint, detectors, workflow
from xray_flax.synthesis import SynthesisSpec, synthesize_batch

FIRST = ("reconstructive", "X_0_0", "ConvBNAct_0")


def _conv3x3_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[B, H, W, C] * [3, 3, C, F] with zero padding 1, in float64."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("bhwc,cf->bhwf", padded[:, dy : dy + h, dx : dx + w], kernel[dy, dx].astype(np.float64))
    return out + bias


def test_refresh_folds_the_batch_statistics_of_fixed_weights_into_the_running_ones():
    config = tiny.get_config()
    detector = detectors.build(config)
    variables = detector.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    textures = detector.make_aux()
    images = np.random.default_rng(0).uniform(0.2, 0.8, (4, 32, 32, 1)).astype(np.float32)
    key = jax.random.key(5)
    refreshed = variables
    for _ in range(3):  # the same batch and key: the EMA has a closed form
        refreshed = detector.refresh_statistics(refreshed, {"image": jnp.asarray(images)}, key, textures)

    for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(refreshed["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # weights untouched

    spec = SynthesisSpec.from_config(config.synthesis, 1)
    synthetic = np.asarray(synthesize_batch(key, jnp.asarray(images), textures, spec)["image"])
    params = flatten_dict(variables["params"])
    conv = _conv3x3_same(
        synthetic, np.asarray(params[FIRST + ("Conv_0", "kernel")]), params[FIRST + ("Conv_0", "bias")]
    )
    batch_mean, batch_var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    old = flatten_dict(variables["batch_stats"])
    new = flatten_dict(refreshed["batch_stats"])
    keep = 0.9**3  # the module's momentum, three passes
    np.testing.assert_allclose(
        new[FIRST + ("BatchNorm_0", "mean")],
        keep * old[FIRST + ("BatchNorm_0", "mean")] + (1 - keep) * batch_mean,
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        new[FIRST + ("BatchNorm_0", "var")],
        keep * old[FIRST + ("BatchNorm_0", "var")] + (1 - keep) * batch_var,
        rtol=1e-4,
        atol=1e-5,
    )
    # Every BatchNorm of both sub-networks moved.
    assert all(not np.allclose(new[k], old[k]) for k in old)


def _restore_variables(directory: str, step: int) -> dict:
    manager = ocp.CheckpointManager(directory)
    restored = manager.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore()))
    manager.close()
    return restored["variables"]


@pytest.mark.slow  # ~30 s on 2 cores: a tiny DRAEM run through the loop
def test_the_best_checkpoint_holds_refreshed_statistics_and_the_latest_the_training_ones(tmp_path):
    config = tiny.get_config()
    config.data.simulated.cache_dir = str(tmp_path.parent / "simulated")
    config.train.update(num_steps=3, eval_every=3, checkpoint_every=3, image_summary_every=0)
    config.train.refresh_statistics_batches = 2
    config.train.predict_test_scans = 0
    workdir = str(tmp_path / "run")
    workflow.train_and_evaluate(config, workdir)
    best = _restore_variables(os.path.join(workdir, checkpoint.BEST_DIR), 3)
    latest = _restore_variables(os.path.join(workdir, checkpoint.LATEST_DIR), 3)
    for a, b in zip(jax.tree.leaves(best["params"]), jax.tree.leaves(latest["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    best_stats, latest_stats = flatten_dict(best["batch_stats"]), flatten_dict(latest["batch_stats"])
    assert all(not np.allclose(best_stats[k], latest_stats[k]) for k in latest_stats)
