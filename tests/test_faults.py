"""Faults lose nothing: kills at any point, corrupt checkpoint bytes, a full disk, two jobs on one
workdir. Each case ends in a resumed run whose parameters equal an uninterrupted run's bit for
bit, or in one clear error naming the file; never a stuck workdir or a silently wrong result.

The uninterrupted reference is trained once per session (in process); the faulty runs are
subprocesses of `python -m xray_flax.main` (through tests/fault_injection.py for kills
inside checkpoint writes), so a SIGKILL leaves exactly what it would leave for a user.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import distributed_helpers as helpers
import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from xray_flax import checkpoint, evaluate, files, predict, scoring, workdir_lock, workflow
from xray_flax.data import pipeline, readers

NUM_STEPS = 6
TRAIN = {"num_steps": NUM_STEPS, "checkpoint_every": 2, "eval_every": 2, "log_every": 1, "keep_checkpoints": 3}


def tiny_config(cache: str, **overrides):
    config = tiny.get_config("draem")
    config.data.simulated.cache_dir = cache
    config.train.predict_test_scans = 0
    config.train.image_summary_every = 0
    for key, value in {**TRAIN, **overrides}.items():
        config.train[key] = value
    return config


def cli_args(workdir: str, cache: str, **overrides) -> list[str]:
    return helpers.tiny_args(workdir, cache, "draem", **{**TRAIN, **overrides})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("simulated"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    """(workdir, final state) of an uninterrupted run."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    workflow.train_and_evaluate(tiny_config(cache), workdir)
    return workdir, helpers.latest_state(workdir)


