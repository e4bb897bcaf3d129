"""Checkpoints: orbax CheckpointManagers for the latest and the best training state.

    <workdir>/checkpoints/<step>/   latest N (resume): variables/ (trainable params and every other
                                    collection), opt_state/, data_iterator/, meta/ (step, seed)
    <workdir>/best/<step>/          best by validation ROC-AUC (evaluate, predict): variables/ and
                                    meta/ (step, val_roc_auc, score normalisation); no optimiser
    <workdir>/fit_partial/<n>/      fit-kind detectors while fitting: fit_state/ after n batches and
                                    meta/ (batches, tiles); a killed fit resumes from the newest

Inference restores only `variables`, from either folder, with the detector's
`abstract_variables` (jax.eval_shape of its init) as the target: nothing of the optimiser is
built or read.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted or failed save (a full disk, a killed job) never leaves a half-written
checkpoint where a finished one is expected, and older steps stay untouched; the temporary
directories a killed job left are removed when training starts again.

Every save records SHA-256 digests of its trees in meta/ (xray_flax/integrity.py) and is
preceded by a free-space check; every restore verifies them. On resume, a checkpoint that
fails to restore or to verify, while an older one of the same folder is sound, is moved to
<workdir>/corrupt/ (kept for inspection, never deleted) and training continues from the
older one; `best/` entries newer than the step training resumes from are removed, since the
resumed run recomputes them bit for bit (keeping them would make orbax refuse that step).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from xray_flax import errors, files, integrity

log = logging.getLogger(__name__)

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
FIT_DIR = "fit_partial"
CORRUPT_DIR = "corrupt"
BEST_METRIC = "val_roc_auc"


class CheckpointError(errors.UserError, RuntimeError):
    """A checkpoint is missing, unreadable or could not be written."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes differ from what was saved, or its parameters are not finite."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (orbax and tensorstore errors run to many lines)."""
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def _no_space(error: BaseException) -> bool:
    """Whether `error` (or what caused it: orbax wraps tensorstore's errors, which are no
    OSErrors and name the condition only in their text) is a full disk."""
    while error is not None:
        if files.is_disk_full(error) or "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _sync(name: str) -> None:
    """All processes wait here: process 0 has just changed a checkpoint folder that every
    process's manager is about to re-read."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"xray_flax:{name}")


def tree_nbytes(*trees: Any) -> int:
    """Bytes of every array leaf of `trees` (what a checkpoint of them writes, uncompressed)."""
    return sum(int(getattr(x, "nbytes", 0)) for tree in trees for x in jax.tree.leaves(tree))


def _latest_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), LATEST_DIR), options=options)


def _best_manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        create=True,
        best_fn=lambda m: m[BEST_METRIC],
        best_mode="max",
        keep_checkpoints_without_metrics=False,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), BEST_DIR), options=options)


def _fit_manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), FIT_DIR), options=options)


