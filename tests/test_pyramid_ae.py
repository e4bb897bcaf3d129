"""The pyramidal autoencoder: shapes, parameter count, training, localisation, the map against SciPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage

from configs import tiny
from xray_flax import detectors
from xray_flax.detectors import TrainState
from xray_flax.detectors.pyramid_ae import build_model, make_pyramid_optimizer
from xray_flax.detectors.pyramid_ae.loss import level_errors, pyramid_error_map
from xray_flax.detectors.pyramid_ae.network import adaptive_avg_pool, resize_linear


def tiny_config(channels: int = 1, **model):
    config = tiny.get_config("pyramid_ae")
    config.data.channels = channels
    config.model.update(model)
    return config


def param_count(variables, collection: str = "params") -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables[collection]))


def layer_list_count(channels, widths, reductions, latent) -> tuple[int, int]:
    """(trainable parameters, batch statistics) from the layer list of network.py's docstring."""

    def conv3(cin, cout):  # 3x3 conv with bias
        return 9 * cin * cout + cout

    def double(cin, cout):  # (conv3x3 -> BN) x 2; BN has scale and bias
        return conv3(cin, cout) + 2 * cout + conv3(cout, cout) + 2 * cout

    params = stats = 0
    cin = channels
    for w in widths:
        params, stats, cin = params + double(cin, w), stats + 4 * w, w
    top = widths[-1]
    cat = top
    for r in reductions:  # 1x1 conv without bias -> BN
        params, stats, cat = params + top * (top // r) + 2 * (top // r), stats + 2 * (top // r), cat + top // r
    params, stats = params + cat * latent + 2 * latent, stats + 2 * latent  # bottleneck
    cin = latent
    for w in reversed(widths[:-1]):
        params, stats, cin = params + double(cin, w), stats + 4 * w, w
    return params + 9 * cin * channels + channels, stats  # output conv3x3


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 64])
def test_output_shapes_and_ranges(channels, size):
    detector = detectors.build(tiny_config(channels))
    assert detector.size_multiple == 4 and not detector.bounded_map
    images = jax.random.uniform(jax.random.key(1), (2, size, size, channels))
    variables = detector.init(jax.random.key(0), images[:1])
    out = detector.anomaly_map(variables, images)
    assert out["map"].shape == (2, size, size)
    assert out["reconstruction"].shape == (2, size, size, channels)
    assert "score" not in out  # 'max': the shared filtered max
    rec = np.asarray(out["reconstruction"])
    assert rec.min() >= 0.0 and rec.max() <= 1.0
    assert np.all(np.asarray(out["map"]) >= 0.0)


def test_mean_image_score_is_the_mean_of_the_map():
    detector = detectors.build(tiny_config(image_score="mean"))
    images = jax.random.uniform(jax.random.key(1), (3, 32, 32, 1))
    out = detector.anomaly_map(detector.init(jax.random.key(0), images[:1]), images)
    np.testing.assert_allclose(out["score"], np.asarray(out["map"]).mean(axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize(
    "channels,widths,reductions,latent",
    [(1, (4, 8, 16), (1, 2), 8), (3, (32, 64, 128, 256), (1, 2, 4, 8), 32), (1, (16, 32, 64, 128), (1, 2, 4, 8), 32)],
)
def test_parameter_count_matches_the_layer_list(channels, widths, reductions, latent):
    bins = (1, 2, 3, 6)[: len(reductions)]
    model = build_model(
        tiny_config(
            channels, widths=widths, pyramid_bins=bins, pyramid_reductions=reductions, latent_channels=latent
        ).model,
        channels,
    )
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, channels)))
    assert (param_count(variables), param_count(variables, "batch_stats")) == layer_list_count(
        channels, widths, reductions, latent
    )


