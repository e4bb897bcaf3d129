"""Compare evaluated runs in the columns of the paper's Table 2.

    python -m xray_flax.compare WORKDIR [WORKDIR ...] [--names NAME ...] [--paper] [--out FILE]

Reads WORKDIR/metrics.json of each run (written by `--mode evaluate`) and prints a
Markdown table (Method | ROC-AUC | Acc | F1 | Precision | Recall | s/patch); `--paper`
appends the published rows of Table 2 for reference, `--out` also writes it to a file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from xray_flax.report import tables


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


def comparison_markdown(
    workdirs: Sequence[str], names: Sequence[str] | None = None, include_paper: bool = False
) -> str:
    if not workdirs:
        raise ValueError("give at least one workdir")
    if names is not None and len(names) != len(workdirs):
        raise ValueError(f"--names has {len(names)} names for {len(workdirs)} workdirs")
    reports = [tables.load_metrics(workdir) for workdir in workdirs]
    names = list(names) if names is not None else default_names(workdirs, reports)
    return tables.table2_markdown([(n, r["test"]) for n, r in zip(names, reports)], include_paper)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xray_flax.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories holding metrics.json")
    parser.add_argument("--names", nargs="+", help="row names, one per WORKDIR (default: each run's method)")
    parser.add_argument("--paper", action="store_true", help="append the paper's Table 2 rows for reference")
    parser.add_argument("--out", help="also write the table to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        text = comparison_markdown(args.workdirs, args.names, args.paper)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