class Checkpointer:
    """Saves and restores the training state (and the data iterator) of one workdir."""

    def __init__(self, workdir: str, keep: int = 3):
        self.workdir = workdir
        self.latest = _latest_manager(workdir, keep)
        # Made on first use: gradient runs have no fit_partial/, hidden-art runs no best/.
        self._best = None
        self._fit = None

    @property
    def best(self) -> ocp.CheckpointManager:
        if self._best is None:
            self._best = _best_manager(self.workdir)
        return self._best

    @property
    def fit(self) -> ocp.CheckpointManager:
        if self._fit is None:
            self._fit = _fit_manager(self.workdir)
        return self._fit

    def save_fit(self, batches: int, fit_state: Any, meta: dict) -> None:
        """A fit detector's partial state after `batches` batches (resumed from after a kill)."""
        meta = {**meta, "digest": integrity.digests(fit_state=fit_state)}
        args = ocp.args.Composite(fit_state=ocp.args.StandardSave(fit_state), meta=ocp.args.JsonSave(meta))
        self._save(self.fit, batches, args, nbytes=tree_nbytes(fit_state))

    def restore_fit(self, template: Any) -> tuple[Any, dict] | None:
        """(fit_state, meta) of the newest sound partial fit, or None; `template` gives shapes and types."""
        if self.fit.latest_step() is None:
            return None

        def restore(step):
            args = ocp.args.Composite(fit_state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
            restored = self.fit.restore(step, args=args)
            meta = dict(restored["meta"])
            problem = integrity.verify(f"{self.fit.directory}/{step}", meta, fit_state=restored["fit_state"])
            return (restored["fit_state"], meta), problem

        return self._restore_newest_sound(self.fit, restore)

    def save_latest(self, step: int, variables: Any, opt_state: Any, data_iterator: Any, meta: dict) -> None:
        """The training state after `step` steps; `data_iterator` is a Grain iterator, or None for a
        loop that draws its batches from (seed, step) (the hidden-art family)."""
        meta = {**meta, "digest": integrity.digests(variables=variables, opt_state=opt_state)}
        items = {
            "variables": ocp.args.StandardSave(variables),
            "opt_state": ocp.args.StandardSave(opt_state),
            "meta": ocp.args.JsonSave(meta),
        }
        if data_iterator is not None:
            items["data_iterator"] = grain.checkpoint.CheckpointSave(data_iterator)
        args = ocp.args.Composite(**items)
        self._save(self.latest, step, args, nbytes=tree_nbytes(variables, opt_state))

    def save_best(self, step: int, variables: Any, meta: dict) -> bool:
        """Keeps the variables if their validation ROC-AUC beats the best so far; returns whether it did."""
        meta = {**meta, "digest": integrity.digests(variables=variables)}
        args = ocp.args.Composite(variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta))
        before = self.best.best_step()
        self._save(
            self.best, step, args, metrics={BEST_METRIC: float(meta[BEST_METRIC])}, nbytes=tree_nbytes(variables)
        )
        self._wait(self.best)
        return self.best.best_step() != before

    def _save(
        self, manager: ocp.CheckpointManager, step: int, args: Any, metrics: dict | None = None, nbytes: int = 0
    ) -> None:
        # A full disk found before the write costs nothing; found by tensorstore half-way, it
        # costs the step (the temporary directory is removed, older steps stay readable).
        if jax.process_index() == 0:
            files.require_free_space(manager.directory, nbytes, f"checkpoint step {step}")
        try:
            manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as e:  # orbax re-raises the previous async save's failure here, of any type
            raise self._write_error(manager, step, e) from e

    @staticmethod
    def _write_error(manager, step, error: BaseException) -> CheckpointError:
        why = "the disk is full" if _no_space(error) else first_line(error)
        return CheckpointError(
            f"could not write checkpoint step {step} (or the one before) to {manager.directory}: {why}. "
            "Earlier checkpoints there are intact; free space and rerun the same command to resume"
        )

    def _wait(self, manager) -> None:
        try:
            manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(manager, manager.latest_step(), e) from e

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, abstract_variables: Any, abstract_opt_state: Any, data_iterator: Any):
        """(variables, opt_state, meta) of the newest sound checkpoint in checkpoints/ (see the
        module docstring); the data iterator is restored in place."""

        def restore(step):
            items = {
                "variables": ocp.args.StandardRestore(abstract_variables),
                "opt_state": ocp.args.StandardRestore(abstract_opt_state),
                "meta": ocp.args.JsonRestore(),
            }
            if data_iterator is not None:
                items["data_iterator"] = grain.checkpoint.CheckpointRestore(data_iterator)
            args = ocp.args.Composite(**items)
            restored = self.latest.restore(step, args=args)
            meta = dict(restored["meta"])
            trees = {"variables": restored["variables"], "opt_state": restored["opt_state"]}
            problem = integrity.verify(f"{self.latest.directory}/{step}", meta, **trees)
            return (restored["variables"], restored["opt_state"], meta), problem

        return self._restore_newest_sound(self.latest, restore)

    def _restore_newest_sound(self, manager: ocp.CheckpointManager, restore):
        """restore(step) -> (result, problem) on the newest step first. Steps that fail, when an
        older one is sound, are moved to corrupt/; when none is sound nothing is moved (the
        config may have changed rather than the files) and the newest step's error is raised."""
        failed: list[tuple[int, str]] = []
        first_error: BaseException | None = None
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                result, problem = restore(step)
            except Exception as e:  # orbax/tensorstore raise many types for unreadable files
                first_error = first_error or e
                failed.append((step, first_line(e)))
                continue
            if problem is not None:
                failed.append((step, problem))
                first_error = first_error or CorruptCheckpointError(problem)
                continue
            for bad_step, why in failed:
                moved = self._quarantine(manager, bad_step)
                log.warning("checkpoint %s/%d is unusable (%s); moved to %s", manager.directory, bad_step, why, moved)
            if failed:
                _sync("quarantine")
                manager.reload()
                log.warning("resuming from the previous sound checkpoint, %s/%d", manager.directory, step)
            return result
        if isinstance(first_error, CorruptCheckpointError):
            raise CorruptCheckpointError(
                f"{first_error}; no older sound checkpoint in {manager.directory}. Move it away to start over, or "
                "train into a new --workdir"
            )
        raise first_error

    def _quarantine(self, manager: ocp.CheckpointManager, step: int) -> str:
        """Move one step directory to <workdir>/corrupt/<folder>-<step>-<time> (process 0)."""
        source = os.path.join(str(manager.directory), str(step))
        target = os.path.join(
            os.path.abspath(self.workdir),
            CORRUPT_DIR,
            f"{os.path.basename(str(manager.directory))}-{step}-{time.strftime('%Y%m%d-%H%M%S')}",
        )
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(source, target)
        return target

    def drop_best_after(self, step: int) -> None:
        """Remove best/ entries newer than `step`, the step training resumes from: the resumed run
        recomputes them (bit-identical), and orbax would refuse to save a step that exists."""
        newer = [s for s in self.best.all_steps() if s > step]
        for s in newer:
            log.info(
                "removing %s/%d, newer than the resume point (step %d): it is recomputed", self.best.directory, s, step
            )
            if jax.process_index() == 0:
                shutil.rmtree(os.path.join(str(self.best.directory), str(s)))
        if newer:
            _sync("drop_best_after")
            self.best.reload()

    def wait(self) -> None:
        for manager in (self.latest, self._best, self._fit):
            if manager is not None:
                self._wait(manager)

    def close(self) -> None:
        for manager in (self.latest, self._best, self._fit):
            if manager is not None:
                manager.close()

    def finish(self, raise_write_errors: bool) -> None:
        """The end of a training loop, also one stopping on an error: finish the checkpoint writes
        already started, then close. A failed write is raised when `raise_write_errors` (the loop
        ended normally), else logged, so that it does not hide the error the loop is stopping on."""
        try:
            self.wait()
        except CheckpointError:
            if raise_write_errors:
                raise
            log.exception("a checkpoint write failed while stopping")
        finally:
            self.close()


