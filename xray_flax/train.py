"""The training loop, one for every detector: state, restore, iterate, log, validate, checkpoint.

`train(config, workdir)` trains or fits any detector of `xray_flax.detectors` and keeps its
best checkpoint; `xray_flax.workflow.train_and_evaluate` then evaluates and predicts with it
(this module imports neither command):

* gradient kind: optimiser steps on batches of clean normal tiles. It resumes from the latest
  checkpoint in `workdir` when there is one, with the data iterator restored too, and per-step
  keys derived from (seed, step), so a resumed run continues exactly where it stopped.
* fit kind: one finite pass over the clean training tiles, no optimiser, saved once; the
  partial fit is checkpointed every few batches (fit_partial/) and a killed fit resumes there.

Both validate (ROC-AUC on the val split, the score normalisation fitted on its normal tiles:
`xray_flax.scoring`) and keep the best checkpoint in `best/`.
"""

from __future__ import annotations

import collections
import logging
import os

import jax
import ml_collections
import numpy as np

from xray_flax import checkpoint, config_check, detectors, errors, files, logs, parallel, progress, scoring, steps
from xray_flax.data import labelled, pipeline
from xray_flax.data import validate as data_validate
from xray_flax.inference import Inferencer
from xray_flax.normalization import IDENTITY
from xray_flax.stop_request import StopRequest
from xray_flax.summary import create_writer

log = logging.getLogger(__name__)


# Raised here; defined with the other user errors (the hidden-art loop raises it too).
TrainingDivergedError = errors.TrainingDivergedError


class MemoryBudgetError(errors.UserError):
    """A fit needs more memory than config.train.memory_budget_gb."""