def test_defaults_and_cpu_config_sizes():
    # Anchors the counts quoted in configs/pyramid_ae.py's docstring (16..128: 428 k; 32..256: 1.6 M).
    assert layer_list_count(1, (16, 32, 64, 128), (1, 2, 4, 8), 32)[0] == 427_905
    assert layer_list_count(1, (32, 64, 128, 256), (1, 2, 4, 8), 32)[0] == 1_645_249


def test_a_few_train_steps_lower_the_loss_on_a_fixed_batch():
    config = tiny_config()
    detector = detectors.build(config)
    yy, xx = np.mgrid[0:32, 0:32]
    base = 0.5 + 0.3 * np.sin(2 * np.pi * yy / 8.0) * np.cos(2 * np.pi * xx / 16.0)
    batch = {"image": jnp.asarray(np.stack([base, base[::-1], base[:, ::-1], base.T])[..., None], jnp.float32)}
    state = TrainState.create(detector.init(jax.random.key(0), batch["image"][:1]), detector.optimizer)
    step = jax.jit(detector.train_step)
    losses = []
    for i in range(15):
        state, metrics = step(state, batch, jax.random.key(i), None)
        losses.append(float(metrics["loss"]))
    assert set(detector.metric_names) <= set(metrics)
    assert losses[-1] < 0.8 * losses[0], losses
    assert int(state.step) == 15


def test_map_is_higher_where_a_patch_was_corrupted_after_training_on_a_clean_texture():
    detector = detectors.build(tiny_config())
    yy, xx = np.mgrid[0:96, 0:96]
    texture = (0.5 + 0.3 * np.sin(2 * np.pi * yy / 8.0) * np.cos(2 * np.pi * xx / 12.0)).astype(np.float32)
    rng = np.random.default_rng(0)

    def crops(n):
        corners = rng.integers(0, 64, (n, 2))
        return np.stack([texture[y : y + 32, x : x + 32] for y, x in corners])[..., None]

    state = TrainState.create(detector.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))), detector.optimizer)
    step, anomaly_map = jax.jit(detector.train_step), jax.jit(detector.anomaly_map)
    clean = crops(4)
    corrupted = clean.copy()
    corrupted[:, 12:20, 12:20] = 1.0  # a bright square: a white spot on the texture
    inside = np.zeros((32, 32), bool)
    inside[12:20, 12:20] = True
    clean_error_before = float(np.mean(anomaly_map(state.variables, clean)["map"]))
    for i in range(150):
        state, _ = step(state, {"image": jnp.asarray(crops(8))}, jax.random.key(i), None)
    maps = np.asarray(anomaly_map(state.variables, corrupted)["map"])
    # The texture was learned (its error fell) and the square stands out in every image.
    assert float(np.mean(anomaly_map(state.variables, clean)["map"])) < 0.5 * clean_error_before
    inside_mean, outside_mean = maps[:, inside].mean(axis=1), maps[:, ~inside].mean(axis=1)
    assert np.all(inside_mean > 5 * outside_mean), (inside_mean, outside_mean)


def reference_pyramid_map(a: np.ndarray, b: np.ndarray, levels: int) -> tuple[list, np.ndarray]:
    """Gaussian pyramid with SciPy: binomial blur (mode 'reflect' = symmetric), every second pixel;
    per-level squared error averaged over channels, zoomed back (order 1, align corners), averaged."""
    kernel = np.asarray([1, 4, 6, 4, 1], np.float64) / 16

    def down(x):
        x = scipy.ndimage.convolve1d(x, kernel, axis=1, mode="reflect")
        x = scipy.ndimage.convolve1d(x, kernel, axis=2, mode="reflect")
        return x[:, ::2, ::2]

    a, b = a.astype(np.float64), b.astype(np.float64)
    errors = []
    for k in range(levels):
        if k:
            a, b = down(a), down(b)
        errors.append(np.mean((a - b) ** 2, axis=-1))
    h, w = errors[0].shape[1:]
    up = [
        np.stack([scipy.ndimage.zoom(e_i, (h / e.shape[1], w / e.shape[2]), order=1, grid_mode=False) for e_i in e])
        for e in errors
    ]
    return errors, np.mean(up, axis=0)


