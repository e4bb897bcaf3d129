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
checkpoint where a finished one is expected, and older steps stay untouched.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
FIT_DIR = "fit_partial"
BEST_METRIC = "val_roc_auc"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or could not be written."""


def _latest_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), LATEST_DIR), options=options)


def _best_manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        create=True,
        best_fn=lambda m: m[BEST_METRIC],
        best_mode="max",
        keep_checkpoints_without_metrics=False,
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), BEST_DIR), options=options)


def _fit_manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), FIT_DIR), options=options)


class Checkpointer:
    """Saves and restores the training state (and the data iterator) of one workdir."""

    def __init__(self, workdir: str, keep: int = 3):
        self.workdir = workdir
        self.latest = _latest_manager(workdir, keep)
        self.best = _best_manager(workdir)
        self._fit = None  # made on first use: gradient runs have no fit_partial/

    @property
    def fit(self) -> ocp.CheckpointManager:
        if self._fit is None:
            self._fit = _fit_manager(self.workdir)
        return self._fit

    def save_fit(self, batches: int, fit_state: Any, meta: dict) -> None:
        """A fit detector's partial state after `batches` batches (resumed from after a kill)."""
        args = ocp.args.Composite(fit_state=ocp.args.StandardSave(fit_state), meta=ocp.args.JsonSave(meta))
        self._save(self.fit, batches, args)

    def restore_fit(self, template: Any) -> tuple[Any, dict] | None:
        """(fit_state, meta) of the newest partial fit, or None; `template` gives shapes and types."""
        step = self.fit.latest_step()
        if step is None:
            return None
        args = ocp.args.Composite(fit_state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
        restored = self.fit.restore(step, args=args)
        return restored["fit_state"], dict(restored["meta"])

    def save_latest(self, step: int, variables: Any, opt_state: Any, data_iterator: Any, meta: dict) -> None:
        args = ocp.args.Composite(
            variables=ocp.args.StandardSave(variables),
            opt_state=ocp.args.StandardSave(opt_state),
            data_iterator=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        )
        self._save(self.latest, step, args)

    def save_best(self, step: int, variables: Any, meta: dict) -> bool:
        """Keeps the variables if their validation ROC-AUC beats the best so far; returns whether it did."""
        args = ocp.args.Composite(variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta))
        before = self.best.best_step()
        self._save(self.best, step, args, metrics={BEST_METRIC: float(meta[BEST_METRIC])})
        self.best.wait_until_finished()
        return self.best.best_step() != before

    def _save(self, manager: ocp.CheckpointManager, step: int, args: Any, metrics: dict | None = None) -> None:
        try:
            manager.save(step, args=args, metrics=metrics, force=True)
        except OSError as e:
            raise CheckpointError(
                f"could not write checkpoint step {step} to {manager.directory}: {e}. "
                "Earlier checkpoints there are intact."
            ) from e

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, abstract_variables: Any, abstract_opt_state: Any, data_iterator: Any):
        """(variables, opt_state, meta) of the latest checkpoint; the data iterator is restored in place."""
        step = self.latest.latest_step()
        args = ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract_variables),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            data_iterator=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore(),
        )
        restored = self.latest.restore(step, args=args)
        return restored["variables"], restored["opt_state"], dict(restored["meta"])

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        if self._fit is not None:
            self._fit.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
        if self._fit is not None:
            self._fit.close()


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
            f"could not restore {directory}/{step}: {e}. If the config differs from the "
            "one the checkpoint was trained with (widths, levels, channels), pass that "
            "config (it is saved as config.json in the workdir)."
        ) from e
    finally:
        manager.close()
    return restored["variables"], dict(restored["meta"])


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
