"""The paper's Table 2 in one command: train and evaluate several detectors on one dataset.

    python -m xray_flax.table2 --root workdirs/table2 [--data configs/default.py]
        [--methods=configs/cfa_cpu.py,configs/fastflow_cpu.py,...] [--set train.num_steps=100 ...]
        [--seeds=0,1,2]

Every method config gets the data section and the threshold rule of the `--data` config, so
all methods see the same scans, the same split and the same tiles, and their thresholds are
chosen by the same rule on the same validation split. Each method trains (or fits) in
ROOT/<config name>/ through the shared loop, which evaluates its best-on-validation checkpoint;
then ROOT/table2.md (the paper's columns: ROC-AUC, accuracy, F1, precision, recall, s/patch,
each of our rows followed by the paper's row for the same method), ROOT/table2.json and
ROOT/roc.svg (the test ROC curves of all methods in one figure) are written, and ROOT/summary.md:
validation and test ROC-AUC with a bootstrap interval, F1, pixel AUROC, AUPRO, run time, s/patch
and, where the data's masks or folders carry anomaly kinds, one ROC-AUC column per kind.

With --seeds=0,1,2 every method runs once per seed (ROOT/seed_S/<name>, each seed's own
table2.md there) and ROOT/summary.md gives the mean over seeds, its spread, and a bootstrap
interval of the mean (the test tiles resampled jointly for all seeds).

Resumable: rerun the same command and a finished method (its metrics.json written by this
config) is not retrained; an interrupted one resumes from its latest checkpoint. A method that
fails is reported in the table and the others still run; the command then exits non-zero.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import flags
from sklearn.metrics import roc_curve

from xray_flax import config_base, errors, files, logs, parallel, program_flags, workflow
from xray_flax.report import plots, seed_table, tables

log = logging.getLogger("xray_flax.table2")

# The CPU configs of the paper's Table 2 methods (baselines, DRAEM, the paper's model) and the
# training-free references (so a reader sees at once whether learning helped), all on the
# default simulated data's 64-px tiles.
DEFAULT_METHODS = (
    "configs/cfa_cpu.py",
    "configs/csflow_cpu.py",
    "configs/draem_cpu.py",
    "configs/fastflow_cpu.py",
    "configs/stfpm_cpu.py",
    "configs/reverse_distillation_cpu.py",
    "configs/default.py",
    "configs/highpass.py",
    "configs/patch_nn.py",
)

# Fields of `config.eval` that make the threshold rule and the metrics the same for every
# method (each method keeps its own image-score filter and score normalisation).
SHARED_EVAL_FIELDS = (
    "threshold_metric",
    "fixed_threshold",
    "normalization_quantile",
    "pixel_exact_max_pixels",
    "pixel_histogram_bins",
    "aupro_fpr_limit",
)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py` or `path/to/config.py:ARG` (get_config(ARG)), as --config takes them."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    name = "table2_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise errors.ConfigError(f"config file {path} has no get_config()")
    return module.get_config(arg) if arg else module.get_config()


def method_name(spec: str) -> str:
    """The run folder of a config spec: configs/fastflow_cpu.py -> fastflow_cpu; tiny.py:cfa -> tiny_cfa."""
    path, _, arg = spec.partition(":")
    base = os.path.splitext(os.path.basename(path))[0]
    return f"{base}_{arg}" if arg else base


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """'train.num_steps=100' -> config.train.num_steps = 100 (Python literal, else a string)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise errors.ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.num_steps=100")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise errors.ConfigError(f"--set {assignment!r}: the config has no section {part!r}")
        node = node[part]
    if leaf not in node:
        raise errors.ConfigError(f"--set {assignment!r}: the config has no field {key!r}")
    node[leaf] = value


def method_config(
    spec: str, data: ml_collections.ConfigDict, overrides: Sequence[str], predict: bool
) -> ml_collections.ConfigDict:
    """A method's config with the shared data section, threshold rule and overrides."""
    config = load_config_file(spec)
    config.data = ml_collections.ConfigDict(data.data.to_dict())
    for field in SHARED_EVAL_FIELDS:
        if field in data.eval:
            config.eval[field] = data.eval[field]
    if not predict:
        config.train.predict_test_scans = 0
    for assignment in overrides:
        apply_override(config, assignment)
    return config


