"""The training loop: resume equals uninterrupted training, NaN handling, sharding, CLI errors.

These run the real loop on the tiny config (32-pixel patches of simulated scans).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from xray_flax import checkpoint, detectors, progress, train, workflow
from xray_flax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The gradient-kind detectors; resume and the NaN guard are the loop's, so both must hold for each.
GRADIENT_DETECTORS = ["draem", "pyramid_ae"]


def tiny_config(tmp_path, detector="draem", **train_overrides):
    config = tiny.get_config(detector)
    config.data.simulated.cache_dir = str(tmp_path.parent / "simulated")  # shared by tests of a session
    config.train.predict_test_scans = 0
    config.train.image_summary_every = 0
    for key, value in train_overrides.items():
        config.train[key] = value
    return config


def latest_params(workdir: str) -> tuple[int, dict]:
    manager = ocp.CheckpointManager(os.path.join(workdir, checkpoint.LATEST_DIR))
    step = manager.latest_step()
    restored = manager.restore(
        step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(), opt_state=ocp.args.StandardRestore())
    )
    manager.close()
    return step, {"variables": restored["variables"], "opt_state": restored["opt_state"]}


# DRAEM's resume (halted, SIGKILLed, SIGINTed, from a corrupt checkpoint) is in tests/test_faults.py.
@pytest.mark.slow  # ~45 s on 2 cores
@pytest.mark.parametrize("detector", ["pyramid_ae"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, detector):
    full = str(tmp_path / "full")
    workflow.train_and_evaluate(tiny_config(tmp_path, detector), full)

    split = str(tmp_path / "split")
    assert workflow.train_and_evaluate(tiny_config(tmp_path, detector, halt_after_steps=3), split) is None
    step, _ = latest_params(split)
    assert step == 3
    workflow.train_and_evaluate(tiny_config(tmp_path, detector), split)  # resumes from step 3

    step_a, state_a = latest_params(full)
    step_b, state_b = latest_params(split)
    assert step_a == step_b == 6
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("detector", GRADIENT_DETECTORS)
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, detector):
    real = pipeline.make_train_iterator

    class PoisonAfter:
        """The real iterator, but every batch after the 4th is NaN (a corrupted input)."""

        def __init__(self, iterator):
            self.iterator, self.count = iterator, 0

        def __next__(self):
            batch = dict(next(self.iterator))
            self.count += 1
            if self.count > 4:
                batch["image"] = np.full_like(batch["image"], np.nan)
            return batch

        def __iter__(self):
            return self

        # grain's checkpoint handler stores non-DatasetIterator state as bytes.
        def get_state(self):
            return json.dumps(self.iterator.get_state()).encode()

        def set_state(self, state):
            self.iterator.set_state(json.loads(state))

    monkeypatch.setattr(pipeline, "make_train_iterator", lambda *a, **k: PoisonAfter(real(*a, **k)))
    workdir = str(tmp_path / "nan")
    config = tiny_config(tmp_path, detector, log_every=1, eval_every=100, checkpoint_every=3)
    with pytest.raises(train.TrainingDivergedError, match="non-finite loss.*last good checkpoint is step 3"):
        workflow.train_and_evaluate(config, workdir)
    step, state = latest_params(workdir)
    assert step == 3
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


SHARDING_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import dataclasses, functools, jax, jax.numpy as jnp, numpy as np, optax
    from configs import tiny
    from xray_flax import detectors, parallel, steps
    from xray_flax.detectors.draem import network as draem_model, steps as draem_steps
    from xray_flax.synthesis import SynthesisSpec, load_texture_bank

    config = tiny.get_config()
    model = draem_model.build_model(config.model, 1)
    spec = SynthesisSpec.from_config(config.synthesis, 1)
    size = config.data.patch_size
    images = np.random.default_rng(0).random((8, size, size, 1)).astype(np.float32)

    tx = optax.sgd(0.05)
    detector = dataclasses.replace(
        detectors.build(config), optimizer=tx,
        train_step=functools.partial(draem_steps.train_step, model=model, tx=tx, spec=spec, loss_config=config.loss))

    def run(n_devices):
        # Losses of 3 steps and the parameters after the first one, through the loop's own
        # compiled step (NaN guard, shardings).
        config.mesh.data = n_devices
        mesh = parallel.make_mesh(config.mesh)
        textures = parallel.replicate(jnp.asarray(load_texture_bank(config.synthesis, size, 1)), mesh)
        state = steps.init_train_state(detector, jax.random.key(0), size, 1, mesh)
        step = steps.compile_train_step(detector, mesh, donate=False)
        losses, first = [], None
        for i in range(3):
            batch = parallel.global_batch({"image": images}, mesh)
            state, m = step(state, batch, jax.random.key(i), textures)
            losses.append(float(m["loss"]))
            first = first or [np.asarray(x) for x in jax.tree.leaves(state.variables)]
        return losses, first

    assert jax.device_count() == 4
    # Plain SGD, because Adam turns the float noise of exactly-zero gradients (conv biases
    # before BatchNorm) into lr-sized steps of random sign, on one device as on four. After
    # the first step the parameters of this tiny network drift apart chaotically from float
    # noise (reductions run in another order on 4 devices), so they are compared after
    # one step and the losses over three. Per-device (unsynchronised) BatchNorm statistics
    # would change the loss at the 1e-2 level and the parameters far beyond these tolerances.
    l1, p1 = run(1)
    l4, p4 = run(4)
    np.testing.assert_allclose(l1, l4, rtol=1e-4)
    np.testing.assert_allclose(l1[0], l4[0], rtol=1e-6)
    for a, b in zip(p1, p4):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    print("SHARDING OK", l1, l4)
""")


