"""Compare evaluated runs in the columns of the paper's Table 2.

    python -m xray_flax.compare WORKDIR [WORKDIR ...] [--names=NAME,...] [--paper] [--out FILE]
        [--curves FILE.svg]

Reads WORKDIR/metrics.json of each run (written by `--mode evaluate`) and prints a
Markdown table (Method | ROC-AUC | Acc | F1 | Precision | Recall | s/patch, and the bootstrap
95 % interval of the ROC-AUC); `--paper` appends the published rows of Table 2 for reference,
`--out` also writes it to a file. Runs given the same name (the seeds of one setting) are also
summarised: mean and standard deviation of their test ROC-AUC and F1. `--curves` plots the
validation ROC-AUC of every run against its training steps (from its TensorBoard events), the
runs of one name in one colour.

Below the tables: where each run came from (git commit, uncommitted changes, config hash,
device, jax version, date: the provenance metrics.json records), and the config keys whose
values differ between the runs (from each WORKDIR/config.json), so two runs can be told apart.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

from xray_flax import errors, program_flags
from xray_flax.report import plots, tables


def default_names(workdirs: Sequence[str], reports: Sequence[dict]) -> list[str]:
    """The run's "method"; the workdir's name is added when methods repeat or are absent."""
    methods = [str(r.get("method") or "") for r in reports]
    names = []
    for workdir, method in zip(workdirs, methods):
        base = os.path.basename(os.path.normpath(workdir))
        if not method:
            names.append(base)
        elif methods.count(method) > 1:
            names.append(f"{method} ({base})")
        else:
            names.append(method)
    return names


def load_runs(workdirs: Sequence[str], names: Sequence[str] | None = None) -> tuple[list[str], list[dict]]:
    """(row names, metrics.json reports) of the workdirs; names default to `default_names`."""
    if not workdirs:
        raise errors.UsageError("give at least one workdir")
    if names is not None and len(names) != len(workdirs):
        raise errors.UsageError(f"--names has {len(names)} names for {len(workdirs)} workdirs")
    reports = [tables.load_metrics(workdir) for workdir in workdirs]
    return (list(names) if names is not None else default_names(workdirs, reports)), reports


def comparison_markdown(names: Sequence[str], reports: Sequence[dict], include_paper: bool = False) -> str:
    text = tables.table2_markdown([(n, r["test"]) for n, r in zip(names, reports)], include_paper)
    intervals = [[n, tables.interval_text(r["test"].get("roc_auc_ci95"))] for n, r in zip(names, reports)]
    text += "\n" + tables.markdown_table(["Run", "ROC-AUC 95 % interval (stratified bootstrap)"], intervals)
    if len(set(names)) < len(names):
        text += "\n" + seed_summary_markdown(names, reports)
    return text


def _mean_sd(values: Sequence[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return tables.MISSING
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {sd:.4f}"


def seed_summary_markdown(names: Sequence[str], reports: Sequence[dict]) -> str:
    """Mean ± sample standard deviation of test ROC-AUC and F1 over the runs of each name."""
    rows = []
    for name in dict.fromkeys(names):
        group = [r["test"] for n, r in zip(names, reports) if n == name]
        rows.append(
            [name, str(len(group)), _mean_sd([t.get("roc_auc") for t in group]), _mean_sd([t.get("f1") for t in group])]
        )
    return tables.markdown_table(["Setting", "runs", "ROC-AUC mean ± sd", "F1 mean ± sd"], rows)


def learning_curves_svg(workdirs: Sequence[str], names: Sequence[str]) -> str:
    """Validation ROC-AUC against training steps for every run, one colour per name."""
    colours = {name: i for i, name in enumerate(dict.fromkeys(names))}
    lines, labelled, last_step = [], set(), 1
    for workdir, name in zip(workdirs, names):
        curve = plots.logged_scalars(workdir, "val_roc_auc")
        steps = sorted(s for s, v in curve.items() if np.isfinite(v))
        if not steps:
            raise ValueError(f"{workdir}: no validation ROC-AUC in its TensorBoard events (a fitted detector has none)")
        last_step = max(last_step, steps[-1])
        lines.append(("" if name in labelled else name, colours[name], steps, [curve[s] for s in steps]))
        labelled.add(name)
    return plots.line_plot_svg(lines, "training step", "validation ROC-AUC", (0.0, float(last_step)), (0.4, 1.0))


def provenance_markdown(names: Sequence[str], reports: Sequence[dict]) -> str:
    """Where each run came from: the provenance its metrics.json records (n/a for older runs)."""
    rows = []
    for name, report in zip(names, reports):
        p = report.get("provenance") or {}
        commit = p.get("git_commit")
        code = tables.MISSING if commit is None else commit[:12] + (" (dirty)" if p.get("git_dirty") else "")
        digest = p.get("config_sha256")
        device = f"{p['device_count']} x {p['device_kind']}" if p.get("device_kind") else tables.MISSING
        jax_version = (p.get("versions") or {}).get("jax") or tables.MISSING
        rows.append(
            [
                name,
                code,
                digest[:12] if digest else tables.MISSING,
                device,
                jax_version,
                p.get("written_utc") or tables.MISSING,
            ]
        )
    return tables.markdown_table(["Run", "git commit", "config sha256", "device", "jax", "evaluated (UTC)"], rows)


def flat_config(workdir: str) -> dict[str, Any] | None:
    """WORKDIR/config.json flattened to dotted keys; None when the run has none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            flat[prefix[:-1]] = value

    walk("", saved)
    return flat


