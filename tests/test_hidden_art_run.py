"""The hidden-art job (xray_flax/hidden_art/: workflow, train, evaluate) end to end on tiny simulated paintings, for
every registered method, and through the command line: maps, metrics, gallery, checkpoints,
resume equal to an uninterrupted run, a damaged checkpoint refused."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from xray_flax import errors
from xray_flax.checkpoint import Checkpointer, CheckpointError, CorruptCheckpointError
from xray_flax.hidden_art import evaluate, methods, paintings, train, workflow
from xray_flax.train_state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"plain": "hidden_plain", "regression": "hidden_regression", "siamese_conv": "hidden_siamese_conv"}
CONFIGS["polynomial"] = "hidden_polynomial"
CONFIGS.update({"gcn": "hidden_gcn", "gat": "hidden_gat"})


def tiny(name: str, cache: str, steps: int = 2):
    config = importlib.import_module(f"configs.{CONFIGS[name]}").get_config()
    config.data.cache_dir = cache
    config.data.simulation.update({"n_scenes": 5, "n_val": 2, "size": 64})
    config.train.num_steps = steps if config.train.num_steps else 0
    config.train.batch_size = 2
    config.train.crop = 48 if config.train.crop else 0
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    if "n_segments" in config.model:
        config.model.n_segments = 60
    if "pixels_per_step" in config.model:
        config.model.pixels_per_step = 1024
    return config


def test_every_registered_method_has_a_config_here():
    assert set(CONFIGS) == set(methods.REGISTRY)


# The convolutional Siamese and the GAT take ~25-40 s each on 2 cores: CI runs the other methods
# (the plain difference, the regression, the GCN: the same run code, the graph path included);
# -m slow runs all.
CI_METHODS = ("plain", "polynomial", "regression", "gcn")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in CI_METHODS else pytest.mark.slow) for n in sorted(CONFIGS)]
)
def test_train_and_evaluate_writes_maps_metrics_and_gallery(name, tmp_path):
    config = tiny(name, str(tmp_path / "cache"))
    summary = workflow.train_and_evaluate(config, str(tmp_path / "w"))
    out = tmp_path / "w" / evaluate.OUTPUT_DIR
    saved = json.loads((out / "results.json").read_text())
    assert saved["method"] == name and len(saved["paintings"]) == 2
    assert saved["mean"]["auroc_count"] == 2 and summary["mean"] == saved["mean"]
    assert saved["provenance"]["config_sha256"] and saved["provenance"]["versions"]["jax"]  # provenance.py
    assert (out / "gallery.html").read_text().count("data:image/png;base64,") >= 2 * 9
    for row in saved["paintings"]:
        assert (out / f"{row['painting']}_{name}_map.png").exists()
        overlay = np.asarray(Image.open(out / f"{row['painting']}_{name}_overlay.png"))
        collage = np.asarray(Image.open(out / f"{row['painting']}_{name}_collage.png"))
        assert overlay.shape == (64, 64, 3) and collage.shape == (64, 64) and collage.max() <= 8
        arrays = np.load(out / f"{row['painting']}_{name}_outputs.npz")
        # The attention each superpixel receives: the contrastive GAT's (configs/hidden_gat_contrastive.py);
        # the node-regression GAT (configs/hidden_gat.py) maps residuals only.
        attention = name == "gat" and config.model.get("objective") == "contrastive"
        assert arrays["per_band"].shape == (64, 64, 8) and ("attention" in arrays) == attention
    if attention:  # the attention each superpixel receives has its own gallery columns
        assert "gat: attention" in (out / "gallery.html").read_text()
    # The AUROC written is the method's own map scored against the true mask (recomputed here).
    method = methods.build(config)
    scenes = paintings.load_split(config, "val")
    variables = train.trained_variables(config, str(tmp_path / "w"), method, scenes[0])
    for scene, row in zip(scenes, saved["paintings"]):
        m = np.asarray(
            jax.device_get(method.dissimilarity(variables, method.collate([method.item(scene)], None))["map"])
        )
        assert row["auroc"] == pytest.approx(roc_auc_score(scene["hidden_mask"].ravel(), m[0].ravel()), abs=1e-6)
    if method.trained:
        assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["2"]


def _params(workdir, config):
    method = methods.build(config)
    ckpt = Checkpointer(workdir)
    state = train._restore(ckpt, _template(config, method))
    ckpt.close()
    return jax.device_get(state.params), int(state.step)


def _template(config, method):
    scenes = paintings.load_split(config, "train")
    first = method.collate([method.item(s) for s in scenes[:2]], None)
    return TrainState.create(method.init(jax.random.key(0), first), method.optimizer)


def test_resumed_training_equals_uninterrupted(tmp_path):
    cache = str(tmp_path / "cache")
    straight = tiny("regression", cache, steps=4)
    train.train(straight, str(tmp_path / "a"), methods.build(straight), paintings.load_split(straight, "train"))
    first = tiny("regression", cache, steps=2)
    train.train(first, str(tmp_path / "b"), methods.build(first), paintings.load_split(first, "train"))
    train.train(straight, str(tmp_path / "b"), methods.build(straight), paintings.load_split(straight, "train"))
    a, step_a = _params(str(tmp_path / "a"), straight)
    b, step_b = _params(str(tmp_path / "b"), straight)
    assert step_a == step_b == 4
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_damaged_checkpoint_is_refused_naming_it(tmp_path):
    config = tiny("regression", str(tmp_path / "cache"), steps=2)
    workdir = str(tmp_path / "w")
    train.train(config, workdir, methods.build(config), paintings.load_split(config, "train"))
    step_dir = os.path.join(workdir, "checkpoints", "2")
    data_files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs if "ocdbt" not in d and "d" in f]
    target = max((p for p in data_files if os.path.getsize(p) > 64), key=os.path.getsize)
    blob = bytearray(open(target, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(target, "wb").write(bytes(blob))
    with pytest.raises(CorruptCheckpointError, match="checkpoints/2"):
        train.train(config, workdir, methods.build(config), paintings.load_split(config, "train"))


def test_evaluate_without_a_checkpoint_says_so_and_trains_nothing(tmp_path):
    config = tiny("regression", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="no checkpoint in .*checkpoints: train first"):
        evaluate.evaluate(config, str(tmp_path / "w"))
    assert not os.listdir(tmp_path / "w" / "checkpoints")


@pytest.mark.slow  # three subprocesses, ~25 s on 2 cores; the run code is tested in-process above
def test_command_line_train_then_evaluate_from_the_workdir(tmp_path):
    workdir, cache = str(tmp_path / "w"), str(tmp_path / "cache")
    common = [f"--workdir={workdir}", f"--config.data.cache_dir={cache}"]
    small = [
        "--config.data.simulation.n_scenes=4",
        "--config.data.simulation.n_val=1",
        "--config.data.simulation.size=64",
    ]

    def cli(*args):
        result = subprocess.run(
            [sys.executable, "-m", "xray_flax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    trained = cli("--config", "configs/hidden_plain.py", *common, *small)
    assert "[plain] validation mean" in trained.stdout
    before = json.loads(open(os.path.join(workdir, evaluate.OUTPUT_DIR, "results.json")).read())
    evaluated = cli("--mode", "evaluate", *common, f"--output_dir={tmp_path / 'again'}")
    again = json.loads(open(os.path.join(tmp_path, "again", evaluate.OUTPUT_DIR, "results.json")).read())
    assert "[plain] wrote" in evaluated.stdout and again["paintings"] == before["paintings"]


def test_a_non_finite_step_stops_the_run_and_leaves_the_last_checkpoint_finite(tmp_path):
    config = tiny("regression", str(tmp_path / "cache"), steps=4)
    method = methods.build(config)

    def poisoned(state, batch, key):
        # Steps 3 and 4 (traced once, chosen on the device by the step counter) give NaN.
        new_state, metrics = method.train_step(state, batch, key)
        bad = state.step >= 2
        nan = jax.numpy.where(bad, jax.numpy.nan, 0.0)
        new_state = new_state.replace(params=jax.tree.map(lambda p: p + nan, new_state.params))
        return new_state, {**metrics, "loss": metrics["loss"] + nan, "grad_norm": metrics["grad_norm"] + nan}

    workdir = str(tmp_path / "w")
    with pytest.raises(
        errors.TrainingDivergedError, match=r"at step 3 .*last good checkpoint: step 2 in .*checkpoints"
    ):
        train.train(
            config, workdir, dataclasses.replace(method, train_step=poisoned), paintings.load_split(config, "train")
        )
    params, step = _params(workdir, config)
    assert step == 2 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_sigterm_saves_a_checkpoint_and_the_rerun_equals_an_uninterrupted_run(tmp_path):
    cache = str(tmp_path / "cache")
    config = tiny("regression", cache, steps=4)
    config.train.checkpoint_every = 4
    train.train(config, str(tmp_path / "a"), methods.build(config), paintings.load_split(config, "train"))
    method = methods.build(config)
    batches = []

    def collate_then_terminate(items, sizes):
        batches.append(1)
        if len(batches) == 3:  # the batch of step 2 (after the init's batch and step 1's)
            os.kill(os.getpid(), signal.SIGTERM)
        return method.collate(items, sizes)

    interrupted = dataclasses.replace(method, collate=collate_then_terminate)
    workdir = str(tmp_path / "b")
    assert train.train(config, workdir, interrupted, paintings.load_split(config, "train")) is None
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    train.train(config, workdir, method, paintings.load_split(config, "train"))
    a, step_a = _params(str(tmp_path / "a"), config)
    b, step_b = _params(workdir, config)
    assert step_a == step_b == 4
    jax.tree.map(np.testing.assert_array_equal, a, b)
