"""PaDiM (xray_flax/detectors/padim): streaming moments against np.mean / np.cov, Mahalanobis
against scipy, the embedding against NumPy, and a pure, resumable fit."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from scipy.spatial import distance

from configs import tiny
from xray_flax import detectors
from xray_flax.detectors import padim
from xray_flax.detectors.padim import distance as model
from xray_flax.detectors.padim import steps

N, P, D = 97, 6, 12


def _features(seed=0):
    """Correlated features with a large common offset (where naive sums lose digits)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(P, D, D)) * 0.5
    return (5.0 + np.einsum("pij,npj->npi", mixing, rng.normal(size=(N, P, D)))).astype(np.float32)


def _stream(x, batch, merge_on_device=False):
    """Moments of x [N, P, D] in batches of `batch` (the last one padded with garbage rows of
    valid 0), as fit_update does: float32 batch moments in jit, merged in float64 on the host
    (or float32 on device)."""
    moments = jax.jit(model.batch_moments)
    merge = jax.jit(model.merge_moments)
    if merge_on_device:
        state = (jnp.float32(0), jnp.zeros((P, D)), jnp.zeros((P, D, D)))
    else:
        state = (np.float64(0), np.zeros((P, D)), np.zeros((P, D, D)))
    for start in range(0, len(x), batch):
        chunk, valid = x[start : start + batch], np.ones(min(batch, len(x) - start), np.float32)
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.full((pad, P, D), 1e3, np.float32)])
            valid = np.concatenate([valid, np.zeros(pad, np.float32)])
        out = moments(jnp.asarray(chunk), jnp.asarray(valid))
        if merge_on_device:
            state = merge(state, out)
        else:
            n, mean, scatter = jax.device_get(out)
            generic = model.merge_moments(state, (np.float64(n), np.float64(mean), np.float64(scatter)))
            state = model.merge_moments_host(state, (n, mean, scatter), block=4)  # what fit_update runs
            for ours, theirs in zip(state, generic):
                np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-12)
    n, mean, scatter = (np.asarray(v, np.float64) for v in state)
    return n, mean, scatter / (n - 1)


def _relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("batch", [1, 7, 32, N])
def test_streaming_mean_and_covariance_equal_numpy(batch):
    x = _features()
    ref_mean = x.astype(np.float64).mean(0)
    ref_cov = np.stack([np.cov(x[:, p].astype(np.float64), rowvar=False) for p in range(P)])
    n, mean, cov = _stream(x, batch)
    assert n == N
    assert _relative(mean, ref_mean) < 1e-6
    assert _relative(cov, ref_cov) < 1e-6
    # accumulate='float32' (on device): the same merge in float32 (measured here ~2e-7).
    _, mean32, cov32 = _stream(x, batch, merge_on_device=True)
    assert _relative(mean32, ref_mean) < 2e-6
    assert _relative(cov32, ref_cov) < 2e-6


def test_mahalanobis_equals_scipy():
    x = _features(1)
    n, mean, cov = _stream(x, 16)
    ridge = 0.01
    _, whitening = model.whitening_numpy(n, mean, cov * (n - 1), ridge)
    queries = _features(2)[:5]
    ours = np.asarray(model.mahalanobis(jnp.asarray(queries), jnp.asarray(mean, jnp.float32), jnp.asarray(whitening)))
    ours_device = np.asarray(
        model.mahalanobis(
            queries, *model.whitening_jax(jnp.float32(n), jnp.float32(mean), jnp.float32(cov * (n - 1)), ridge)
        )
    )
    for b in range(5):
        for p in range(P):
            inverse = np.linalg.inv(cov[p] + ridge * np.eye(D))
            expected = distance.mahalanobis(queries[b, p].astype(np.float64), mean[p], inverse)
            np.testing.assert_allclose(ours[b, p], expected, rtol=2e-5)
            np.testing.assert_allclose(ours_device[b, p], expected, rtol=1e-3)


