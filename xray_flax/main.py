"""Command line: python -m xray_flax.main --config configs/default.py --workdir DIR [--mode ...]
(or `xray-flax` with the same flags: the console command that `pip install` puts beside python).

  --mode train     train (resuming from DIR if it holds a checkpoint), then evaluate the best
                   checkpoint on the test split
  --mode evaluate  evaluate the checkpoint in DIR (config from DIR/config.json unless --config)
  --mode predict   whole-scan anomaly maps, overlays, regions and HTML reports for --inputs
  --mode export    the checkpoint as serialized jax.export StableHLO + manifest.json, loadable
                   without the training code (<workdir>/export; docs/api.md)

Any config field can be overridden: --config.train.num_steps=100 --config.data.root=/scans,
also on evaluate/predict without --config (the overrides then apply to DIR/config.json).

Log lines go to stderr and are appended to DIR/log.txt, dated, between a line naming the
command and one saying how the run ended (docs/reliability.md, Logs).

Errors the user can fix (bad input data, config values or overrides, missing files or
checkpoints, a full disk) print one line, `error: <message>`, and exit 2 (command line or
config) or 1 (anything else); --debug adds the traceback. Ctrl-C exits 130. Unexpected
errors print their traceback.

Several processes (hosts): see launch/ and docs/scaling.md. Under srun (SLURM) or mpirun
(Open MPI) nothing extra is needed; --distributed on Cloud TPU VMs; otherwise
--coordinator_address, --num_processes and --process_id in every process.

Compiled programs are cached in ~/.cache/xray_flax/jax (environment variable
XRAY_FLAX_JAX_CACHE=DIR moves it, XRAY_FLAX_JAX_CACHE= turns it off), so a second run or a
resumed run does not compile again.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from xray_flax import errors, logs, parallel, workdir_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.", required=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "export"], "What to do.")
_INPUTS = flags.DEFINE_list("inputs", [], "predict: scan files, folders or glob patterns (PNG/TIFF, 8/16-bit).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "evaluate/predict: where to write (default: the workdir, predict: <workdir>/predictions)."
)
_EXPORT_PLATFORMS = flags.DEFINE_list(
    "export_platforms",
    ["cuda", "tpu"],
    "export: platforms lowered in one artefact beside the CPU one (cpu, cuda, rocm, tpu; empty: CPU only).",
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
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Print the traceback of every error, also of those reported in one line (bad input, config)."
)

INTERRUPTED = "interrupted; rerun the same command to resume"


def exit_status(error: BaseException) -> int | None:
    """How the command line exits on `error`; None for an unexpected one (a traceback)."""
    if isinstance(error, KeyboardInterrupt):
        return errors.EXIT_INTERRUPTED
    if isinstance(error, app.UsageError):
        return errors.EXIT_USAGE
    if isinstance(error, errors.UserError):
        return errors.exit_status_of(error)
    # The operating system's own errors name their file: a missing input or checkpoint folder,
    # a permission, a full disk.
    if isinstance(error, (FileNotFoundError, PermissionError)):
        return errors.EXIT_FAILURE
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return errors.EXIT_FAILURE
    return None


def _message(error: BaseException) -> str:
    text = errors.one_line(error)
    if isinstance(error, OSError) and not isinstance(error, errors.UserError) and error.filename:
        # "[Errno 2] No such file or directory: 'x'" already names it; str() of an OSError
        # raised with a message only does not.
        if str(error.filename) not in text:
            text = f"{error.filename}: {text}"
    return text or type(error).__name__


def _report(error: BaseException, debug: bool) -> None:
    """Prints `error` as one line on stderr (after its traceback with --debug)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    if isinstance(error, KeyboardInterrupt):
        print(INTERRUPTED, file=sys.stderr, flush=True)  # not an error: what to do next
        return
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {_message(error)}", file=sys.stderr, flush=True)


def _process_count() -> int:
    jax = sys.modules.get("jax")
    try:
        return jax.process_count() if jax is not None else 1
    except Exception:  # noqa: BLE001 - any failure to ask means one process
        return 1


