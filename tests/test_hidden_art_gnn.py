"""GCN/GAT Siamese networks (xray_flax.hidden_art.gnn) against dense NumPy formulas and loops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_flax.detectors.base import TrainState
from xray_flax.hidden_art import gnn, graphs, simulate

N_SEGMENTS = 40


@functools.cache
def _apply(arch, train=False):
    """Jitted GraphSiamese.apply (op-by-op dispatch is slow on the tests' 2 CPU cores)."""
    model = gnn.make_model(arch)
    return jax.jit(lambda v, r, b, key: model.apply(v, r, b, 3, train=train, rngs={"dropout": key}))


@functools.cache
def _maps(arch):
    return jax.jit(functools.partial(gnn.dissimilarity, arch=arch))


@pytest.fixture(scope="module")
def scenes():
    params = simulate.SimulationParams(size=64, n_bands=3, n_scenes=3, n_val=0)
    return [simulate.simulate_scene(params, i) for i in range(3)]


@pytest.fixture(scope="module")
def items(scenes):
    return [gnn.scene_graphs(s, n_segments=N_SEGMENTS) for s in scenes]


@pytest.fixture(scope="module")
def batch(items):
    return gnn.collate(items)


def _dense_adjacency(senders, receivers, n):
    a = np.zeros((n, n))
    a[receivers, senders] = 1.0
    return a


def test_gcn_layer_is_the_dense_symmetric_normalisation(items):
    g = items[0]["rgb"]
    padded = graphs.pad([g], *graphs.padded_sizes([g], multiple=16))
    layer = gnn.GraphConv(5)
    variables = layer.init(jax.random.key(0), padded)
    variables = jax.tree.map(lambda x: x + 0.1, variables)  # a non-zero bias
    got = np.asarray(layer.apply(variables, padded))
    n = int(g.n_node[0])
    a_hat = _dense_adjacency(g.senders, g.receivers, n) + np.eye(n)
    d = np.diag(1.0 / np.sqrt(a_hat.sum(1)))
    w = np.asarray(variables["params"]["linear"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["bias"], np.float64)
    expected = d @ a_hat @ d @ np.asarray(g.nodes, np.float64) @ w + b
    np.testing.assert_allclose(got[:n], expected, rtol=1e-4, atol=1e-5)


def test_graph_norm_ignores_padded_nodes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    ids = jnp.array([0] * 4 + [1] * 3 + [2] * 3)  # graph 2 = padding
    mask = jnp.arange(10) < 7
    norm = gnn.GraphNorm()
    variables = norm.init(jax.random.key(0), x, ids, 4, mask)
    got = np.asarray(norm.apply(variables, x, ids, 4, mask))
    for rows in (slice(0, 4), slice(4, 7)):
        block = x[rows].astype(np.float64)
        expected = (block - block.mean(0)) / np.sqrt(block.var(0) + 1e-5)
        np.testing.assert_allclose(got[rows], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[7:], 0.0)


def _numpy_gat(x, senders, receivers, params, heads, per_head, concat, slope=0.2):
    """Loop reference: node i attends to its in-neighbours j (edges j -> i) and itself."""
    n = x.shape[0]
    h = (x.astype(np.float64) @ np.asarray(params["linear"]["kernel"], np.float64)).reshape(n, heads, per_head)
    a_s = np.asarray(params["attention_sender"], np.float64)
    a_r = np.asarray(params["attention_receiver"], np.float64)
    out = np.zeros((n, heads, per_head))
    for i in range(n):
        sources = list(senders[receivers == i]) + [i]
        for k in range(heads):
            e = np.array([h[j, k] @ a_s[k] + h[i, k] @ a_r[k] for j in sources])
            e = np.where(e > 0, e, slope * e)
            alpha = np.exp(e - e.max())
            alpha /= alpha.sum()
            out[i, k] = sum(a * h[j, k] for a, j in zip(alpha, sources))
    out = out.reshape(n, -1) if concat else out.mean(1)
    return out + np.asarray(params["bias"], np.float64)


@pytest.mark.parametrize("concat", [True, False])
def test_gat_layer_matches_numpy_loop(concat):
    rng = np.random.default_rng(1)
    senders = np.array([0, 1, 1, 2, 2, 3, 0, 3], np.int32)
    receivers = np.array([1, 0, 2, 1, 3, 2, 3, 0], np.int32)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    layer = gnn.GATLayer(3, heads=2, concat=concat)
    variables = layer.init(jax.random.key(2), x, senders, receivers)
    out, _, _ = layer.apply(variables, x, senders, receivers)
    expected = _numpy_gat(x, senders, receivers, variables["params"], 2, 3, concat)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)


def test_gat_attention_sums_to_one_per_receiver_padded_too(batch):
    variables = gnn.init(jax.random.key(0), batch, arch="gat")
    out = _apply("gat")(variables, batch["rgb_graph"], batch["band_graphs"], jax.random.key(0))
    receivers = np.asarray(batch["rgb_graph"].receivers)
    n = batch["rgb_graph"].nodes.shape[0]
    edge, loop = np.asarray(out["edge_attention"]), np.asarray(out["self_attention"])
    assert edge.shape[:2] == (3, 4) and edge.shape[-1] == 4  # layers, blocks (RGB + 3 bands), heads
    totals = loop.copy()
    for layer in range(3):
        for block in range(4):
            np.add.at(totals[layer, block], receivers, edge[layer, block])
    # Every node, the padding nodes included, and every head.
    np.testing.assert_allclose(totals, 1.0, atol=1e-5)
    assert totals.shape[2] == n and not np.allclose(edge, edge.mean())


def test_contrastive_loss_equals_its_formula():
    rng = np.random.default_rng(4)
    # Small embeddings: some negatives inside the margin, some outside.
    z_rgb = (0.3 * rng.standard_normal((4, 6))).astype(np.float32)
    z_bands = (0.15 * rng.standard_normal((4, 3, 6)) + z_rgb[:, None] * 0.8).astype(np.float32)
    loss, terms = gnn.contrastive_loss(jnp.asarray(z_rgb), jnp.asarray(z_bands), margin=1.0)
    pos, neg = [], []
    for i in range(4):
        for b in range(3):
            pos.append(np.sum((z_rgb[i] - z_bands[i, b]) ** 2))
            neg.append(np.linalg.norm(z_rgb[i] - z_bands[(i - 1) % 4, b]))
    expected = np.mean(pos) + np.mean(np.maximum(1.0 - np.array(neg), 0.0) ** 2)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(terms["negative"]) == pytest.approx(np.mean(neg), rel=1e-5)
    assert np.min(neg) < 1.0 < np.max(neg)  # the hinge is active for some pairs only
    single, _ = gnn.contrastive_loss(jnp.asarray(z_rgb), jnp.asarray(z_bands[:, 0]))
    expected_single = np.mean(pos[::3]) + np.mean(np.maximum(1.0 - np.array(neg[::3]), 0.0) ** 2)
    assert float(single) == pytest.approx(expected_single, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 paintings"):
        gnn.contrastive_loss(jnp.asarray(z_rgb[:1]), jnp.asarray(z_bands[:1]))


def _same_graph_batch(batch):
    """Band graphs replaced by copies of the RGB graph."""
    rgb = batch["rgb_graph"]
    bands = jax.tree.map(lambda x: np.stack([x] * 2), rgb)
    return dict(batch, band_graphs=bands)


@pytest.mark.parametrize("arch", ["gcn", "gat"])
def test_branches_share_one_parameter_tree(batch, arch):
    variables = gnn.init(jax.random.key(1), batch, arch=arch)
    assert list(variables) == ["params"] and list(variables["params"]) == ["encoder"]
    same = _maps(arch)(variables, _same_graph_batch(batch))
    np.testing.assert_allclose(np.asarray(same["per_band"]), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(same["graph_distance"]), 0.0, atol=1e-6)
    # Swapping the RGB graph and band 0 swaps their embeddings: one function, not two.
    bands = batch["band_graphs"]
    band0 = jax.tree.map(lambda x: x[0], bands)
    swapped = jax.tree.map(
        lambda r, b: np.concatenate([np.asarray(r)[None], np.asarray(b)[1:]]), batch["rgb_graph"], bands
    )
    a = _apply(arch)(variables, batch["rgb_graph"], bands, jax.random.key(0))
    b = _apply(arch)(variables, band0, swapped, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(b["nodes"][0]), np.asarray(a["nodes"][1]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(b["nodes"][1]), np.asarray(a["nodes"][0]), atol=1e-5)


@pytest.mark.parametrize("arch", ["gcn", "gat"])
def test_padding_does_not_change_real_nodes(items, batch, arch):
    n_node, n_edge, n_graph = (int(batch["rgb_graph"].nodes.shape[0]), int(batch["rgb_graph"].senders.shape[0]), 4)
    bigger = gnn.collate(items, sizes=(n_node + 77, n_edge + 130, n_graph + 3))
    variables = gnn.init(jax.random.key(3), batch, arch=arch)
    small = _apply(arch)(variables, batch["rgb_graph"], batch["band_graphs"], jax.random.key(0))
    large = _apply(arch)(variables, bigger["rgb_graph"], bigger["band_graphs"], jax.random.key(0))
    real = int(np.sum(batch["rgb_graph"].n_node[:3]))
    np.testing.assert_allclose(np.asarray(large["nodes"][:, :real]), np.asarray(small["nodes"][:, :real]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(large["graph"][:, :3]), np.asarray(small["graph"][:, :3]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(large["nodes"][:, real:]), 0.0)  # padded nodes masked
    maps_small = _maps(arch)(variables, batch)
    maps_large = _maps(arch)(variables, bigger)
    for key in maps_small:
        np.testing.assert_allclose(np.asarray(maps_large[key]), np.asarray(maps_small[key]), atol=1e-5)


def test_heatmaps_match_numpy(items, batch):
    variables = gnn.init(jax.random.key(5), batch, arch="gat")
    out = _apply("gat")(variables, batch["rgb_graph"], batch["band_graphs"], jax.random.key(0))
    maps = _maps("gat")(variables, batch)
    nodes = np.asarray(out["nodes"])
    senders, receivers = np.asarray(batch["rgb_graph"].senders), np.asarray(batch["rgb_graph"].receivers)
    alpha = np.asarray(out["edge_attention"]).mean(-1).mean(0)  # [K, E]: heads, then layers
    offset = 0
    for i, item in enumerate(items):
        n_i = int(item["rgb"].n_node[0])
        rows = slice(offset, offset + n_i)
        for b in range(3):
            diff = np.linalg.norm(nodes[1 + b, rows] - nodes[0, rows], axis=-1)
            np.testing.assert_allclose(
                np.asarray(maps["per_band"][i, ..., b]), graphs.paint(item["labels"], diff), rtol=1e-5, atol=1e-6
            )
        received = np.zeros((4, n_i))
        for e in range(len(senders)):
            if offset <= senders[e] < offset + n_i:
                assert offset <= receivers[e] < offset + n_i  # edges stay inside a painting's graph
                received[:, senders[e] - offset] += alpha[:, e]
        np.testing.assert_allclose(
            np.asarray(maps["attention_rgb"][i]), graphs.paint(item["labels"], received[0]), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            np.asarray(maps["attention"][i]), graphs.paint(item["labels"], received[1:].T), rtol=1e-4, atol=1e-6
        )
        offset += n_i
    np.testing.assert_allclose(np.asarray(maps["map"]), np.asarray(maps["per_band"]).mean(-1), rtol=1e-6)
    assert maps["per_band"].shape == (3, 64, 64, 3) and float(maps["per_band"].min()) >= 0


def test_dropout_follows_the_key(batch):
    variables = gnn.init(jax.random.key(0), batch, arch="gat")

    def run(key, train):
        return np.asarray(_apply("gat", train)(variables, batch["rgb_graph"], batch["band_graphs"], key)["graph"])

    np.testing.assert_array_equal(run(jax.random.key(1), True), run(jax.random.key(1), True))
    assert not np.allclose(run(jax.random.key(1), True), run(jax.random.key(2), True))
    np.testing.assert_array_equal(run(jax.random.key(1), False), run(jax.random.key(2), False))


@pytest.mark.parametrize("arch", ["gcn", "gat"])
def test_train_steps_lower_the_loss(batch, arch):
    tx = gnn.optimizer({"learning_rate": 3e-3})
    state = TrainState.create(gnn.init(jax.random.key(0), batch, arch=arch), tx)
    step = jax.jit(functools.partial(gnn.train_step, tx=tx, arch=arch))

    def eval_loss(params):
        out = _apply(arch)({"params": params}, batch["rgb_graph"], batch["band_graphs"], jax.random.key(0))
        return float(gnn.contrastive_loss(*gnn.embeddings(out, 3))[0])

    before = eval_loss(state.params)
    for i in range(15):
        state, metrics = step(state, batch, jax.random.key(i))
        assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert int(state.step) == 15
    assert eval_loss(state.params) < 0.8 * before


def test_optimizer_schedule():
    tx = gnn.optimizer({"decay_every_steps": 2, "learning_rate": 1.0, "weight_decay": 0.0})
    params = {"w": jnp.zeros(())}
    opt_state = tx.init(params)
    steps = []
    for _ in range(5):
        updates, opt_state = tx.update({"w": jnp.ones(())}, opt_state, params)
        steps.append(-float(updates["w"]))
    np.testing.assert_allclose(steps, [1.0, 1.0, 0.8, 0.8, 0.64], rtol=1e-4)  # Adam's first steps are lr * 1


def test_bad_batches_are_clear_errors(items, batch):
    with pytest.raises(ValueError, match="lacks"):
        gnn.init(jax.random.key(0), {"rgb_graph": batch["rgb_graph"]})
    other = dict(items[1], bands=items[1]["bands"][:2])
    with pytest.raises(ValueError, match="bands"):
        gnn.collate([items[0], other])
    wrong = dict(items[1], bands=[items[0]["bands"][0]] + items[1]["bands"][1:])
    with pytest.raises(ValueError, match="segmentation"):
        gnn.collate([items[0], wrong])
    with pytest.raises(ValueError, match="lacks 'bands'"):
        gnn.scene_graphs({"name": "x", "rgb": np.zeros((8, 8, 3))})
    with pytest.raises(ValueError, match="arch"):
        gnn.make_model("gin")
