"""Multi-process and multi-device training: 2 real processes on localhost (jax.distributed,
gloo CPU collectives, launch/local.py) train like 1 process, evaluate like 1 process, stop on
a preemption notice and resume; 1, 2 and 8 simulated devices give the same loss curve.

How "the same" is judged: both runs see identical global batches and keys (the pipeline
slices the same global batches for any process count), so before the first update the two
runs compute the same function up to reduction order: the first loss must agree to 1e-6
(per-device, unsynchronised BatchNorm statistics move it by ~1e-2). Adam then turns float
noise into lr-sized steps of random sign wherever a gradient is exactly zero in exact
arithmetic (conv biases before BatchNorm), so later parameters drift apart chaotically
while the losses stay within ~3e-4; the test compares the loss curve, the parameters after
the first step, and how far the final parameters differ relative to how far training moved
them.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time

import distributed_helpers as helpers
import jax
import numpy as np
import pytest

from xray_flax import parallel
from xray_flax.data import config as data_config_lib
from xray_flax.data import pipeline
from xray_flax.report import plots

NUM_STEPS = 8
LEARNING_RATE = 1e-3  # configs/tiny.py


def train_args(workdir: str, cache: str, detector: str = "draem") -> list[str]:
    # Every step logged and kept, validation (the multi-process Inferencer) half way.
    return helpers.tiny_args(
        workdir,
        cache,
        detector,
        num_steps=NUM_STEPS,
        log_every=1,
        checkpoint_every=1,
        keep_checkpoints=NUM_STEPS,
        eval_every=NUM_STEPS // 2,
    )


# The gradient-kind detectors: the multi-process loop is shared, so it must hold for each.
@pytest.fixture(scope="module", params=["draem", "pyramid_ae"])
def one_process_run(request, tmp_path_factory):
    cache = str(tmp_path_factory.getbasetemp() / "simulated")
    workdir = str(tmp_path_factory.mktemp(f"one_process_{request.param}"))
    result = helpers.run_cli(train_args(workdir, cache, request.param))
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, cache, request.param


# ------------------------------------------------------------------------------------------
# Fast checks.


def test_global_batches_do_not_depend_on_the_process_count(tmp_path):
    c = data_config_lib.defaults()
    c.simulated.cache_dir = str(tmp_path / "sim")
    c.simulated.n_scans, c.simulated.height, c.simulated.width = 5, 256, 224
    c.patch_size, c.stride = 32, 32
    splits = pipeline.prepare_splits(c, None)
    one = pipeline.make_train_iterator(splits, c, batch_size=6, seed=0)
    shards = [
        pipeline.make_train_iterator(splits, c, batch_size=2, seed=0, process_index=p, process_count=3)
        for p in range(3)
    ]
    for _ in range(12):  # past the end of the first epoch
        expected = next(one)["image"]
        assembled = np.concatenate([next(s)["image"] for s in shards])  # process order, as the mesh has it
        np.testing.assert_array_equal(assembled, expected)
    # Each process restores its own iterator state and goes on with the same global batches.
    states = [s.get_state() for s in shards]
    expected = [next(one)["image"] for _ in range(3)]
    fresh = [
        pipeline.make_train_iterator(splits, c, batch_size=2, seed=0, process_index=p, process_count=3)
        for p in range(3)
    ]
    for s, state in zip(fresh, states):
        s.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(np.concatenate([next(s)["image"] for s in fresh]), e)
    with pytest.raises(ValueError, match="process_index=3"):
        pipeline.make_train_iterator(splits, c, batch_size=2, seed=0, process_index=3, process_count=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_processes": 2}, "go together"),
        ({"coordinator_address": "127.0.0.1:1234", "num_processes": 2}, "go together"),
        ({"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 2}, "0..1"),
    ],
)
def test_incomplete_multi_process_flags_are_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parallel.initialize_distributed(**kwargs)


def test_single_process_without_a_cluster_does_not_start_jax_distributed(monkeypatch):
    for var in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize_distributed() is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert parallel.initialize_distributed() is False


# ------------------------------------------------------------------------------------------
# Real runs.


def start_two_processes_and_terminate(args: list[str], after_step: int, timeout: float = 240) -> tuple[int, str]:
    """launch/local.py with 2 processes; SIGTERM to the launcher once `after_step` is logged."""
    return helpers.run_and_terminate(
        [sys.executable, "launch/local.py", "--num_processes=2", "--", *args], after_step, NUM_STEPS, timeout
    )


def flat_params(state) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state["variables"]["params"])])


@pytest.mark.slow
def test_two_processes_preempted_and_resumed_train_like_one_process(one_process_run, tmp_path):
    reference, cache, detector = one_process_run
    workdir = str(tmp_path / "two_processes")
    status, output = start_two_processes_and_terminate(train_args(workdir, cache, detector), after_step=2)
    assert status == 0, output[-4000:]
    # Both processes met at the coordination service's preemption sync point and saved one step.
    stops = re.findall(r"preemption notice at step (\d+)", output)
    assert len(stops) == 2 and stops[0] == stops[1], output[-4000:]
    stopped_at = int(stops[0])
    assert 2 <= stopped_at < NUM_STEPS
    assert helpers.latest_state(workdir)[0] == stopped_at
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    assert len(re.findall(r"\] train: 1/", output)) == 1, "only process 0 logs progress"

    resumed = helpers.run_local_launcher(2, train_args(workdir, cache, detector))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from step {stopped_at}" in resumed.stderr
    assert "2 device(s) in 2 process(es)" in resumed.stderr

    losses_1 = helpers.logged_losses(reference)
    losses_2 = helpers.logged_losses(workdir)
    assert len(losses_1) == len(losses_2) == NUM_STEPS
    np.testing.assert_allclose(losses_2[0], losses_1[0], rtol=1e-6)
    np.testing.assert_allclose(losses_2, losses_1, rtol=2e-3)  # measured: <= 3e-4

    # After one step: equal wherever the gradient is not float noise; elsewhere Adam's first
    # step is +-lr (see the module docstring).
    p1 = flat_params(helpers.latest_state(reference, step=1)[1])
    p2 = flat_params(helpers.latest_state(workdir, step=1)[1])
    difference = np.abs(p1 - p2)
    assert difference.max() <= 2 * LEARNING_RATE * 1.01
    assert np.mean(difference <= 1e-6) > 0.95, np.mean(difference <= 1e-6)

    # At the end: the runs differ by far less than training moved the parameters.
    start = flat_params(helpers.latest_state(reference, step=1)[1])
    end_1 = flat_params(helpers.latest_state(reference)[1])
    end_2 = flat_params(helpers.latest_state(workdir)[1])
    assert np.linalg.norm(end_2 - end_1) < 0.5 * np.linalg.norm(end_1 - start)

    # Summaries come from process 0 only: one event file per run (stopped, resumed).
    assert len(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))) == 2
    assert not glob.glob(os.path.join(workdir, "*.tmp*"))  # write_text_atomic: name.<pid>.tmp.ext
    # Evaluation ran on process 0's files only once, after the resumed run.
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f)["step"] is not None
    assert plots.logged_scalars(workdir, "val_roc_auc")


@pytest.mark.slow
def test_evaluation_in_two_processes_equals_one_process(one_process_run, tmp_path):
    reference, _, _ = one_process_run
    output_dir = str(tmp_path / "evaluated_by_two")
    result = helpers.run_local_launcher(2, ["--mode", "evaluate", "--workdir", reference, "--output_dir", output_dir])
    assert result.returncode == 0, result.stderr[-4000:]
    with open(os.path.join(reference, "metrics.json")) as f:
        one = json.load(f)
    with open(os.path.join(output_dir, "metrics.json")) as f:
        two = json.load(f)
    assert two["step"] == one["step"]
    for split in ("val", "test"):
        for key, value in one[split].items():
            if isinstance(value, float) and key != "seconds_per_patch":
                assert two[split][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (split, key)


@pytest.mark.slow
def test_loss_curve_is_the_same_on_1_2_and_8_simulated_devices(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_scaling.py",
            "--simulate=8",
            "--devices=1,2,8",
            "--global_batch=8",
            "--check",
            "--warmup=1",
            "--steps=3",
            f"--json={tmp_path / 'scaling.json'}",
        ],
        cwd=helpers.REPO,
        env=helpers.cli_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stdout.count(": OK (") == 2, result.stdout
    with open(tmp_path / "scaling.json") as f:
        runs = json.load(f)["results"]
    assert [r["devices"] for r in runs] == [1, 2, 8] and all(len(r["losses"]) == 4 for r in runs)


@pytest.mark.slow
def test_a_failing_multi_process_run_exits_with_an_error_instead_of_hanging(tmp_path):
    start = time.monotonic()
    result = helpers.run_local_launcher(
        2, ["--mode", "evaluate", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "empty")], timeout=120
    )
    assert result.returncode != 0
    assert "no checkpoint in" in result.stderr
    assert time.monotonic() - start < 100  # not JAX's shutdown barrier or heartbeat timeout