def test_train_step_on_4_devices_equals_1_device():
    result = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "SHARDING OK" in result.stdout


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "xray_flax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_unknown_config_key_is_a_clear_error(tmp_path):
    result = run_cli("--config", "configs/tiny.py", "--workdir", str(tmp_path), "--config.train.num_stepz=3")
    assert result.returncode != 0
    assert "num_stepz" in result.stderr


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
    result = run_cli("--config", "configs/tiny.py", "--workdir", str(tmp_path / "empty"), "--mode", "evaluate")
    assert result.returncode != 0
    assert "no checkpoint in" in result.stderr and "--mode train" in result.stderr


def test_a_halted_fit_resumes_after_its_last_batch_and_equals_an_uninterrupted_fit(tmp_path, caplog):
    """Fit-kind detectors save their partial state (fit_partial/) and resume from it, not from zero."""
    halted = str(tmp_path / "halted")
    assert workflow.train_and_evaluate(tiny_config(tmp_path, "highpass", halt_after_steps=5), halted) is None
    assert sorted(int(d) for d in os.listdir(os.path.join(halted, checkpoint.FIT_DIR)) if d.isdigit()) == [3, 5]
    assert not os.path.exists(os.path.join(halted, checkpoint.BEST_DIR, "1"))
    with caplog.at_level("INFO", logger="xray_flax.train"):
        resumed = workflow.train_and_evaluate(tiny_config(tmp_path, "highpass"), halted)
    assert "resuming the fit of highpass after 5 of" in caplog.text
    whole = workflow.train_and_evaluate(tiny_config(tmp_path, "highpass"), str(tmp_path / "whole"))
    for key in whole["test"]:
        if key != "seconds_per_patch":
            assert resumed["test"][key] == whole["test"][key], key
    # A partial fit of another batch size is not silently mixed in.
    again = str(tmp_path / "again")
    workflow.train_and_evaluate(tiny_config(tmp_path, "highpass", halt_after_steps=2), again)
    config = tiny_config(tmp_path, "highpass")
    config.train.batch_size = 8
    with pytest.raises(checkpoint.CheckpointError, match="partial fit with global batch 4"):
        workflow.train_and_evaluate(config, again)


def test_fit_updates_are_split_on_a_cpu_so_that_a_stop_is_served_within_seconds():
    """On a CPU a fit batch of more than train.CPU_FIT_UPDATE_PIXELS pixels is split into smaller
    updates (one update is one jitted call a SIGTERM cannot interrupt); a multiple of the devices."""

    class Mesh:
        def __init__(self, n):
            self.devices = np.zeros(n)

    config = tiny.get_config("highpass")
    config.train.batch_size = 32
    for patch, devices, expected in ((64, 1, 32), (256, 1, 2), (512, 1, 1), (256, 4, 4), (128, 4, 8)):
        config.data.patch_size = patch
        assert train.fit_batch_size(config, Mesh(devices)) == expected, (patch, devices)
    config.data.patch_size = 256
    config.train.fit_max_update_pixels = 256 * 256 * 8  # set explicitly: used on any platform
    assert train.fit_batch_size(config, Mesh(1)) == 8
    config.train.fit_max_update_pixels = -1  # no limit
    config.data.patch_size = 512
    assert train.fit_batch_size(config, Mesh(1)) == 32


