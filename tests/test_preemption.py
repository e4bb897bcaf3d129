"""Preemption: SIGTERM mid-run saves a checkpoint and exits 0; the same command then finishes
the run, and the result equals an uninterrupted run bit for bit (one process: per-step keys
are fold_in(seed, step) and the Grain iterator state is restored with the model)."""

from __future__ import annotations

import os
import sys

import distributed_helpers as helpers
import jax
import numpy as np
import pytest

from xray_flax.report import plots

NUM_STEPS = 40


def train_args(workdir: str, cache: str, detector: str) -> list[str]:
    return helpers.tiny_args(
        workdir,
        cache,
        detector,
        num_steps=NUM_STEPS,
        log_every=1,
        checkpoint_every=10,
        eval_every=1000,
        keep_checkpoints=2,
    )


def run_until_terminated(args: list[str], after_step: int, timeout: float = 300) -> tuple[int, str]:
    """Start training, send SIGTERM once `after_step` is logged; (exit status, output)."""
    return helpers.run_and_terminate([sys.executable, "-m", "xray_flax.main", *args], after_step, NUM_STEPS, timeout)


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["draem", "pyramid_ae"])  # the gradient-kind detectors
def test_sigterm_saves_and_the_same_command_resumes_exactly(tmp_path, detector):
    cache = str(tmp_path.parent / "simulated")
    interrupted = str(tmp_path / "interrupted")
    status, output = run_until_terminated(train_args(interrupted, cache, detector), after_step=3)
    assert status == 0, output[-4000:]
    assert "saving a checkpoint and stopping" in output
    stopped_at, _ = helpers.latest_state(interrupted)
    assert 3 <= stopped_at < NUM_STEPS, output[-4000:]
    assert not os.path.exists(os.path.join(interrupted, "metrics.json"))  # not evaluated yet

    resumed = helpers.run_cli(train_args(interrupted, cache, detector))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from step {stopped_at}" in resumed.stderr

    uninterrupted = str(tmp_path / "uninterrupted")
    reference = helpers.run_cli(train_args(uninterrupted, cache, detector))
    assert reference.returncode == 0, reference.stderr[-4000:]

    step_a, state_a = helpers.latest_state(interrupted)
    step_b, state_b = helpers.latest_state(uninterrupted)
    assert step_a == step_b == NUM_STEPS
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The loss curve of the two halves joins up into the uninterrupted one, every step logged once.
    assert sorted(plots.logged_scalars(interrupted, "loss")) == list(range(1, NUM_STEPS + 1))
    assert helpers.logged_losses(interrupted) == helpers.logged_losses(uninterrupted)