@pytest.mark.parametrize("shape,levels", [((2, 32, 32, 1), 3), ((2, 24, 40, 3), 3), ((1, 16, 16, 2), 1)])
def test_pyramid_error_map_matches_a_scipy_reference(shape, levels):
    rng = np.random.default_rng(0)
    a, b = rng.random(shape, np.float32), rng.random(shape, np.float32)
    expected_levels, expected = reference_pyramid_map(a, b, levels)
    for got, want in zip(level_errors(jnp.asarray(a), jnp.asarray(b), levels), expected_levels):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        pyramid_error_map(jnp.asarray(a), jnp.asarray(b), levels), expected, rtol=1e-5, atol=1e-6
    )


def test_the_map_of_a_perfect_reconstruction_is_zero_and_levels_spread_a_point_error():
    a = np.zeros((1, 32, 32, 1), np.float32)
    b = a.copy()
    assert float(jnp.max(pyramid_error_map(a, b, 3))) == 0.0
    b[0, 16, 16, 0] = 1.0
    one, three = np.asarray(pyramid_error_map(a, b, 1))[0], np.asarray(pyramid_error_map(a, b, 3))[0]
    assert np.count_nonzero(one) == 1
    assert np.count_nonzero(three) > 9 and np.argmax(three) == np.argmax(one)


def test_pooling_and_resizing_match_torch_and_scipy_semantics():
    rng = np.random.default_rng(0)
    x = rng.random((1, 8, 7, 2), np.float32)
    for out in (1, 3, 6, 10):
        # torch.nn.AdaptiveAvgPool2d: cell i averages floor(i*n/out) .. ceil((i+1)*n/out) - 1.
        want = np.zeros((1, out, out, 2))
        for i in range(out):
            for j in range(out):
                r0, r1 = (i * 8) // out, -(-((i + 1) * 8) // out)
                c0, c1 = (j * 7) // out, -(-((j + 1) * 7) // out)
                want[0, i, j] = x[0, r0:r1, c0:c1].mean(axis=(0, 1))
        np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), out), want, rtol=1e-5, atol=1e-6)
    maps = rng.random((1, 5, 3), np.float32)
    want = scipy.ndimage.zoom(maps[0].astype(np.float64), (16 / 5, 9 / 3), order=1, grid_mode=False)
    np.testing.assert_allclose(resize_linear(jnp.asarray(maps), 16, 9)[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resize_linear(jnp.asarray(maps[:, :1, :1]), 4, 4)[0], np.full((4, 4), maps[0, 0, 0]))


def test_coupled_weight_decay_is_torch_adam_l2():
    config = tiny_config()
    params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    grads = {"w": jnp.asarray([0.1, 0.2, -0.3])}
    tx = make_pyramid_optimizer(config.optim, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    decay = config.optim.weight_decay
    reference = optax.adam(config.optim.learning_rate)
    want, _ = reference.update({"w": grads["w"] + decay * params["w"]}, reference.init(params), params)
    np.testing.assert_allclose(updates["w"], want["w"], rtol=1e-6)
    config.optim.weight_decay_mode = "decoupled"
    adamw = make_pyramid_optimizer(config.optim, 10)
    decoupled, _ = adamw.update(grads, adamw.init(params), params)
    assert not np.allclose(decoupled["w"], want["w"])


@pytest.mark.parametrize(
    "override,message",
    [
        (dict(pyramid_bins=(1, 2, 3)), "same length"),
        (dict(image_score="median"), "image_score"),
        (dict(map_levels=0), "map_levels"),
    ],
)
def test_bad_model_settings_raise_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        detectors.build(tiny_config(**override))


def test_patch_sizes_must_be_a_multiple_of_the_pooling():
    config = tiny_config()
    model = build_model(config.model, 1)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.init(jax.random.key(0), jnp.zeros((1, 30, 30, 1)))