# patch_nn sizes its fit state (the coreset buffer) by the update, padim does not.
@pytest.mark.parametrize("detector", ["padim", "patch_nn"])
def test_a_fit_in_split_updates_resumes_and_equals_an_uninterrupted_one(tmp_path, caplog, detector):
    """Updates of 2 tiles (train.batch_size 4): halted after 3 updates, resumed, equal to one whole run."""
    small = {"fit_max_update_pixels": 2 * 32 * 32}
    halted = str(tmp_path / "halted")
    with caplog.at_level("INFO", logger="xray_flax.train"):
        assert workflow.train_and_evaluate(tiny_config(tmp_path, detector, halt_after_steps=3, **small), halted) is None
    assert "batches of 2 (train.batch_size 4 split" in caplog.text
    assert 3 in [int(d) for d in os.listdir(os.path.join(halted, checkpoint.FIT_DIR)) if d.isdigit()]
    resumed = workflow.train_and_evaluate(tiny_config(tmp_path, detector, **small), halted)
    whole = workflow.train_and_evaluate(tiny_config(tmp_path, detector, **small), str(tmp_path / "whole"))
    for key in whole["test"]:
        if key != "seconds_per_patch":
            assert resumed["test"][key] == whole["test"][key], key


def test_sigterm_during_a_256px_fit_stops_within_seconds_with_the_partial_fit_saved(tmp_path, monkeypatch):
    """A 256-px fit in batches of 8 runs as updates of 2 tiles on a CPU; SIGTERM during the second
    update is served after it: the partial fit is saved and the run returns within seconds (a
    preemption gives ~30 s). benchmarks/bench_sigterm.py --fit_config measures it on PatchCore."""
    config = tiny_config(tmp_path, "patch_nn")
    # Clean scans (training tiles must be clean: at 256 px most easy anomalies would fall in one).
    config.data.simulated.update({"height": 512, "width": 512, "paint_losses": 0, "white_spots": 0})
    config.data.simulated.update({"nails": 0, "foreign_objects": 0})
    config.data.patch_size = config.data.stride = 256
    config.data.background.rule = "none"  # every tile of the 3 training scans: 12 tiles
    config.train.batch_size = 8
    config.model.stride = 16  # 16 x 16 patches per tile
    real_build = detectors.build
    signalled = {}

    def build_with_signal(cfg):
        detector = real_build(cfg)
        calls = []

        def fit_update(state, variables, batch):
            calls.append(len(batch["valid"]))
            if len(calls) == 2:
                signalled["at"] = time.monotonic()
                os.kill(os.getpid(), signal.SIGTERM)
            return detector.fit_update(state, variables, batch)

        signalled["updates"] = calls
        return dataclasses.replace(detector, fit_update=fit_update)

    monkeypatch.setattr(detectors, "build", build_with_signal)
    workdir = str(tmp_path / "fit256")
    assert workflow.train_and_evaluate(config, workdir) is None
    assert time.monotonic() - signalled["at"] < 30
    assert set(signalled["updates"]) == {2}  # 2 x 256^2 pixels = 131,072: one update on a CPU
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, checkpoint.FIT_DIR)) if d.isdigit()) == [2]


def test_a_fit_over_its_memory_budget_stops_with_its_partial_state_saved(tmp_path, caplog, monkeypatch):
    """config.train.memory_budget_gb: the allocated state is checked before the first batch, the
    measured RSS after every batch (shown in the progress lines); over budget, one error and the
    partial fit is kept, so raising the budget resumes it."""
    config = tiny_config(tmp_path, "padim")
    config.train.memory_budget_gb = 1e-6  # below the state alone
    with pytest.raises(train.MemoryBudgetError, match="fit state .* alone exceed config.train.memory_budget_gb"):
        workflow.train_and_evaluate(config, str(tmp_path / "tiny_budget"))

    workdir = str(tmp_path / "rss")
    config.train.memory_budget_gb = 1000.0
    monkeypatch.setattr(progress, "rss_bytes", lambda: int(2000e9))  # as if the process had grown past it
    with caplog.at_level("INFO"), pytest.raises(train.MemoryBudgetError, match="uses 2000.00 GB resident memory"):
        workflow.train_and_evaluate(config, workdir)
    assert [d for d in os.listdir(os.path.join(workdir, checkpoint.FIT_DIR)) if d.isdigit()] == ["1"]
    monkeypatch.undo()
    with caplog.at_level("INFO"):
        assert workflow.train_and_evaluate(config, workdir) is not None
    assert "resuming the fit of padim after 1 of" in caplog.text and "peak RSS" in caplog.text
    assert re.search(r"fit padim: \d+/\d+ tiles .* rss \d+\.\d\d GB", caplog.text)  # the progress line
