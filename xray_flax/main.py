"""Command line: python -m xray_flax.main --config configs/default.py --workdir DIR [--mode ...].

  --mode train     train (resuming from DIR if it holds a checkpoint), then evaluate the best
                   checkpoint on the test split
  --mode evaluate  evaluate the checkpoint in DIR (config from DIR/config.json unless --config)
  --mode predict   whole-scan anomaly maps, overlays, regions and HTML reports for --inputs

Any config field can be overridden: --config.train.num_steps=100 --config.data.root=/scans

Several processes (hosts): see launch/ and docs/scaling.md. Under srun (SLURM) or mpirun
(Open MPI) nothing extra is needed; --distributed on Cloud TPU VMs; otherwise
--coordinator_address, --num_processes and --process_id in every process.

Compiled programs are cached in ~/.cache/xray_flax/jax (environment variable
XRAY_FLAX_JAX_CACHE=DIR moves it, XRAY_FLAX_JAX_CACHE= turns it off), so a second run or a
resumed run does not compile again.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

from xray_flax import logs, parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.", required=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"], "What to do.")
_INPUTS = flags.DEFINE_list("inputs", [], "predict: scan files, folders or glob patterns (PNG/TIFF, 8/16-bit).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "evaluate/predict: where to write (default: the workdir, predict: <workdir>/predictions)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process: host:port of process 0 (auto-detected on SLURM, Open MPI and Cloud TPU).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process with JAX's cluster auto-detection even "
    "without SLURM/Open MPI variables (Cloud TPU VM slices: launch/tpu_vm.sh).",
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Also show the INFO logs of orbax, grain and absl.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.configure(_VERBOSE.value)
    parallel.enable_compilation_cache()
    try:
        parallel.initialize_distributed(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, force=_DISTRIBUTED.value
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if not parallel.is_main_process():
        # Every process runs the same loop; only process 0 reports progress (warnings and
        # errors still come from all of them).
        logging.getLogger().setLevel(logging.WARNING)

    try:
        _run(_CONFIG.value)
    except Exception:  # pylint: disable=broad-except
        import jax  # pylint: disable=g-import-not-at-top

        if jax.process_count() == 1:
            raise
        # A normal exit would wait in JAX's shutdown barrier for the other processes, which
        # wait in a collective for this one: report, then leave at once, so that srun or
        # launch/local.py sees the failure and stops the others.
        logging.exception("process %d of %d failed", jax.process_index(), jax.process_count())
        logging.shutdown()
        os._exit(1)  # pylint: disable=protected-access


def _run(config) -> None:
    # Imported after jax.distributed is initialised: they query devices at import time.
    from xray_flax import evaluate, predict, train

    if _MODE.value == "train":
        if config is None:
            raise app.UsageError("--mode train needs --config (e.g. --config configs/default.py)")
        train.train_and_evaluate(config, _WORKDIR.value)
        return
    if config is None:
        config = train.load_workdir_config(_WORKDIR.value)
    if _MODE.value == "evaluate":
        evaluate.evaluate(config, _WORKDIR.value, _OUTPUT_DIR.value)
    else:
        if not _INPUTS.value:
            raise app.UsageError("--mode predict needs --inputs (scan files, folders or globs)")
        predict.predict(config, _WORKDIR.value, _INPUTS.value, _OUTPUT_DIR.value)


if __name__ == "__main__":
    app.run(main)