def test_embedding_subset_nearest_upsampling_and_pooling():
    rng = np.random.default_rng(0)
    features = {
        "a": rng.normal(size=(2, 8, 8, 5)).astype(np.float32),
        "b": rng.normal(size=(2, 4, 4, 3)).astype(np.float32),
    }
    subset = model.channel_subset(8, 4, seed=3)
    per_tap = model.split_subset(subset, [5, 3])
    got = np.asarray(model.embedding(features, ("a", "b"), per_tap))
    full = np.concatenate([features["a"], features["b"].repeat(2, axis=1).repeat(2, axis=2)], axis=-1)
    np.testing.assert_array_equal(got, full[..., subset])
    pooled = np.asarray(model.embedding(features, ("a", "b"), per_tap, pool=2))
    np.testing.assert_allclose(pooled, full[..., subset].reshape(2, 4, 2, 4, 2, 4).mean((2, 4)), rtol=1e-6)
    # torch's nearest rule for a non-whole factor: source index floor(i * in / out).
    up = np.asarray(model.upsample_nearest(features["b"], (6, 6)))
    np.testing.assert_array_equal(up, features["b"][:, [0, 0, 1, 2, 2, 3]][:, :, [0, 0, 1, 2, 2, 3]])
    with pytest.raises(ValueError, match="n_features"):
        model.channel_subset(8, 9, 0)


def _tiny_detector(**model_overrides):
    config = tiny.get_config("padim")
    config.model.update(model_overrides)
    return config, detectors.build(config)


def _batches(n_batches, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        valid = np.ones(4, np.float32)
        if i == n_batches - 1:
            valid[3] = 0.0  # a padded last batch
        out.append({"image": jnp.asarray(rng.random((4, 32, 32, 1)), jnp.float32), "valid": jnp.asarray(valid)})
    return out


@pytest.mark.parametrize("accumulate", ["float64", "float32"])
def test_fit_is_pure_and_resumes_from_a_saved_state(tmp_path, accumulate):
    _, detector = _tiny_detector(accumulate=accumulate)
    variables = detector.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    batches = _batches(5)
    state = detector.fit_init(variables)
    shapes = jax.tree.map(np.shape, state)
    for batch in batches:
        state = detector.fit_update(state, variables, batch)
    full = detector.fit_finish(state, variables)
    assert jax.tree.map(np.shape, state) == shapes  # the state does not grow
    assert float(detector.fit_summary(state)["tiles"]) == 19.0

    # Interrupted after 2 batches: saved by orbax, restored into the fit_init template, resumed.
    partial = detector.fit_init(variables)
    for batch in batches[:2]:
        partial = detector.fit_update(partial, variables, batch)
    before = jax.tree.map(np.array, partial)
    again = detector.fit_update(partial, variables, batches[2])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, partial), before)  # input untouched
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "fit", partial)
    checkpointer.wait_until_finished()
    resumed = checkpointer.restore(tmp_path / "fit", detector.fit_init(variables))
    for batch in batches[2:]:
        resumed = detector.fit_update(resumed, variables, batch)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, resumed), jax.tree.map(np.asarray, state))
    resumed_vars = detector.fit_finish(resumed, variables)
    for key in ("mean", "whitening"):
        np.testing.assert_array_equal(np.asarray(resumed_vars["gaussian"][key]), np.asarray(full["gaussian"][key]))
    del again

    out = jax.jit(detector.anomaly_map)(full, batches[0]["image"])
    assert out["map"].shape == (4, 32, 32) and out["score"].shape == (4,)
    assert np.isfinite(np.asarray(out["map"])).all()
    np.testing.assert_allclose(np.asarray(out["score"]), np.asarray(out["map"]).max((1, 2)), rtol=1e-6)


def test_bad_config_values_are_clear_errors():
    with pytest.raises(ValueError, match="accumulate"):
        _tiny_detector(accumulate="float16")
    with pytest.raises(ValueError, match="shard_positions"):
        _tiny_detector(shard_positions=True)
    with pytest.raises(ValueError, match="n_features"):
        _tiny_detector(n_features=1000)
    with pytest.raises(ValueError, match="gaussian"):
        _tiny_detector(gaussian="per_tile")


def _finish(state, gaussian, accumulate="float64", ridge=0.01):
    """fit_finish on a given fit state (no backbone needed: only the Gaussian is fitted)."""
    plan = steps.Plan(
        backbone=None,
        per_tap=(),
        n_features=D,
        pool=1,
        ridge=ridge,
        storage_dtype="float32",
        accumulate=accumulate,
        shard_positions=False,
        mesh_config=None,
        blur_sigma=4.0,
        gaussian=gaussian,
    )
    fitted = steps.fit_finish(state, {}, plan=plan)[steps.GAUSSIAN]
    return np.asarray(fitted["mean"]), np.asarray(fitted["whitening"])


def _state(x, device=False):
    n, mean, cov = _stream(x, 16)
    if device:
        return {"count": jnp.float32(n), "mean": jnp.float32(mean), "scatter": jnp.float32(cov * (n - 1))}
    return {"count": np.float64(n), "mean": mean, "scatter": cov * (n - 1)}