def assert_same_state(workdir: str, reference) -> None:
    step, state = helpers.latest_state(workdir)
    ref_step, ref_state = reference[1]
    assert step == ref_step == NUM_STEPS
    leaves, ref_leaves = jax.tree.leaves(state), jax.tree.leaves(ref_state)
    assert len(leaves) == len(ref_leaves)
    for a, b in zip(leaves, ref_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert os.path.exists(os.path.join(workdir, "metrics.json"))


def run_with_fault(args: list[str], site: str, n: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(helpers.REPO, "tests", "fault_injection.py"), site, str(n), "--", *args],
        cwd=helpers.REPO,
        env=helpers.cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def kill_after(args: list[str], step: int, delay: float) -> str:
    """SIGKILL a training run `delay` seconds after it logs `step`; its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "xray_flax.main", *args],
        cwd=helpers.REPO,
        env=helpers.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(rf"\] train: {step}/{NUM_STEPS} steps", line):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    return "".join(lines)


def test_sigkill_at_any_point_then_the_same_command_resumes_bit_identically(tmp_path, cache, reference):
    """One workdir, stopped again and again (SIGKILL inside a checkpoints/ write after best/ of
    the same step was kept - the case that used to stick the workdir for good -, SIGKILL inside
    a best/ write, Ctrl-C, SIGKILL at a random instant), resumed by the same command each time."""
    workdir = str(tmp_path / "killed")
    args = cli_args(workdir, cache)
    # best/2 is saved (and waited for) before checkpoints/2.
    first = run_with_fault(args, "finalize@checkpoints", 1)  # checkpoints/2 never published, best/2 kept
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    # (checkpoints/ are written asynchronously: best/4 may have replaced best/2 meanwhile)
    assert any(name.isdigit() for name in os.listdir(os.path.join(workdir, checkpoint.BEST_DIR)))
    assert not any(name.isdigit() for name in os.listdir(os.path.join(workdir, checkpoint.LATEST_DIR)))
    second = run_with_fault(args, "tmpdir@best", 2)  # killed inside the best/4 write
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    assert "removing" in second.stderr and "newer than the resume point" in second.stderr
    # Ctrl-C: a checkpoint at the next step, a clean exit, no traceback.
    status, output = helpers.run_and_terminate(
        [sys.executable, "-m", "xray_flax.main", *args], 3, NUM_STEPS, timeout=300, sig=signal.SIGINT
    )
    assert status == 0 and "received Ctrl-C: saving a checkpoint" in output and "Traceback" not in output, output
    assert helpers.latest_state(workdir)[0] in (3, 4)
    # At a random instant after step 5: in the last step, the last checkpoint writes or the evaluation.
    rng = random.Random(16)
    kill_after(args, step=5, delay=rng.uniform(0.0, 1.0))
    final = helpers.run_cli(args)
    assert final.returncode == 0, final.stderr[-4000:]
    assert_same_state(workdir, reference)
    # Nothing half-written is left anywhere.
    for folder in (checkpoint.LATEST_DIR, checkpoint.BEST_DIR):
        assert all(name.isdigit() for name in os.listdir(os.path.join(workdir, folder)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "site,n", [("finalize@best", 1), ("tmpdir@checkpoints", 1), ("finalize@best", 3), ("finalize@checkpoints", 3)]
)
def test_sigkill_inside_each_checkpoint_write(tmp_path, cache, reference, site, n):
    workdir = str(tmp_path / "killed")
    args = cli_args(workdir, cache)
    killed = run_with_fault(args, site, n)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    final = helpers.run_cli(args)
    assert final.returncode == 0, final.stderr[-4000:]
    assert_same_state(workdir, reference)


def flip_bytes(step_dir: str) -> str:
    """Invert 64 bytes in the middle of the largest array file of a checkpoint step; its path."""
    candidates = []
    for root, _, names in os.walk(os.path.join(step_dir, "variables")):
        for name in names:
            path = os.path.join(root, name)
            if not name.endswith((".json", "_METADATA")) and "metadata" not in name:
                candidates.append((os.path.getsize(path), path))
    size, path = max(candidates)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        chunk = bytearray(f.read(64))
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return path


def test_flipped_bytes_in_best_are_an_error_naming_the_checkpoint(tmp_path, cache, reference):
    workdir = str(tmp_path / "copy")
    shutil.copytree(reference[0], workdir)
    best = os.path.join(workdir, checkpoint.BEST_DIR)
    (step,) = os.listdir(best)
    flip_bytes(os.path.join(best, step))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(os.path.join(best, step))):
        evaluate.evaluate(tiny_config(cache), workdir)
    scan = pipeline.prepare_splits(tiny_config(cache).data, workdir).test[0].path
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(os.path.join(best, step))):
        predict.predict(tiny_config(cache), workdir, [scan], str(tmp_path / "predictions"))
    assert not os.path.exists(tmp_path / "predictions" / os.path.splitext(os.path.basename(scan))[0])


def test_non_finite_maps_stop_the_evaluation_naming_the_tile(tmp_path, cache, reference):
    config = tiny_config(cache)
    splits = pipeline.prepare_splits(config.data, reference[0])

    class NaNAfterFirstBatch:
        batch_size = 8
        calls = 0

        def __call__(self, images):
            self.calls += 1
            maps = np.zeros(images.shape[:3], np.float32)
            if self.calls == 2:
                maps[3, 5, 7] = np.nan
            return {"map": maps, "score": maps.reshape(len(maps), -1).max(axis=1)}

    with pytest.raises(scoring.NonFiniteScoresError, match=r"NaN/Inf for finite input, tile y=\d+ x=\d+ of .*scan"):
        scoring.score_split(NaNAfterFirstBatch(), splits, "val", config)


def test_a_bad_validation_image_fails_before_step_0(tmp_path, cache):
    """Found by the checks of every split before training, not at the first validation."""
    normal, abnormal = tmp_path / "normal", tmp_path / "abnormal"
    normal.mkdir(), abnormal.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(normal / f"n{i}.png")
    for i in range(2):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(abnormal / f"a{i}.png")
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(abnormal / "small.png")  # val or test, never train
    config = tiny_config(cache)
    config.data.source = "folder"
    config.data.root = str(tmp_path)
    config.data.folder.normal_dir = "normal"
    config.data.folder.abnormal_dir = "abnormal"
    workdir = str(tmp_path / "run")
    with pytest.raises(readers.DataError, match="small.png"):
        workflow.train_and_evaluate(config, workdir)
    assert not os.path.exists(os.path.join(workdir, checkpoint.LATEST_DIR))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, cache, reference, caplog):
    workdir = str(tmp_path / "corrupt")
    assert workflow.train_and_evaluate(tiny_config(cache, halt_after_steps=4), workdir) is None
    latest = os.path.join(workdir, checkpoint.LATEST_DIR)
    assert sorted(os.listdir(latest)) == ["2", "4"]
    flip_bytes(os.path.join(latest, "4"))
    workflow.train_and_evaluate(tiny_config(cache), workdir)
    assert "checkpoints/4 is unusable" in caplog.text
    assert "resuming from the previous sound checkpoint" in caplog.text
    quarantined = os.listdir(os.path.join(workdir, checkpoint.CORRUPT_DIR))
    assert len(quarantined) == 1 and quarantined[0].startswith("checkpoints-4-")
    assert_same_state(workdir, reference)


def test_a_full_disk_stops_with_one_error_and_the_earlier_checkpoints_resume(tmp_path, cache, reference, monkeypatch):
    workdir = str(tmp_path / "full")
    real = files.free_bytes
    calls = {"n": 0}

    def filling_up(directory):
        calls["n"] += 1
        return real(directory) if calls["n"] <= 2 else 1 << 20  # best/2 and checkpoints/2 fit, then 1 MiB

    monkeypatch.setattr(files, "free_bytes", filling_up)
    with pytest.raises(files.DiskSpaceError, match=r"not enough disk space for checkpoint step 4 in .*best"):
        workflow.train_and_evaluate(tiny_config(cache), workdir)
    monkeypatch.setattr(files, "free_bytes", real)
    assert os.listdir(os.path.join(workdir, checkpoint.LATEST_DIR)) == ["2"]
    workflow.train_and_evaluate(tiny_config(cache), workdir)
    assert_same_state(workdir, reference)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 24 MiB tmpfs (needs root and mount permission; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_during_a_checkpoint_write(small_filesystem, cache, reference, monkeypatch):
    """ENOSPC from inside orbax/tensorstore (the free-space check disabled): one CheckpointError,
    the earlier checkpoint intact, and the same command resumes once space is free."""
    workdir = os.path.join(small_filesystem, "run")
    assert workflow.train_and_evaluate(tiny_config(cache, halt_after_steps=2), workdir) is None
    filler = os.path.join(small_filesystem, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(files.DiskSpaceError, match=r"not enough disk space for the file .*config.json"):
        workflow.train_and_evaluate(tiny_config(cache), workdir)
    # Room for the small files, not for a checkpoint (variables alone are ~650 KB).
    os.truncate(filler, os.path.getsize(filler) - (128 << 10))
    monkeypatch.setattr(files, "require_free_space", lambda *a, **k: None)
    with pytest.raises(checkpoint.CheckpointError, match="disk is full"):
        workflow.train_and_evaluate(tiny_config(cache), workdir)
    os.remove(filler)
    assert "2" in os.listdir(os.path.join(workdir, checkpoint.LATEST_DIR))
    workflow.train_and_evaluate(tiny_config(cache), workdir)
    assert_same_state(workdir, reference)


def test_a_second_training_on_the_same_workdir_is_refused_naming_the_holder(tmp_path, cache):
    workdir = str(tmp_path / "busy")
    with workdir_lock.WorkdirLock(workdir):
        with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"pid {os.getpid()} on .* since"):
            workflow.train_and_evaluate(tiny_config(cache), workdir)
        second = helpers.run_cli(cli_args(workdir, cache))  # the command line: one line, exit 1
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: {workdir} is in use by another training job")
    assert not os.path.exists(os.path.join(workdir, checkpoint.LATEST_DIR))  # nothing written


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    workdir = str(tmp_path / "w")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[1]); from xray_flax import workdir_lock;"
            "lock = workdir_lock.WorkdirLock(sys.argv[2]).__enter__(); print('locked', flush=True); time.sleep(60)",
            helpers.REPO,
            workdir,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {holder.pid}"):
        workdir_lock.WorkdirLock(workdir).__enter__()
    holder.kill()
    holder.wait()
    with workdir_lock.WorkdirLock(workdir):
        pass


def test_without_flock_a_lock_file_is_used_and_a_dead_holder_is_detected(tmp_path, monkeypatch, caplog):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_lock.fcntl, "flock", no_flock)
    workdir = str(tmp_path / "w")
    with workdir_lock.WorkdirLock(workdir):
        with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {os.getpid()}"):
            workdir_lock.WorkdirLock(workdir).__enter__()
    assert not os.path.exists(os.path.join(workdir, ".lock.pid"))  # released
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(workdir, ".lock.pid"), "w") as f:
        f.write(f'{{"host": "{os.uname().nodename}", "pid": {dead.pid}, "started": "x", "command": "y"}}')
    with workdir_lock.WorkdirLock(workdir):
        assert "stale lock" in caplog.text