def _debug_requested(argv: list[str]) -> bool:
    # Flags that failed to parse have no values: look at the raw command line.
    return any(arg in ("--debug", "-debug", "--debug=true", "--debug=True", "--debug=1") for arg in argv)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with evaluate/predict reading the workdir's config, errors in one line.

    Unknown flags or override keys, values of the wrong type, a config file that does not
    load: all are fixed on the command line or in the config file (exit 2).
    """
    logs.set_command(argv)
    try:
        argv = workdir_config.with_workdir_config(argv)
        _check_config_file(argv)
        # config_flags reads its overrides from sys.argv, not from the argv it parses.
        sys.argv[:] = argv
        return flags.FLAGS(argv)
    except KeyboardInterrupt as e:  # while a config file imports the detectors (seconds)
        _report(e, debug=False)
        sys.exit(errors.EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - every flag or config problem is one line, exit 2
        if _debug_requested(argv):
            traceback.print_exception(e, file=sys.stderr)
        print(f"error: {_flags_message(e, argv)}", file=sys.stderr, flush=True)
        sys.exit(errors.EXIT_USAGE)


def _check_config_file(argv: list[str]) -> None:
    # config_flags turns a missing file into an error raised only when the config is first
    # read, as a traceback from deep inside training.
    present, value = workdir_config.flag_value(argv, "config")
    if present and value is not None:
        path = value.split(":", 1)[0]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path} not found (--config={value})")


def _overrides(argv: list[str]) -> list[str]:
    return [arg for arg in argv[1:] if arg.lstrip("-").startswith("config.")]


def _flags_message(error: BaseException, argv: list[str]) -> str:
    cause = errors.root_cause(error)
    if isinstance(cause, errors.UserError) or (cause is error and isinstance(cause, FileNotFoundError)):
        return _message(cause)
    if isinstance(cause, (AttributeError, KeyError)) and cause.args:
        # An override of a key the config lacks surfaces as a bare KeyError of one component.
        key = str(cause.args[0]).strip("'\"")
        for arg in _overrides(argv):
            name = arg.lstrip("-").split("=", 1)[0]
            if key in name.split("."):
                return f"{name} is not a key of the config ({arg}): check its spelling and section"
    if isinstance(error, flags.Error) and "Traceback" not in str(error):
        return errors.one_line(error)  # names the flag: "flag --config.x=v: <why>"
    if isinstance(cause, SyntaxError):
        return f"{cause.filename}, line {cause.lineno}: SyntaxError: {cause.msg}"
    return f"{type(cause).__name__}: {errors.one_line(cause)}{_where(cause)}"


def _where(error: BaseException) -> str:
    """' (file.py, line n)' of the last frame outside xray_flax and the installed libraries:
    the line of the user's config file that failed."""
    frames = traceback.extract_tb(error.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    mine = [f for f in frames if "site-packages" not in f.filename and not f.filename.startswith(package)]
    return f" ({mine[-1].filename}, line {mine[-1].lineno})" if mine else ""


def main(argv):
    try:
        _main(argv)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the error boundary of the command line
        status = exit_status(e)
        multi = _process_count() > 1
        if status is None and not multi:
            raise  # a bug: its traceback is the report
        if status is None:
            import jax  # noqa: PLC0415 - loaded by now; not imported before jax.distributed starts

            logging.exception("process %d of %d failed", jax.process_index(), jax.process_count())
        else:
            _report(e, _DEBUG.value)
        if multi:
            # A normal exit would wait in JAX's shutdown barrier for the other processes, which
            # wait in a collective for this one: report, then leave at once, so that srun or
            # launch/local.py sees the failure and stops the others.
            logging.shutdown()
            os._exit(status or errors.EXIT_FAILURE)
        sys.exit(status)


def _main(argv) -> None:
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
    _run(_CONFIG.value)


def _run(config) -> None:
    # Imported after jax.distributed is initialised: the loop's modules query devices at import.
    from xray_flax import workflow  # noqa: PLC0415

    if config is None:
        if _MODE.value == "train":
            raise app.UsageError("--mode train needs --config (e.g. --config configs/default.py)")
        config = workdir_config.load(_WORKDIR.value)
    workflow.run(config, _WORKDIR.value, _MODE.value, _INPUTS.value, _OUTPUT_DIR.value, _EXPORT_PLATFORMS.value)


def run() -> None:
    """The `xray-flax` console command (pyproject.toml [project.scripts]), the same program as
    `python -m xray_flax.main`."""
    # absl's --help prints the __main__ module's docstring and the flags of sys.argv[0]: here the
    # installed script's, so give it this module's.
    script = sys.modules["__main__"]
    if script.__doc__ is None:
        script.__doc__ = __doc__
    for flag in flags.FLAGS.get_key_flags_for_module(__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