def config_differences(workdirs: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(keys, rows): the config keys whose values differ between the runs, each row the key and
    every run's value as JSON ('absent' where a run lacks the key, n/a without a config.json)."""
    configs = [flat_config(w) for w in workdirs]
    present = [c for c in configs if c is not None]
    keys = sorted({k for c in present for k in c})
    missing = object()
    differing = [k for k in keys if len({json.dumps(c.get(k, missing), default=str) for c in present}) > 1]
    rows = []
    for key in differing:
        cells = []
        for config in configs:
            if config is None:
                cells.append(tables.MISSING)
            else:
                cells.append(_short(json.dumps(config[key])) if key in config else "absent")
        rows.append([key, *cells])
    return differing, rows


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_differences_markdown(names: Sequence[str], workdirs: Sequence[str]) -> str:
    if len(workdirs) < 2:
        return ""
    keys, rows = config_differences(workdirs)
    if not keys:
        lacking = [n for n, w in zip(names, workdirs) if flat_config(w) is None]
        note = f" ({', '.join(lacking)}: no config.json)" if lacking else ""
        return f"Config: the same in every run{note}.\n"
    return "Config keys that differ:\n\n" + tables.markdown_table(["Config key", *names], rows)


def _flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_list(
        "names", None, "row names, one per WORKDIR, comma-separated (default: each run's method)", flag_values=fv
    )
    flags.DEFINE_bool("paper", False, "append the paper's Table 2 rows for reference", flag_values=fv)
    flags.DEFINE_string("out", None, "also write the table to this file", flag_values=fv)
    flags.DEFINE_string("curves", None, "write the validation ROC-AUC learning curves to this SVG file", flag_values=fv)
    return fv


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; `argv` without the program name (default: sys.argv[1:]). Returns the exit status."""
    args = _flag_values()
    try:
        workdirs = program_flags.parse(args, argv, "python -m xray_flax.compare", __doc__, positional=True)
        if workdirs is None:
            return 0
        names, reports = load_runs(workdirs, args.names)
        text = comparison_markdown(names, reports, args.paper)
        text += "\n" + provenance_markdown(names, reports)
        differences = config_differences_markdown(names, workdirs)
        text += "\n" + differences if differences else ""
        if args.curves:
            svg = learning_curves_svg(workdirs, names)
    except (FileNotFoundError, ValueError, errors.UserError) as error:
        return program_flags.report(error)
    sys.stdout.write(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    if args.curves:
        os.makedirs(os.path.dirname(os.path.abspath(args.curves)), exist_ok=True)
        with open(args.curves, "w", encoding="utf-8") as f:
            f.write(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
