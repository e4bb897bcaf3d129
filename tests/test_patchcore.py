"""PatchCore (xray_flax/detectors/patchcore): patch features against NumPy/SciPy, the exact
coreset through the detector against the NumPy reference greedy, patch and image scores
against brute force and anomalib's formula, and a pure, resumable fit."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from scipy import ndimage

from configs import tiny
from xray_flax import detectors, errors
from xray_flax.detectors.patchcore import distance as model
from xray_flax.detectors.patchcore import steps
from xray_flax.nn import coreset, knn
from xray_flax.nn.anomaly_maps import upsample_bilinear


def test_patch_embedding_equals_numpy():
    rng = np.random.default_rng(0)
    features = {
        "a": rng.normal(size=(2, 8, 8, 5)).astype(np.float32),
        "b": rng.normal(size=(2, 4, 4, 3)).astype(np.float32),
    }
    got = np.asarray(model.patch_embedding(features, ("a", "b")))
    # AvgPool2d(3, 1, 1) with count_include_pad: a 3x3 box mean over zero padding.
    box = lambda x: ndimage.uniform_filter(x, size=(1, 3, 3, 1), mode="constant", cval=0.0)  # noqa: E731
    expected_b = np.asarray(upsample_bilinear(jnp.asarray(box(features["b"])), (8, 8)))
    np.testing.assert_allclose(got, np.concatenate([box(features["a"]), expected_b], -1), rtol=1e-5, atol=1e-6)
    # torch adaptive_avg_pool1d windows for 5 -> 3: [0, 2), [1, 4), [3, 5).
    matrix = model.adaptive_pool_matrix(5, 3)
    np.testing.assert_allclose(matrix.T, [[0.5, 0.5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 0.5, 0.5]])
    pooled = np.asarray(model.patch_embedding(features, ("a", "b"), target_dim=3))
    np.testing.assert_allclose(pooled, got @ model.adaptive_pool_matrix(8, 3), rtol=1e-5, atol=1e-6)


def _anomalib_score(embedding, bank, k):
    """anomalib 2.7 PatchcoreModel.compute_anomaly_score, transcribed to NumPy float64."""
    dist = np.sqrt(((embedding[:, :, None, :] - bank[None, None]) ** 2).sum(-1))  # [B, P, M]
    patch, location = dist.min(-1), dist.argmin(-1)
    scores = []
    for b in range(len(embedding)):
        j = patch[b].argmax()
        nn_sample = bank[location[b, j]]
        support = np.argsort(np.sqrt(((bank - nn_sample) ** 2).sum(-1)), kind="stable")[:k]
        d = np.sqrt(((embedding[b, j] - bank[support]) ** 2).sum(-1))
        weights = 1 - (np.exp(d) / np.exp(d).sum())[0]
        scores.append(weights * patch[b, j])
    return np.asarray(scores), patch


def test_reweighted_score_equals_anomalib_formula():
    rng = np.random.default_rng(1)
    embedding = rng.normal(size=(3, 20, 6)).astype(np.float32)
    bank = rng.normal(size=(50, 6)).astype(np.float32)
    valid = np.ones(50, bool)
    distances, indices = knn.nearest_neighbours(embedding.reshape(-1, 6), bank, valid, 1, bank_block=16)
    ours = model.reweighted_score(
        jnp.asarray(embedding),
        distances[:, 0].reshape(3, 20),
        indices[:, 0].reshape(3, 20),
        jnp.asarray(bank),
        jnp.asarray(valid),
        9,
        query_block=64,
        bank_block=16,
    )
    expected, patch = _anomalib_score(embedding.astype(np.float64), bank.astype(np.float64), 9)
    np.testing.assert_allclose(np.asarray(distances[:, 0]).reshape(3, 20), patch, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5)


def _detector(**model_overrides):
    config = tiny.get_config("patchcore")
    config.model.update(model_overrides)
    return detectors.build(config)


def _batches(n_batches, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        valid = np.ones(4, np.float32)
        if i == n_batches - 1:
            valid[2:] = 0.0  # a padded last batch
        out.append({"image": jnp.asarray(rng.random((4, 32, 32, 1)), jnp.float32), "valid": jnp.asarray(valid)})
    return out


def _variables(detector):
    return detector.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_exact_mode_bank_equals_reference_greedy_of_all_training_patches():
    detector = _detector(chunk_size=100_000, bank_size=40)  # one reduction over everything
    variables = _variables(detector)
    batches = _batches(3)
    fitted = detectors.base.run_fit(detector, variables, batches)
    plan = detector.fit_init.keywords["plan"]
    embed = jax.jit(lambda v, x: steps.embed(v, x, plan=plan))
    patches = np.concatenate(
        [np.asarray(embed(variables, b["image"]))[np.asarray(b["valid"]) > 0].reshape(-1, plan.dim) for b in batches]
    )
    assert len(patches) == (4 + 4 + 2) * 64
    reference = coreset.greedy_k_center_reference(patches @ plan.projection, 40)
    bank = np.asarray(fitted["memory"]["bank"])[np.asarray(fitted["memory"]["valid"])]
    np.testing.assert_allclose(bank, patches[reference], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def fitted():
    """A tiny PatchCore fitted on 4 batches (the fit does not depend on the map's options)."""
    detector = _detector()
    return detectors.base.run_fit(detector, _variables(detector), _batches(4))


def test_patch_scores_and_plain_max_equal_brute_force(fitted):
    detector = _detector(num_neighbors=1, blur_sigma=0.0, map_upsample="nearest")
    images = _batches(1, seed=5)[0]["image"]
    out = jax.jit(detector.anomaly_map)(fitted, images)
    plan = detector.fit_init.keywords["plan"]
    queries = np.asarray(steps.embed(fitted, images, plan=plan)).reshape(-1, plan.dim)
    memory = fitted["memory"]
    ref, _ = knn.brute_force(queries, memory["bank"], memory["valid"], 1)
    patch = ref[:, 0].reshape(4, 8, 8)
    np.testing.assert_allclose(np.asarray(out["map"])[:, ::4, ::4], patch, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["score"]), patch.max((1, 2)), rtol=1e-5)


