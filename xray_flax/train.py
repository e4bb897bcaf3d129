"""The training loop: state, restore, iterate, log, validate, checkpoint, then evaluate.

`train_and_evaluate(config, workdir)` is the whole job. It resumes from the latest
checkpoint in `workdir` when there is one, with the data iterator restored too, and per-step
keys derived from (seed, step), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers

from xray_flax import checkpoint, evaluate, evaluation_config, metrics, parallel, predict, steps
from xray_flax.anomaly import SynthesisSpec, load_texture_bank
from xray_flax.data import pipeline
from xray_flax.inference import Inferencer, state_variables
from xray_flax.models import registry

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss or the gradients became NaN or infinite."""


def _format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The workdir keeps its config, so evaluate/predict need nothing but the workdir."""
    if jax.process_index() == 0:
        path = os.path.join(workdir, "config.json")
        with open(path + ".tmp", "w") as f:
            f.write(config.to_json_best_effort(indent=2))
        os.replace(path + ".tmp", path)


def validate_config(config: ml_collections.ConfigDict) -> None:
    multiple = registry.size_multiple(config.model)
    if config.data.patch_size % multiple:
        raise ValueError(
            f"config.data.patch_size={config.data.patch_size} must be a multiple of {multiple} "
            f"for this model (one halving per pooling level)"
        )
    if config.train.num_steps < 1:
        raise ValueError(f"config.train.num_steps must be >= 1, got {config.train.num_steps}")


class _Progress:
    """Progress lines with steps/s, images/s and ETA, measured between log points."""

    def __init__(self, total: int, start_step: int, batch_size: int):
        self.total, self.batch_size = total, batch_size
        self.last_step, self.last_time = start_step, time.perf_counter()

    def line(self, step: int, scalars: dict) -> tuple[str, float]:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        terms = " ".join(f"{k} {scalars[k]:.4f}" for k in ("loss", "ssim", "l2", "focal") if k in scalars)
        return (
            f"step {step}/{self.total} | {terms} | {rate:.2f} steps/s, "
            f"{rate * self.batch_size:.1f} img/s | ETA {_format_duration(eta)}"
        ), rate


class _StopRequest:
    """Stop cleanly, with a checkpoint, when the job is being preempted or cancelled.

    One process: SIGTERM (a preemption, scancel, a job's time limit). Several processes:
    the coordination service's preemption sync point, which JAX's distributed runtime
    raises on SIGTERM and which every process reaches at the same step, so they all save
    the same step; a Python handler there would replace the runtime's own.
    """

    def __init__(self):
        self.received = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("received signal %d: saving a checkpoint and stopping after this step", signum)
        self.received = True

    def requested(self, ckpt: checkpoint.Checkpointer, step: int) -> bool:
        if jax.process_count() > 1 and not self.received and ckpt.latest.reached_preemption(step):
            log.warning("preemption notice at step %d: saving a checkpoint and stopping", step)
            self.received = True
        return self.received

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Train (resuming if possible), keep the best checkpoint by validation ROC-AUC, evaluate it.

    Returns the test report of evaluate.evaluate, or None when the run halted early
    (config.train.halt_after_steps).
    """
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    save_config(config, workdir)
    mesh = parallel.make_mesh(config.mesh)
    per_process_batch = parallel.check_batch_size(config.train.batch_size, mesh)
    channels, patch = config.data.channels, config.data.patch_size
    num_steps = config.train.num_steps

    model = registry.build_model(config.model, channels)
    tx = steps.make_optimizer(config.optim, num_steps)
    spec = SynthesisSpec.from_config(config.anomaly, channels)
    textures = parallel.replicate(jnp.asarray(load_texture_bank(config.anomaly, patch, channels)), mesh)

    splits = pipeline.prepare_splits(config.data, workdir)
    train_iter = pipeline.make_train_iterator(
        splits,
        config.data,
        batch_size=per_process_batch,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    replicated = parallel.replicated(mesh)
    init_key, train_key, preview_key = jax.random.split(jax.random.key(config.seed), 3)
    ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    if ckpt.latest_step() is not None:
        abstract = steps.abstract_state(model, tx, patch, channels, replicated)
        try:
            state, meta = ckpt.restore_latest(abstract, train_iter)
        except Exception as e:
            raise checkpoint.CheckpointError(
                f"could not resume from {ckpt.latest.directory}: {e}. If the config changed (model widths, "
                f"patch size), train into a new --workdir."
            ) from e
        log.info("resumed from step %d of %s", int(state.step), workdir)
    else:
        sample = jnp.zeros((1, patch, patch, channels), jnp.float32)
        state = jax.jit(lambda k: steps.init_state(model, tx, k, sample), out_shardings=replicated)(init_key)
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        log.info("initialised %s: %s parameters", config.method, f"{n_params:,}")

    batch_sharding = parallel.batch_sharded(mesh)
    train_step = jax.jit(
        functools.partial(steps.train_step, model=model, tx=tx, spec=spec, loss_config=config.loss),
        in_shardings=(replicated, batch_sharding, replicated, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    preview_step = jax.jit(
        functools.partial(steps.preview_step, model=model, spec=spec),
        in_shardings=(replicated, batch_sharding, replicated, replicated),
        out_shardings=replicated,
    )
    filter_size = evaluation_config.resolve_score_filter_size(config.eval.score_filter_size, patch)
    infer = Inferencer(model, state_variables(state), mesh, config.eval.batch_size, filter_size)

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    step = int(state.step)
    halt = config.train.halt_after_steps
    progress = _Progress(num_steps, step, config.train.batch_size)
    pending: list[dict] = []
    last_good_step = ckpt.latest_step()

    def check_finite() -> dict[str, float] | None:
        """Fetch pending step metrics (one host sync per log interval) and stop on NaN/Inf."""
        if not pending:
            return None
        scalars = _mean_metrics(pending)
        bad = scalars.pop("nonfinite")
        pending.clear()
        if bad > 0:
            where = (
                f"the last good checkpoint is step {last_good_step} in {ckpt.latest.directory}"
                if last_good_step is not None
                else "no checkpoint was written yet"
            )
            raise TrainingDivergedError(
                f"non-finite loss or gradient in the steps before {step} (mean loss {scalars['loss']}); "
                f"the update was skipped and nothing was saved after it: {where}. Lower "
                f"config.optim.learning_rate or check the input data for NaNs."
            )
        return scalars

    # Step metrics come out of the jitted step already reduced over the global batch (every
    # device of every process) and replicated, so each process sees the same values and all
    # stop together on a non-finite loss; only process 0 writes summaries and logs progress.
    log.info(
        "training steps %d..%d, global batch %d on %d device(s) in %d process(es)",
        step,
        num_steps,
        config.train.batch_size,
        mesh.devices.size,
        jax.process_count(),
    )
    stop = _StopRequest()
    try:
        while step < num_steps and (halt is None or step < halt):
            host_batch = next(train_iter)
            batch = parallel.global_batch({"image": host_batch["image"]}, mesh)
            state, step_metrics = train_step(state, batch, textures, jax.random.fold_in(train_key, step))
            pending.append(step_metrics)
            step += 1
            final = step == num_steps or step == halt or stop.requested(ckpt, step)

            if step % config.train.log_every == 0 or final:
                scalars = check_finite()
                line, rate = progress.line(step, scalars)
                log.info(line)
                writer.write_scalars(step, {**scalars, "steps_per_sec": rate})
            if config.train.image_summary_every and (step % config.train.image_summary_every == 0 or final):
                images = preview_step(state, batch, textures, jax.random.fold_in(preview_key, step))
                writer.write_images(step, {k: np.asarray(v)[:4] for k, v in images.items()})
            if step % config.train.eval_every == 0 or step == num_steps:
                check_finite()
                infer.set_variables(state_variables(state))
                val = evaluate.score_split(infer, splits, "val", config)
                val_auc = metrics.roc_auc(val.labels, val.scores)
                if not np.isfinite(val_auc):
                    log.warning(
                        "validation split has one class only: ROC-AUC undefined, the newest "
                        "checkpoint counts as the best"
                    )
                    ranking = step / num_steps - 2.0
                else:
                    ranking = val_auc
                improved = ckpt.save_best(step, state, {"step": step, checkpoint.BEST_METRIC: ranking})
                writer.write_scalars(step, {"val_roc_auc": val_auc})
                log.info("step %d: validation ROC-AUC %.4f%s", step, val_auc, " (best so far)" if improved else "")
            if step % config.train.checkpoint_every == 0 or final:
                check_finite()
                ckpt.save_latest(step, state, train_iter, {"step": step, "seed": config.seed})
                last_good_step = step
            if final:
                # Not `stop.received`: a signal that lands after `final` was decided would
                # stop without a checkpoint; it is seen at the next step, which then saves.
                break
    finally:
        # Even when stopping on an error, finish the checkpoint writes already started.
        stop.restore()
        writer.flush()
        ckpt.wait()
        ckpt.close()
    if step < num_steps:
        why = "on a termination request" if stop.received else "(config.train.halt_after_steps)"
        log.info("stopped at step %d of %d %s with a checkpoint; the same command resumes", step, num_steps, why)
        return None
    report = evaluate.evaluate(config, workdir)
    test = report["test"]
    log.info(
        "test ROC-AUC %.4f | accuracy %.4f | F1 %.4f | %.4f s/patch",
        test["roc_auc"],
        test["accuracy"],
        test["f1"],
        test["seconds_per_patch"],
    )
    if config.train.predict_test_scans and jax.process_count() == 1:
        predict.predict(config, workdir, [record.path for record in splits.test[: config.train.predict_test_scans]])
    return report


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: pass --config, or point --workdir at a directory written by --mode train"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