@pytest.mark.parametrize("device", [False, True])
def test_shared_gaussian_equals_numpy_over_all_positions_and_tiles(device):
    x = _features(3)  # a different Gaussian per position: pooling them changes mean and covariance
    ridge = 0.01
    pooled = x.reshape(N * P, D).astype(np.float64)
    ref_mean = np.mean(pooled, axis=0)
    ref_cov = np.cov(pooled, rowvar=False, ddof=1) + ridge * np.eye(D)
    mean, whitening = _finish(_state(x, device), "shared", "float32" if device else "float64", ridge)
    assert mean.shape == (P, D) and whitening.shape == (P, D, D)  # the per-position layout
    for p in range(P):
        np.testing.assert_array_equal(mean[p], mean[0])
        np.testing.assert_array_equal(whitening[p], whitening[0])
    assert _relative(mean[0], ref_mean) < 1e-6
    cov = np.linalg.inv(whitening[0].astype(np.float64).T @ whitening[0].astype(np.float64))  # (L^-T L^-1)^-1 = L L^T
    assert _relative(cov, ref_cov) < 1e-5

    queries = _features(4)[:3]
    ours = np.asarray(model.mahalanobis(jnp.asarray(queries), jnp.asarray(mean), jnp.asarray(whitening)))
    inverse = np.linalg.inv(ref_cov)
    for b in range(3):
        for p in (0, 2, P - 1):
            expected = distance.mahalanobis(queries[b, p].astype(np.float64), ref_mean, inverse)
            np.testing.assert_allclose(ours[b, p], expected, rtol=2e-5)


def test_pool_positions_is_the_merge_of_every_position():
    n, mean, cov = _stream(_features(5), 32)
    pooled = model.pool_positions(n, mean, cov * (n - 1), block=4)  # blocks of 4 over 6 positions
    whole = model.pool_positions(n, mean, cov * (n - 1), block=P)
    for ours, theirs in zip(pooled, whole):
        np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-12)
    assert pooled[0] == n * P and pooled[1].shape == (1, D) and pooled[2].shape == (1, D, D)


def test_per_position_default_is_unchanged():
    state = _state(_features(6))
    mean, whitening = _finish(state, "per_position")
    ref_mean, ref_whitening = model.whitening_numpy(
        float(state["count"]), state["mean"], state["scatter"], 0.01, out_dtype=np.float32
    )
    np.testing.assert_array_equal(mean, np.float32(ref_mean))
    np.testing.assert_array_equal(whitening, ref_whitening)
    assert tiny.get_config("padim").model.gaussian == "per_position"


def test_shared_fit_end_to_end():
    _, detector = _tiny_detector(gaussian="shared")
    variables = detector.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    state = detector.fit_init(variables)
    batches = _batches(3)
    for batch in batches:
        state = detector.fit_update(state, variables, batch)
    fitted = detector.fit_finish(state, variables)["gaussian"]
    assert fitted["whitening"].shape == variables["gaussian"]["whitening"].shape
    np.testing.assert_array_equal(np.asarray(fitted["whitening"][-1]), np.asarray(fitted["whitening"][0]))
    out = jax.jit(detector.anomaly_map)({**variables, "gaussian": fitted}, batches[0]["image"])
    assert out["map"].shape == (4, 32, 32) and np.isfinite(np.asarray(out["map"])).all()


def test_input_scale_embeds_the_bilinearly_upsampled_tile():
    """input_scale=2 sees what the paper's PaDiM sees of a tile resized to twice its side
    (jax.image.resize, bilinear): 4x the positions, the map still at the tile's size."""
    config, scaled = _tiny_detector(input_scale=2)
    plain_plan = padim.make_plan(tiny.get_config("padim"))
    scaled_plan = padim.make_plan(config)
    images = _batches(1)[0]["image"]
    variables = scaled.init(jax.random.key(0), images[:1])
    assert variables["gaussian"]["mean"].shape[0] == 4 * plain_plan.positions(32)[0] ** 2
    resized = jax.image.resize(images, (4, 64, 64, 1), "bilinear")
    np.testing.assert_allclose(
        np.asarray(steps.embed(variables, images, plan=scaled_plan)),
        np.asarray(steps.embed(variables, resized, plan=plain_plan)),
        rtol=1e-6,
        atol=1e-6,
    )
    assert scaled.anomaly_map(variables, images)["map"].shape == (4, 32, 32)
    with pytest.raises(ValueError, match="input_scale"):
        _tiny_detector(input_scale=0)