def _restore_step(directory: str, step: int, abstract_variables: Any) -> tuple[Any, dict]:
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(abstract_variables), meta=ocp.args.JsonRestore()
            ),
        )
    except Exception as e:  # orbax raises several types for corrupt or mismatched files
        raise CheckpointError(
            f"could not restore {directory}/{step}: {first_line(e)}. If the config differs from the "
            "one the checkpoint was trained with (widths, levels, channels), pass that "
            "config (it is saved as config.json in the workdir); otherwise the checkpoint is damaged."
        ) from e
    finally:
        manager.close()
    meta = dict(restored["meta"])
    problem = integrity.verify(f"{directory}/{step}", meta, variables=restored["variables"])
    if problem is not None:
        raise CorruptCheckpointError(
            f"{problem}; the checkpoint is damaged: retrain, or pass another step with "
            "--config.eval.checkpoint=<workdir>/checkpoints/<step>"
        )
    return restored["variables"], meta


def restore_for_inference(workdir: str, abstract_variables: Any, checkpoint: str = "") -> tuple[Any, dict, str]:
    """(variables, meta, path) of `checkpoint` (a step directory such as <workdir>/checkpoints/300)
    or, when it is empty, of the best checkpoint of `workdir` (the latest when no best was kept)."""
    if checkpoint:
        path = os.path.abspath(checkpoint)
        name = os.path.basename(path.rstrip("/"))
        if not os.path.isdir(path) or not name.isdigit():
            raise CheckpointError(
                f"checkpoint {checkpoint} is not a step directory of a checkpoint folder "
                f"(expected e.g. {os.path.join(workdir, LATEST_DIR, '300')})"
            )
        variables, meta = _restore_step(os.path.dirname(path), int(name), abstract_variables)
        return variables, meta, path
    for sub in (BEST_DIR, LATEST_DIR):
        directory = os.path.join(os.path.abspath(workdir), sub)
        if not os.path.isdir(directory):
            continue
        manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
        step = manager.best_step() if sub == BEST_DIR else manager.latest_step()
        step = manager.latest_step() if step is None else step
        manager.close()
        if step is None:
            continue
        variables, meta = _restore_step(directory, step, abstract_variables)
        return variables, meta, os.path.join(directory, str(step))
    raise CheckpointError(
        f"no checkpoint in {os.path.abspath(workdir)} (looked for {BEST_DIR}/ and "
        f"{LATEST_DIR}/); train first with --mode train --workdir {workdir}"
    )