def test_fit_is_pure_and_resumes_from_a_saved_state(tmp_path):
    detector = _detector()
    variables = _variables(detector)
    batches = _batches(6)  # 6 x 256 patches through a 1,024-patch buffer: reductions mid-stream
    state = detector.fit_init(variables)
    shapes = jax.tree.map(np.shape, state)
    for batch in batches:
        state = detector.fit_update(state, variables, batch)
    assert jax.tree.map(np.shape, state) == shapes
    summary = detector.fit_summary(state)
    assert summary["patches"] == (5 * 4 + 2) * 64 and summary["bank"] == 256
    full = detector.fit_finish(state, variables)

    partial = detector.fit_init(variables)
    for batch in batches[:3]:
        partial = detector.fit_update(partial, variables, batch)
    before = jax.tree.map(np.array, partial)
    detector.fit_update(partial, variables, batches[3])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, partial), before)  # input untouched
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "fit", partial)
    checkpointer.wait_until_finished()
    resumed = checkpointer.restore(tmp_path / "fit", detector.fit_init(variables))
    for batch in batches[3:]:
        resumed = detector.fit_update(resumed, variables, batch)
    resumed_vars = detector.fit_finish(resumed, variables)
    for key in ("bank", "valid"):
        np.testing.assert_array_equal(np.asarray(resumed_vars["memory"][key]), np.asarray(full["memory"][key]))

    out = jax.jit(detector.anomaly_map)(full, batches[0]["image"])
    assert out["map"].shape == (4, 32, 32) and out["score"].shape == (4,)
    assert np.isfinite(np.asarray(out["map"])).all() and np.isfinite(np.asarray(out["score"])).all()
    # The bank split over the mesh (one device here; 4 in tests/test_knn_coreset.py) gives the same maps.
    sharded = jax.jit(_detector(shard_bank=True).anomaly_map)(full, batches[0]["image"])
    np.testing.assert_array_equal(np.asarray(sharded["map"]), np.asarray(out["map"]))
    np.testing.assert_array_equal(np.asarray(sharded["score"]), np.asarray(out["score"]))


def test_bad_config_values_are_clear_errors():
    with pytest.raises(ValueError, match="map_upsample"):
        _detector(map_upsample="bicubic")
    with pytest.raises(ValueError, match="bank_size"):
        _detector(bank_size=0)
    detector = _detector()
    with pytest.raises(ValueError, match="batch"):
        detector.fit_update(
            detector.fit_init(None), _variables(detector), _batches(1)[0] | {"image": jnp.zeros((2, 32, 32, 1))}
        )


def _self_distances_reference(x: np.ndarray, h: int, w: int, radius: int) -> np.ndarray:
    """NumPy brute force in float64: per tile, per patch, the nearest patch beyond `radius` cells."""
    out = np.full(x.shape[:2], np.inf)
    for t in range(x.shape[0]):
        for i in range(h * w):
            for j in range(h * w):
                if max(abs(i // w - j // w), abs(i % w - j % w)) > radius:
                    out[t, i] = min(out[t, i], np.linalg.norm(x[t, i].astype(np.float64) - x[t, j]))
    return out


@pytest.mark.parametrize("radius", [1, 2, 6])
def test_tile_self_distances_equal_brute_force(radius):
    x = np.random.default_rng(3).normal(size=(2, 36, 5)).astype(np.float32)
    ours = np.asarray(model.tile_self_distances(jnp.asarray(x), 6, 6, radius))
    reference = _self_distances_reference(x, 6, 6, radius)
    assert np.isinf(reference).all() == (radius >= 5)  # a 6 x 6 grid has nothing beyond 5 cells
    np.testing.assert_allclose(ours, reference, rtol=1e-5)


def test_self_radius_map_is_the_nearer_of_bank_and_tile_and_its_score_the_max(fitted):
    detector = _detector(num_neighbors=9, blur_sigma=0.0, map_upsample="nearest", self_radius=2)
    images = _batches(1, seed=5)[0]["image"]
    out = jax.jit(detector.anomaly_map)(fitted, images)
    plan = detector.fit_init.keywords["plan"]
    queries = np.asarray(steps.embed(fitted, images, plan=plan)).reshape(4, 64, plan.dim)
    memory = fitted["memory"]
    bank, _ = knn.brute_force(queries.reshape(-1, plan.dim), memory["bank"], memory["valid"], 1)
    patch = np.minimum(bank[:, 0].reshape(4, 64), _self_distances_reference(queries, 8, 8, 2)).reshape(4, 8, 8)
    np.testing.assert_allclose(np.asarray(out["map"])[:, ::4, ::4], patch, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["score"]), patch.max((1, 2)), rtol=1e-5)
    with pytest.raises(errors.ConfigError, match="self_radius"):
        _detector(self_radius=-1)