_GB = 1e9


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The workdir keeps its config, so evaluate/predict need nothing but the workdir."""
    if jax.process_index() == 0:
        files.write_text_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def validate_config(config: ml_collections.ConfigDict, detector: detectors.Detector) -> None:
    """The last line of defence: `xray_flax.config_check` checked the whole config (these rules
    among them) before the workflow wrote anything."""
    errors.require(
        detectors.patch_size_problems(config.data.patch_size, detector) + config_check.train_problems(config.train)
    )


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


class _Validator:
    """Scores the val split with the current variables, fits the score normalisation on its
    normal tiles and keeps the best checkpoint (variables + normalisation, no optimiser)."""

    def __init__(self, detector, config, splits, mesh, ckpt, writer, initial_variables):
        self.detector, self.config, self.splits, self.ckpt, self.writer = detector, config, splits, ckpt, writer
        filter_size = scoring.score_filter_size(config)
        self.infer = Inferencer(
            detector,
            initial_variables,
            mesh,
            config.eval.batch_size,
            filter_size,
            IDENTITY,
            scoring.score_top_k(config),
        )

    def __call__(self, step: int, variables, rank_fraction: float) -> None:
        self.infer.set_variables(variables, IDENTITY)
        val = scoring.score_split(self.infer, self.splits, "val", self.config)
        normalization = scoring.fit_normalization(self.detector, self.config, val)
        val_auc = scoring.validation_roc_auc(self.splits, "val", val)
        if not np.isfinite(val_auc):
            log.warning(
                "validation split has one class only: ROC-AUC undefined, the newest checkpoint counts as the best"
            )
            ranking = rank_fraction - 2.0
        else:
            ranking = val_auc
        meta = {"step": step, checkpoint.BEST_METRIC: ranking, "normalization": normalization.to_json()}
        improved = self.ckpt.save_best(step, variables, meta)
        self.writer.write_scalars(step, {"val_roc_auc": val_auc})
        log.info("step %d: validation ROC-AUC %.4f%s", step, val_auc, " (best so far)" if improved else "")


# The key stream and data-order seed of the statistics refresh, apart from training's, so that
# switching it on leaves every training step unchanged.
_REFRESH_STREAM = 0x5EF
_REFRESH_SEED_OFFSET = 104_729


class _StatisticsRefresh:
    """Re-estimates the running statistics (BatchNorm's) of the weights about to be validated
    (config.train.refresh_statistics_batches): that many training-mode passes at fixed weights
    over a fixed set of training batches drawn once and kept on the devices, so the result
    depends on the weights only (and a resumed run validates exactly as an uninterrupted one)."""

    def __init__(self, detector, config, splits, mesh, per_process_batch: int):
        n = int(config.train.refresh_statistics_batches)
        self.refresh = steps.compile_refresh_statistics(detector, mesh) if n > 0 else None
        self.batches: list[dict] = []
        if n > 0 and self.refresh is None:
            log.info(
                "config.train.refresh_statistics_batches=%d ignored: %s keeps no running statistics", n, detector.name
            )
        if self.refresh is None:
            return
        batches = pipeline.make_train_iterator(
            splits,
            config.data,
            batch_size=per_process_batch,
            seed=config.seed + _REFRESH_SEED_OFFSET,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        self.batches = [parallel.global_batch({"image": next(batches)["image"]}, mesh) for _ in range(n)]
        self.key = jax.random.fold_in(jax.random.key(config.seed), _REFRESH_STREAM)
        log.info("validation re-estimates the running statistics on %d training batches first", n)

    def __call__(self, variables, aux):
        for i, batch in enumerate(self.batches):
            variables = self.refresh(variables, batch, jax.random.fold_in(self.key, i), aux)
        return variables


def train(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Train or fit (resuming if possible), keeping the best checkpoint by validation ROC-AUC.

    Returns False when the run stopped early with a checkpoint (config.train.halt_after_steps,
    or a termination request; the same call resumes), True when it finished. The caller holds
    the workdir lock (`xray_flax.workflow.train_and_evaluate`).
    """
    detector = detectors.build(config)
    validate_config(config, detector)
    os.makedirs(workdir, exist_ok=True)
    save_config(config, workdir)
    mesh = parallel.make_mesh(config.mesh)
    splits = pipeline.prepare_splits(config.data, workdir)
    # Every image, mask and CSV row of every split, checked before step 0 (in every process,
    # so that none waits in a collective while another stops): bad data fail in seconds.
    data_validate.validate_splits(splits, config.data)
    ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    writer = create_writer(workdir, just_logging=jax.process_index() > 0)
    run = _train if detector.kind == detectors.GRADIENT else _fit
    finished = False
    try:
        finished = run(detector, config, workdir, splits, mesh, ckpt, writer)
    finally:
        writer.flush()
        ckpt.finish(raise_write_errors=finished)
    return finished


def _compile_steps(detector, config, mesh):
    """The train step and the preview (None without image summaries), each compiled at its
    first call between two log lines: compiling takes seconds to minutes with nothing to show."""
    train_step = logs.compile_on_first_call(steps.compile_train_step(detector, mesh), "the train step", log)
    preview_step = steps.compile_preview(detector, mesh) if config.train.image_summary_every else None
    if preview_step is not None:
        preview_step = logs.compile_on_first_call(preview_step, "the TensorBoard preview images", log)
    return train_step, preview_step


def _next_batch(train_iter, labelled_tiles, step: int, config, mesh) -> dict:
    """The global batch of `step`: clean normal tiles, and labelled anomalous ones mixed in
    with their labels and masks when config.train.labelled_anomalies > 0."""
    host_batch = {"image": next(train_iter)["image"]}
    if labelled_tiles is not None:
        # Each process mixes into its own chunk, by the same rule with its own position.
        position = step * jax.process_count() + jax.process_index()
        host_batch = labelled.mix_into_batch(host_batch, labelled_tiles, position, config.train.labelled_per_batch)
    return parallel.global_batch(host_batch, mesh)


def _train(detector, config, workdir, splits, mesh, ckpt, writer) -> bool:
    """Optimiser steps until config.train.num_steps; False when it stopped early with a checkpoint."""
    per_process_batch = parallel.check_batch_size(config.train.batch_size, mesh)
    channels, patch = config.data.channels, config.data.patch_size
    num_steps = config.train.num_steps
    aux = parallel.replicate(detector.make_aux(), mesh) if detector.make_aux is not None else None
    train_iter = pipeline.make_train_iterator(
        splits,
        config.data,
        batch_size=per_process_batch,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    labelled_tiles = labelled.labelled_tiles(splits, config.data, int(config.train.labelled_anomalies), config.seed)
    init_key, train_key, preview_key = jax.random.split(jax.random.key(config.seed), 3)
    if ckpt.latest_step() is not None:
        abstract = steps.replicated_abstract(detector.abstract_variables(patch, channels), mesh)
        try:
            variables, opt_state, meta = ckpt.restore_latest(
                abstract, steps.abstract_opt_state(detector, abstract, parallel.replicated(mesh)), train_iter
            )
        except checkpoint.CorruptCheckpointError:
            raise
        except Exception as e:
            raise checkpoint.CheckpointError(
                f"could not resume from {ckpt.latest.directory}: {checkpoint.first_line(e)}. If the config "
                f"changed (detector, model widths, patch size), train into a new --workdir."
            ) from e
        params, collections_ = detectors.base.split_variables(variables)
        step_array = parallel.replicate(np.asarray(meta["step"], np.int32), mesh)
        state = detectors.TrainState(step=step_array, params=params, collections=collections_, opt_state=opt_state)
        ckpt.drop_best_after(int(meta["step"]))
        log.info("resumed from step %d of %s", int(meta["step"]), workdir)
    else:
        ckpt.drop_best_after(0)
        state = steps.init_train_state(detector, init_key, patch, channels, mesh)
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        log.info("initialised %s (%s): %s trainable parameters", config.method, detector.name, f"{n_params:,}")

    train_step, preview_step = _compile_steps(detector, config, mesh)
    validate = _Validator(detector, config, splits, mesh, ckpt, writer, state.variables)
    refresh = _StatisticsRefresh(detector, config, splits, mesh, per_process_batch)

    step = int(state.step)
    halt = config.train.halt_after_steps
    report = progress.ReportProgress(
        "train", num_steps, every_steps=config.train.log_every, every_secs=None, writer=writer
    )
    report(step)
    pending: list[dict] = []
    in_flight: collections.deque = collections.deque()
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
    stop = StopRequest()
    try:
        while step < num_steps and (halt is None or step < halt):
            batch = _next_batch(train_iter, labelled_tiles, step, config, mesh)
            state, step_metrics = train_step(state, batch, jax.random.fold_in(train_key, step), aux)
            pending.append(step_metrics)
            # Bound how far the host runs ahead of the device, so a stop request is served
            # after at most max_steps_in_flight more steps.
            in_flight.append(step_metrics["loss"])
            while len(in_flight) > max(1, config.train.max_steps_in_flight):
                jax.block_until_ready(in_flight.popleft())
            step += 1
            stopping = stop.requested(ckpt.latest, step)
            final = step == num_steps or step == halt or stopping

            if step % config.train.log_every == 0 or final:
                scalars = check_finite()
                report.detail = " ".join(f"{k} {scalars[k]:.4f}" for k in detector.metric_names if k in scalars)
                writer.write_scalars(step, scalars)
            report(step)
            # Stopping on a signal compiles and runs nothing more than the checkpoint needs.
            every = config.train.image_summary_every
            if preview_step is not None and not stopping and (step % every == 0 or final):
                images = preview_step(state.variables, batch, jax.random.fold_in(preview_key, step), aux)
                writer.write_images(step, {k: np.asarray(v)[:4] for k, v in images.items()})
            if not stopping and (step % config.train.eval_every == 0 or step == num_steps):
                check_finite()
                validate(step, refresh(state.variables, aux), step / num_steps)
            if step % config.train.checkpoint_every == 0 or final:
                check_finite()
                ckpt.save_latest(
                    step, state.variables, state.opt_state, train_iter, {"step": step, "seed": config.seed}
                )
                last_good_step = step
            if final:
                # Not `stop.received`: a signal that lands after `final` was decided would
                # stop without a checkpoint; it is seen at the next step, which then saves.
                break
    finally:
        stop.restore()
    if step < num_steps:
        why = "on a termination request" if stop.received else "(config.train.halt_after_steps)"
        log.info("stopped at step %d of %d %s with a checkpoint; the same command resumes", step, num_steps, why)
        return False
    return True


FIT_STEP = 1  # the checkpoint step of a fitted detector: one pass

# On a CPU, a fit update of more pixels than this is split into several (smaller batches).
# One update is one jitted call that a SIGTERM cannot interrupt, and SLURM or TPU preemption
# gives ~30 s before SIGKILL: 32 tiles of 256 px took minutes on 2 cores. 131,072 pixels = 32
# tiles of 64 px, the CPU configs' batch, so those fits are unchanged. GPUs and TPUs run a
# batch in well under a second and keep config.train.batch_size. [ours; benchmarks/bench_sigterm.py]
CPU_FIT_UPDATE_PIXELS = 131_072


def _with_batch_size(config: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.train.batch_size = batch_size
    return config


def fit_batch_size(config: ml_collections.ConfigDict, mesh) -> int:
    """Tiles per fit update (global): config.train.batch_size, or fewer on a CPU (or when
    config.train.fit_max_update_pixels > 0) so that one update covers at most that many pixels;
    a multiple of the mesh's devices, at least one per device."""
    limit = int(config.train.get("fit_max_update_pixels", 0) or 0)  # 0: by platform; < 0: no limit
    if limit < 0 or (limit == 0 and jax.default_backend() != "cpu"):
        return config.train.batch_size
    limit = limit or CPU_FIT_UPDATE_PIXELS
    devices = mesh.devices.size
    tiles = max(1, limit // config.data.patch_size**2 // devices) * devices
    return min(config.train.batch_size, tiles)


def _fit(detector, config, workdir, splits, mesh, ckpt, writer) -> bool:
    """One pass over the clean training tiles, then validation and the best checkpoint, once.

    The detector's fit state is saved every `train.checkpoint_every` batches (and on a
    termination request or `train.halt_after_steps` batches) into fit_partial/, with the number
    of batches done; the same command then resumes from there, skipping the batches done.
    """
    if ckpt.best.latest_step() is not None:
        log.info("%s is fitted already (%s); evaluating it", detector.name, ckpt.best.directory)
        return True
    channels, patch = config.data.channels, config.data.patch_size
    init_key = jax.random.split(jax.random.key(config.seed), 3)[0]
    variables = steps.init_variables(detector, init_key, patch, channels, mesh)
    fit_batch = fit_batch_size(config, mesh)
    batch_size = parallel.check_batch_size(fit_batch, mesh)
    total = pipeline.count_training_tiles(splits, config.data)
    num_batches = -(-total // fit_batch)
    if fit_batch != config.train.batch_size:
        # A detector sizes its fit state for one update of train.batch_size tiles (PatchCore's
        # coreset buffer); its variables, and so every checkpoint, do not depend on it.
        detector = detectors.build(_with_batch_size(config, fit_batch))
    fit_state = detector.fit_init(variables)
    budget = float(config.train.get("memory_budget_gb", 0.0) or 0.0) * _GB
    state_gb, model_gb = checkpoint.tree_nbytes(fit_state) / _GB, checkpoint.tree_nbytes(variables) / _GB
    log.info(
        "fit state %.2f GB + model %.2f GB allocated (peak RSS so far %.2f GB%s)",
        state_gb,
        model_gb,
        progress.peak_rss_bytes() / _GB,
        f", budget {budget / _GB:g} GB" if budget else "",
    )
    if budget and (state_gb + model_gb) * _GB > budget:
        raise MemoryBudgetError(
            f"{detector.name}'s fit state ({state_gb:.2f} GB) and model ({model_gb:.2f} GB) alone exceed "
            f"config.train.memory_budget_gb={budget / _GB:g}; shrink the state with the levers of its config "
            f"(feature dimensions, bank size, storage dtype, patch size: configs/{config.detector}.py) or raise "
            "the budget"
        )
    done = 0
    restored = ckpt.restore_fit(fit_state)
    if restored is not None:
        fit_state, meta = restored
        done = int(meta["batches"])
        if int(meta["batch_size"]) != fit_batch or int(meta["tiles"]) != total:
            raise checkpoint.CheckpointError(
                f"{ckpt.fit.directory} holds a partial fit with global batch {meta['batch_size']} over "
                f"{meta['tiles']} tiles; this run has {fit_batch} over {total}. Resume with the "
                f"same config, or fit into a new --workdir."
            )
        log.info("resuming the fit of %s after %d of %d batches", detector.name, done, num_batches)

    report = progress.ReportProgress(f"fit {detector.name}", total, unit="tiles", every_secs=10.0)
    tiles = lambda batches: min(total, batches * fit_batch)  # noqa: E731
    report(tiles(done))
    log.info(
        "fitting %s (%s) on %d training tiles, %d batches of %d%s",
        config.method,
        detector.name,
        total,
        num_batches,
        fit_batch,
        f" (train.batch_size {config.train.batch_size} split into smaller updates on a CPU, so that a stop request "
        "is served within seconds: config.train.fit_max_update_pixels)"
        if fit_batch < config.train.batch_size
        else "",
    )
    halt = config.train.halt_after_steps
    # train.checkpoint_every counts batches of train.batch_size: the same number of tiles between saves.
    every = max(1, int(config.train.checkpoint_every) * config.train.batch_size // fit_batch)
    stop = StopRequest()

    def save():
        meta = {"batches": done, "tiles": total, "batch_size": fit_batch, "seed": config.seed}
        ckpt.save_fit(done, fit_state, meta)

    try:
        host_batches = pipeline.iterate_fit_batches(
            splits,
            config.data,
            batch_size=batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_batch=done,
        )
        in_flight: collections.deque = collections.deque()
        for host_batch in host_batches:
            fit_state = detector.fit_update(fit_state, variables, parallel.global_batch(host_batch, mesh))
            done += 1
            # As in training: the host runs at most max_steps_in_flight batches ahead of the device
            # (bounded memory for queued batches, a prompt stop on SIGTERM).
            in_flight.append(fit_state)
            while len(in_flight) > max(1, config.train.max_steps_in_flight):
                jax.block_until_ready(in_flight.popleft())
            summary = detector.fit_summary(fit_state) if detector.fit_summary is not None else {}
            rss = progress.rss_bytes()
            report.detail = " ".join([*(f"{k} {v:g}" for k, v in summary.items()), f"rss {rss / _GB:.2f} GB"])
            report(tiles(done))
            over_budget = bool(budget) and rss > budget
            stopping = over_budget or stop.requested(ckpt.fit, done) or (halt is not None and done >= halt)
            if stopping or (done % every == 0 and done < num_batches):
                save()
            if over_budget:
                raise MemoryBudgetError(
                    f"the fit of {detector.name} uses {rss / _GB:.2f} GB resident memory after {done} of {num_batches} "
                    f"batches, over config.train.memory_budget_gb={budget / _GB:g}; its partial state is saved in "
                    f"{ckpt.fit.directory}: raise the budget and rerun the same command to resume, or shrink the "
                    "batch (a new --workdir) or the state"
                )
            if stopping:
                why = "on a termination request" if stop.received else "(config.train.halt_after_steps)"
                log.info("stopped the fit after %d of %d batches %s; the same command resumes", done, num_batches, why)
                return False
    finally:
        stop.restore()
    variables = detector.fit_finish(fit_state, variables)
    jax.block_until_ready(variables)
    log.info("fitted %s: peak RSS %.2f GB", detector.name, progress.peak_rss_bytes() / _GB)
    validate = _Validator(detector, config, splits, mesh, ckpt, writer, variables)
    validate(FIT_STEP, variables, 1.0)
    return True
