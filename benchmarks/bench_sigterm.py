"""Time from SIGTERM to exit, with a saved checkpoint, of a 256-px CPU training run.

SLURM and TPU preemption give about 30 s between SIGTERM and SIGKILL. This starts the CLI
on configs/default.py with 256-px patches (the run where, before the fix, "a SIGTERM at step ~45 of
a 256-px CPU run stopped at step 55 and the process exited 70 s later"), sends SIGTERM when
step `--after_step` is logged, and measures: seconds from the signal to the exit, the step it
stopped at, and that checkpoints/<step> was written. `--max_steps_in_flight` lets the
earlier, unbounded behaviour be reproduced for comparison (e.g. 1000).

    python benchmarks/bench_sigterm.py --out benchmarks/results/sigterm.json
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
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench_sigterm_")
    command = [
        sys.executable, "-m", "xray_flax.main", "--config", "configs/default.py", "--workdir", workdir,
        f"--config.data.patch_size={args.patch}", f"--config.data.stride={args.patch}",
        f"--config.train.num_steps={args.num_steps}", f"--config.train.log_every={args.log_every}",
        f"--config.train.max_steps_in_flight={args.max_steps_in_flight}",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sent_at, lines, started = None, [], time.monotonic()
    pattern = re.compile(rf"\] train: {args.after_step}/{args.num_steps} steps")
    for line in proc.stdout:
        lines.append(line)
        if sent_at is None and pattern.search(line):
            proc.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
        if time.monotonic() - started > args.timeout:
            proc.kill()
            break
    status = proc.wait()
    exited_at = time.monotonic()
    output = "".join(lines)
    if sent_at is None:
        raise SystemExit(f"the run ended before step {args.after_step}:\n{output[-3000:]}")
    stopped = re.findall(r"stopped at step (\d+)", output)
    step = int(stopped[-1]) if stopped else None
    saved = step is not None and os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))
    result = {
        "benchmark": "sigterm_to_exit",
        "command": " ".join(command[1:]),
        "signal_at_step": args.after_step,
        "log_every": args.log_every,
        "stopped_at_step": step,
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
