"""The hidden-art family's training loop: a documented fork of the detectors' loop.

The detectors' loop (xray_flax/train.py) reads tiles through a Grain pipeline, validates by
ROC-AUC on labelled tiles and keeps a best checkpoint with a score normalisation; none of that
fits a method trained on whole multispectral paintings, whose batches are paintings (or their
superpixel graphs) drawn from a key of (seed, step), and whose validation is a recovery metric
against a simulated hidden layer. So this loop is a fork, kept small, that reuses what both
need from the shared modules (docs/architecture.md, "One trainer story"):

* the state: `xray_flax.train_state.TrainState`, the NaN guard `guard_nonfinite` (a non-finite
  loss or gradient leaves the parameters unchanged and stops the run with
  `errors.TrainingDivergedError`, naming the last good checkpoint);
* checkpoints: `xray_flax.checkpoint.Checkpointer` (`checkpoints/<step>/`: variables, optimiser
  state, meta with SHA-256 digests; free-space check; a damaged newest step moved to `corrupt/`
  when an older one is sound). There is no data iterator to save: the batches of step s are a
  function of (seed, s), so a resumed run equals an uninterrupted one;
* progress lines and TensorBoard scalars: `xray_flax.progress.ReportProgress` and
  `xray_flax.summary.create_writer`;
* the stop request: `xray_flax.stop_request.StopRequest` (SIGTERM or Ctrl-C saves a checkpoint
  and stops; the same command resumes).
"""

from __future__ import annotations

import logging

import jax
import ml_collections
import numpy as np

from xray_flax import checkpoint, errors, logs, progress
from xray_flax.hidden_art import data, methods
from xray_flax.stop_request import StopRequest
from xray_flax.summary import create_writer
from xray_flax.train_state import TrainState, guard_nonfinite

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2


def _sample(config, train_items: list, train_scenes: list[dict], method: methods.Method, step: int) -> list:
    """The items of one step's paintings, drawn (and augmented) from a key of (seed, step)."""
    rng = np.random.default_rng([int(config.seed), step])
    n = int(config.train.batch_size)
    picks = rng.choice(len(train_scenes), n, replace=len(train_scenes) < n)
    if not method.augment:
        return [train_items[i] for i in picks]
    crop = int(config.train.crop) or None
    return [method.item(data.augment(rng, train_scenes[i], crop=crop)) for i in picks]


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _restore(ckpt: checkpoint.Checkpointer, template: TrainState) -> TrainState | None:
    """The newest sound checkpoint as a TrainState shaped like `template`; None when there is none."""
    if ckpt.latest_step() is None:
        return None
    step = ckpt.latest_step()
    try:
        variables, opt_state, meta = ckpt.restore_latest(
            _abstract(template.variables), _abstract(template.opt_state), None
        )
    except checkpoint.CorruptCheckpointError:
        raise
    except Exception as e:  # orbax/tensorstore raise many types for unreadable files
        raise checkpoint.CorruptCheckpointError(
            f"cannot restore {ckpt.latest.directory}/{step}: {checkpoint.first_line(e)}; move it away to start over"
        ) from e
    params = variables.pop("params", {})
    return template.replace(
        step=np.asarray(meta["step"], np.int32), params=params, collections=variables, opt_state=opt_state
    )


def initial_variables(config: ml_collections.ConfigDict, method: methods.Method, sample: dict):
    """The method's freshly initialised variables; `sample` is the method's batch of one step."""
    return method.init(jax.random.key(int(config.seed)), sample)


def train(config: ml_collections.ConfigDict, workdir: str, method: methods.Method, train_scenes: list[dict]):
    """Variables of a trained (or training-free) method, resuming from DIR/checkpoints; None when
    the run stopped early on a termination request (with a checkpoint: the same call resumes)."""
    items = [method.item(s) for s in train_scenes] if not method.augment else []
    sizes = method.sizes(items, int(config.train.batch_size)) if items else None
    variables = initial_variables(
        config, method, method.collate(_sample(config, items, train_scenes, method, 0), sizes)
    )
    if not method.trained:
        return variables
    state = TrainState.create(variables, method.optimizer)
    ckpt = checkpoint.Checkpointer(workdir, keep=CHECKPOINTS_KEPT)
    writer = create_writer(workdir, just_logging=jax.process_index() > 0)
    finished = False
    try:
        restored = _restore(ckpt, state)
        if restored is not None:
            state = restored
            log.info("resumed %s from %s/%d", method.name, ckpt.latest.directory, int(state.step))
        state = _steps(config, method, state, items, train_scenes, sizes, ckpt, writer)
        finished = True
    finally:
        writer.flush()
        ckpt.finish(raise_write_errors=finished)
    return None if state is None else state.variables


def _steps(config, method, state, items, train_scenes, sizes, ckpt, writer) -> TrainState | None:
    """Steps from state.step to config.train.num_steps; None when stopped early with a checkpoint."""
    step_fn = logs.compile_on_first_call(
        jax.jit(guard_nonfinite(lambda s, batch, key, aux: method.train_step(s, batch, key))),
        f"the {method.name} train step",
        log,
    )
    num_steps, log_every = int(config.train.num_steps), int(config.train.log_every)
    every = int(config.train.checkpoint_every)
    step = int(jax.device_get(state.step))
    last_good = ckpt.latest_step()
    report = progress.ReportProgress(
        f"train {method.name}", num_steps, every_steps=log_every, every_secs=None, writer=writer
    )
    report(step)
    stop = StopRequest()
    try:
        while step < num_steps:
            batch = method.collate(_sample(config, items, train_scenes, method, step), sizes)
            key = jax.random.fold_in(jax.random.key(int(config.seed)), step)
            state, scalars = step_fn(state, batch, key, None)
            step += 1
            stopping = stop.requested(ckpt.latest, step)
            final = step == num_steps or stopping
            if step % log_every == 0 or final:
                values = {k: float(v) for k, v in jax.device_get(scalars).items() if np.ndim(v) == 0}
                if values.pop("nonfinite", 0.0) > 0:
                    where = f"step {last_good} in {ckpt.latest.directory}" if last_good is not None else "none yet"
                    raise errors.TrainingDivergedError(
                        f"{method.name}: non-finite loss or gradient at step {step} ({values}); the update was "
                        f"skipped and nothing was saved after it (last good checkpoint: {where}). Lower "
                        "config.optim.learning_rate or check the paintings for NaNs"
                    )
                writer.write_scalars(step, values)
                report.detail = " ".join(f"{k} {v:.4g}" for k, v in sorted(values.items()))
            report(step)
            if step % every == 0 or final:
                ckpt.save_latest(step, state.variables, state.opt_state, None, {"step": step, "method": method.name})
                last_good = step
            if final:
                break
    finally:
        stop.restore()
    if step < num_steps:
        log.info(
            "stopped %s at step %d of %d with a checkpoint; the same command resumes", method.name, step, num_steps
        )
        return None
    return state


def trained_variables(config, workdir: str, method: methods.Method, sample: dict) -> dict:
    """The variables of a finished run from DIR/checkpoints (evaluate: no training, no training
    data read); `sample` is any painting, giving the shapes for init."""
    variables = initial_variables(config, method, method.collate([method.item(sample)], None))
    if not method.trained:
        return variables
    ckpt = checkpoint.Checkpointer(workdir, keep=CHECKPOINTS_KEPT)
    try:
        state = _restore(ckpt, TrainState.create(variables, method.optimizer))
    finally:
        ckpt.close()
    if state is None:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {ckpt.latest.directory}: train first (--mode train with --config)"
        )
    return state.variables
