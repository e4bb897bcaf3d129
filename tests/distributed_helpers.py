"""Shared by tests/test_distributed.py and tests/test_preemption.py: run the command line
(one process or several through launch/local.py) on the tiny config, and read back what a
workdir holds (checkpoints, logged losses)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

from xray_flax import checkpoint, detectors, steps
from xray_flax.report import plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_env(devices: int | None = None) -> dict[str, str]:
    """Environment of a training subprocess: CPU, the test session's compilation cache."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XRAY_FLAX_JAX_CACHE"] = os.environ.get("XRAY_FLAX_TEST_JAX_CACHE", os.path.join(REPO, ".pytest_cache", "jax"))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" if devices else ""
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def tiny_args(workdir: str, simulated_cache: str, detector: str = "draem", **train) -> list[str]:
    args = [
        "--config",
        f"configs/tiny.py:{detector}",
        "--workdir",
        workdir,
        f"--config.data.simulated.cache_dir={simulated_cache}",
        "--config.train.predict_test_scans=0",
        "--config.train.image_summary_every=0",
    ]
    return args + [f"--config.train.{k}={v}" for k, v in train.items()]


def run_cli(args: list[str], devices: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xray_flax.main", *args],
        cwd=REPO,
        env=cli_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_local_launcher(num_processes: int, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/local.py", f"--num_processes={num_processes}", "--", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_and_terminate(
    command: list[str], after_step: int, num_steps: int, timeout: float, sig: int = signal.SIGTERM
) -> tuple[int, str]:
    """Start `command` (a training run, from the repository root), send it `sig` once it logs
    step `after_step` of `num_steps`; (exit status, combined output)."""
    proc = subprocess.Popen(
        command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, sent = [], False
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if not sent and re.search(rf"\] train: {after_step}/{num_steps} steps", line):
                proc.send_signal(sig)
                sent = True
            if time.monotonic() > deadline:
                break
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines)
    assert sent, f"the run ended before it logged step {after_step}:\n{output[-4000:]}"
    return status, output


def latest_state(workdir: str, step: int | None = None):
    """(step, {'variables', 'opt_state'}) of a checkpoint in workdir/checkpoints (default: the
    latest), restored onto this process's first device whatever topology wrote it."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    detector = detectors.build(config)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    variables = steps.with_sharding(detector.abstract_variables(config.data.patch_size, config.data.channels), sharding)
    opt_state = steps.abstract_opt_state(detector, variables, sharding)
    manager = ocp.CheckpointManager(os.path.join(workdir, checkpoint.LATEST_DIR))
    step = manager.latest_step() if step is None else step
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(variables), opt_state=ocp.args.StandardRestore(opt_state)
        ),
    )
    manager.close()
    return step, {"variables": restored["variables"], "opt_state": restored["opt_state"]}


def logged_losses(workdir: str) -> list[float]:
    """Per-step training losses in step order (the run must log every step)."""
    losses = plots.logged_scalars(workdir, "loss")
    return [losses[s] for s in sorted(losses)]