def _comparable(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def is_finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
    """metrics.json exists and was written by this very config (else the run must not be reused).

    A knob added to the code after the run was made counts as the same when it is at its
    default (the run then did what the default does)."""
    if not os.path.exists(os.path.join(workdir, "metrics.json")):
        return False
    saved = os.path.join(workdir, "config.json")
    if not os.path.exists(saved):
        return False
    with open(saved, encoding="utf-8") as f:
        stored = json.load(f)
    current = _comparable(config)
    defaults = _comparable(config_base.get_base_config(config.detector))
    if stored != _without_new_defaults(current, stored, defaults):
        raise errors.UsageError(
            f"{workdir} holds a finished run of a different config; use another --root or delete {workdir}"
        )
    return True


def _without_new_defaults(current: dict, stored: dict, defaults: dict) -> dict:
    """`current` less the knobs `stored` lacks whose value is still the code's default."""
    out = {}
    for key, value in current.items():
        if key not in stored:
            if key in defaults and defaults[key] == value:
                continue
            out[key] = value
        elif isinstance(value, dict) and isinstance(stored[key], dict):
            out[key] = _without_new_defaults(value, stored[key], defaults.get(key) or {})
        else:
            out[key] = value
    return out


def test_roc_curve(workdir: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(false-positive rates, true-positive rates) of the labelled test tiles in WORKDIR/scores.csv."""
    if not os.path.exists(os.path.join(workdir, "scores.csv")):
        return None
    rows = list(tables.load_scores(workdir, "test").values())
    labels = np.array([label for label, _ in rows])
    if len(set(labels.tolist())) < 2:
        return None
    fpr, tpr, _ = roc_curve(labels, np.array([score for _, score in rows]))
    return fpr, tpr


def roc_svg(curves: Sequence[tuple[str, float | None, np.ndarray, np.ndarray]]) -> str:
    """A self-contained SVG of ROC curves: (label, AUROC, fpr, tpr) each."""
    lines = [
        (f"{label} ({tables.format_number(auroc, 3)})", i, fpr, tpr)
        for i, (label, auroc, fpr, tpr) in enumerate(curves)
    ]
    return plots.line_plot_svg(lines, "false-positive rate", "true-positive rate", (0.0, 1.0), diagonal=True)


def table_markdown(results: Sequence[dict]) -> str:
    """Our rows, each followed by the paper's row of the same method (config.paper_row)."""
    paper = {name: values for name, *values in tables.PAPER_TABLE2}
    rows = []
    for result in results:
        if result.get("error"):
            rows.append([f"{result['method']} — FAILED: {result['error']}"] + [tables.MISSING] * 6)
        else:
            rows.append(tables.table2_row(result["method"], result["test"]))
        row = result.get("paper_row")
        if row in paper:
            rows.append([f"{row} (paper)"] + [tables.format_number(v) for v in paper[row]])
    return tables.markdown_table(tables.TABLE2_COLUMNS, rows) + "\n" + tables.PAPER_NOTE + "\n"


def run(
    root: str,
    data_spec: str,
    method_specs: Sequence[str],
    overrides: Sequence[str] = (),
    predict: bool = False,
    seeds: Sequence[int] | None = None,
) -> list[dict]:
    """Train/evaluate every method (skipping finished ones), then write the tables and the plot.

    Without `seeds`, the methods run in ROOT/<name> with their configs' own seeds. With seeds
    [S, ...], each seed's runs are ROOT/seed_S/<name> (config.seed = S; its own table2.md,
    table2.json and roc.svg there) and ROOT/summary.md has each method's mean over the seeds.
    ROOT/summary.md and summary.json are written in both cases. Returns every run's result
    (one per method and seed, in that order), each with its "seed" (None without `seeds`)."""
    data = load_config_file(data_spec)
    names = [method_name(spec) for spec in method_specs]
    if len(set(names)) != len(names):
        raise errors.UsageError(f"two methods would share a run folder: {names}")
    seed_list = [None] if seeds is None else [int(seed) for seed in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise errors.UsageError(f"--seeds must be distinct integers, got {list(seeds or [])}")
    plans = []
    for seed in seed_list:  # every config first: fail fast on a bad one
        extra = [] if seed is None else [f"seed={seed}"]
        configs = [method_config(spec, data, [*overrides, *extra], predict) for spec in method_specs]
        plans.append((seed, root if seed is None else os.path.join(root, f"seed_{seed}"), configs))
    os.makedirs(root, exist_ok=True)
    runs = [_run_methods(seed, seed_root, method_specs, names, configs) for seed, seed_root, configs in plans]
    summaries = [_summary([results[i] for results in runs]) for i in range(len(method_specs))]
    files.write_text_atomic(os.path.join(root, "summary.md"), seed_table.summary_markdown(summaries))
    files.write_text_atomic(os.path.join(root, "summary.json"), json.dumps(summaries, indent=2, default=str))
    log.info("wrote summary.md and summary.json to %s", root)
    return [result for results in runs for result in results]


def _run_methods(
    seed: int | None, root: str, method_specs: Sequence[str], names: Sequence[str], configs: Sequence
) -> list[dict]:
    """One seed's runs in ROOT/<name>, then ROOT/table2.md, table2.json and roc.svg."""
    os.makedirs(root, exist_ok=True)
    results = []
    for index, (spec, name, config) in enumerate(zip(method_specs, names, configs)):
        workdir = os.path.join(root, name)
        result = {
            "config": spec,
            "workdir": workdir,
            "method": config.method,
            "paper_row": config.get("paper_row"),
            "seed": seed,
        }
        where = "" if seed is None else f", seed {seed}"
        log.info("[%d/%d] %s (%s%s) in %s", index + 1, len(configs), config.method, spec, where, workdir)
        try:
            if is_finished(workdir, config):
                log.info("%s is finished already: not retrained", workdir)
            else:
                start = time.perf_counter()
                resumed = os.path.isdir(workdir)
                if workflow.train_and_evaluate(config, workdir) is None:
                    raise RuntimeError("stopped before the end of training (halt_after_steps or a termination)")
                seconds = time.perf_counter() - start
                # A resumed run's time covers only its last part: recorded as such.
                record = {"seconds": None if resumed else round(seconds, 1), "last_part_seconds": round(seconds, 1)}
                files.write_text_atomic(os.path.join(workdir, seed_table.RUN_FILE), json.dumps(record))
            result["test"] = tables.load_metrics(workdir)["test"]
        except Exception as error:  # noqa: BLE001 - one failed method must not lose the others' results
            log.error("%s failed:\n%s", spec, traceback.format_exc())
            result["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        results.append(result)

    files.write_text_atomic(os.path.join(root, "table2.md"), table_markdown(results))
    files.write_text_atomic(os.path.join(root, "table2.json"), json.dumps(results, indent=2, default=str))
    curves = []
    for result in results:
        curve = None if result.get("error") else test_roc_curve(result["workdir"])
        if curve is not None:
            curves.append((result["method"], result["test"].get("roc_auc"), *curve))
    files.write_text_atomic(os.path.join(root, "roc.svg"), roc_svg(curves))
    log.info("wrote table2.md, table2.json and roc.svg to %s", root)
    return results


def _summary(per_seed: Sequence[dict]) -> dict:
    """One method's row of summary.md from its results over the seeds (failed seeds named)."""
    finished = [r for r in per_seed if not r.get("error")]
    method = per_seed[0]["method"]
    if not finished:
        return {"method": method, "error": per_seed[0]["error"]}
    reports = [tables.load_metrics(r["workdir"]) for r in finished]
    summary = seed_table.method_summary(method, [r["workdir"] for r in finished], reports)
    failed = [r["seed"] for r in per_seed if r.get("error")]
    if failed:
        summary["method"] = f"{method} (seeds {failed} failed)"
    return summary


def _flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "root", None, "folder of the runs (one subfolder per method) and the table", required=True, flag_values=fv
    )
    flags.DEFINE_string(
        "data", "configs/default.py", "config whose data section and threshold rule every method uses", flag_values=fv
    )
    flags.DEFINE_list(
        "methods", list(DEFAULT_METHODS), "method configs, comma-separated (path or path:ARG)", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        "override a field of every method's config, e.g. --set train.num_steps=100 (repeatable)",
        flag_values=fv,
    )
    flags.DEFINE_bool("predict", False, "also write whole-scan heatmaps of a test scan", flag_values=fv)
    flags.DEFINE_list(
        "seeds",
        None,
        "run every method once per seed (config.seed), in ROOT/seed_S/<name>; summary.md has the "
        "mean over seeds with a bootstrap interval of it (default: each config's own seed, ROOT/<name>)",
        flag_values=fv,
    )
    return fv


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise errors.UsageError(f"--seeds: {text!r} is not an integer (e.g. --seeds=0,1,2)") from None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; `argv` without the program name (default: sys.argv[1:]). Returns the exit status."""
    args = _flag_values()
    try:
        hint = "give the method configs as --methods=A,B"
        if program_flags.parse(args, argv, "python -m xray_flax.table2", __doc__, hint=hint) is None:
            return 0
        logs.configure(False)
        parallel.enable_compilation_cache()
        seeds = None if args.seeds is None else [_seed(text) for text in args.seeds]
        results = run(args.root, args.data, args.methods, args.set, args.predict, seeds)
    except (FileNotFoundError, errors.UserError) as error:
        return program_flags.report(error)
    table = "table2.md" if args.seeds is None else "summary.md"
    print(open(os.path.join(args.root, table), encoding="utf-8").read())
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
