"""Time from SIGTERM to exit, with a saved checkpoint, of a 256-px CPU training run.

SLURM and TPU preemption give about 30 s between SIGTERM and SIGKILL. This starts the CLI
on configs/default.py with 256-px patches (the run where, before the fix, "a SIGTERM at step ~45 of
a 256-px CPU run stopped at step 55 and the process exited 70 s later"), sends SIGTERM when
step `--after_step` is logged, and measures: seconds from the signal to the exit, the step it
stopped at, and that checkpoints/<step> was written. `--max_steps_in_flight` lets the
earlier, unbounded behaviour be reproduced for comparison (e.g. 1000).

    python benchmarks/bench_sigterm.py --out benchmarks/results/sigterm.json

A fit-kind detector (`--fit_config configs/patchcore_cpu.py`): the same at 256 px, SIGTERM once
the fit has logged `--after_tiles` tiles done; the partial fit must be saved in fit_partial/.
`--fit_max_update_pixels -1` reproduces fits in whole batches of train.batch_size (before the
split of CPU fit updates):

    python benchmarks/bench_sigterm.py --fit_config configs/patchcore_cpu.py --out benchmarks/results/sigterm_fit.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--after_step", type=int, default=40, help="a multiple of --log_every")
    # configs/default.py logs every 20 steps; between log points nothing waits for the device,
    # which is when an unbounded host runs ahead.
    parser.add_argument("--log_every", type=int, default=20)
    parser.add_argument("--num_steps", type=int, default=400)
    parser.add_argument("--max_steps_in_flight", type=int, default=2)
    parser.add_argument("--fit_config", default="", help="a fit-kind detector's config instead of a training run")
    parser.add_argument("--after_tiles", type=int, default=1, help="fit: signal once this many tiles are done")
    parser.add_argument("--fit_max_update_pixels", type=int, default=0, help="fit: 0 = the default, -1 = no split")
    parser.add_argument(
        "--n_scans",
        type=int,
        default=24,
        help="fit: simulated clean scans (24: ~280 training tiles of 256 px, 9 batches of 32)",
    )
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench_sigterm_")
    command = [
        sys.executable, "-m", "xray_flax.main", "--config", args.fit_config or "configs/default.py",
        "--workdir", workdir, f"--config.data.patch_size={args.patch}", f"--config.data.stride={args.patch}",
        f"--config.train.max_steps_in_flight={args.max_steps_in_flight}",
    ]  # fmt: skip
    if args.fit_config:
        command.append(f"--config.train.fit_max_update_pixels={args.fit_max_update_pixels}")
        command.append(f"--config.data.simulated.n_scans={args.n_scans}")
        # Clean scans: training tiles must be clean, and at 256 px most easy anomalies fall in a tile.
        command += [f"--config.data.simulated.{kind}=0" for kind in ("paint_losses", "white_spots", "nails")]
        command.append("--config.data.simulated.foreign_objects=0")
        # The fit's progress line every 10 s: "fit <name>: <done>/<total> tiles".
        pattern = re.compile(r"\] fit \w+: (\d+)/\d+ tiles")
    else:
        command += [f"--config.train.num_steps={args.num_steps}", f"--config.train.log_every={args.log_every}"]
        pattern = re.compile(rf"\] train: {args.after_step}/{args.num_steps} steps")
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sent_at, lines, started = None, [], time.monotonic()
    for line in proc.stdout:
        lines.append(line)
        match = pattern.search(line)
        if args.fit_config and match and int(match.group(1)) < args.after_tiles:
            match = None
        if sent_at is None and match:
            proc.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
        if time.monotonic() - started > args.timeout:
            proc.kill()
            break
    status = proc.wait()
    exited_at = time.monotonic()
    output = "".join(lines)
    if sent_at is None:
        raise SystemExit(f"the run ended before the signal was due:\n{output[-3000:]}")
    stopped = re.findall(r"stopped (?:at step|the fit after) (\d+)", output)
    step = int(stopped[-1]) if stopped else None
    folder = "fit_partial" if args.fit_config else "checkpoints"
    saved = step is not None and os.path.isdir(os.path.join(workdir, folder, str(step)))
    updates = re.findall(r"batches of (\d+)", output)
    result = {
        "benchmark": "sigterm_to_exit",
        "command": " ".join(command[1:]),
        "signal_at_step": None if args.fit_config else args.after_step,
        "log_every": None if args.fit_config else args.log_every,
        "stopped_at_step": step,
        "tiles_per_fit_update": int(updates[-1]) if updates else None,
        "checkpoint_saved": saved,
        "exit_status": status,
        "seconds_signal_to_exit": round(exited_at - sent_at, 2),
        "max_steps_in_flight": args.max_steps_in_flight,
        **common.env_info(),
    }
    print(json.dumps(result, indent=2))
    common.write_json(args.out or None, result)


if __name__ == "__main__":
    main()
