#!/usr/bin/env python
"""Start N training processes on this machine, as a multi-host job would run on N hosts.

    python launch/local.py --num_processes 2 [--devices_per_process 1] [--port 0] -- \
        --config configs/tiny.py --workdir /tmp/xray_2proc [--config.train.num_steps=100 ...]

Everything after `--` goes to `python -m xray_flax.main` in every process; the launcher adds
--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I. Processes run on the
CPU (JAX_PLATFORMS=cpu, gloo collectives), each with --devices_per_process simulated devices
(XLA_FLAGS=--xla_force_host_platform_device_count), so this exercises jax.distributed,
per-process data slices, orbax multi-process checkpoints and the preemption path without a
cluster. Tests use it (tests/test_distributed.py); on real hardware use the other scripts in
launch/.

Expects: run from anywhere with the Python that has xray_flax installed (it uses its own
interpreter, sys.executable); a free TCP port on 127.0.0.1 (picked automatically unless
--port). The workdir is shared by all processes (one local disk).

Signals: SIGTERM or SIGINT (Ctrl-C) to the launcher reaches every process as SIGTERM; JAX's
coordination service turns it into a preemption notice, and all processes save the same step
and exit 0; the same command resumes.
If one process fails, the others get SIGTERM and, 10 s later, SIGKILL (a process blocked in a
collective waiting for the failed one cannot stop by itself); if the launcher itself is killed,
the kernel kills the processes too (Linux).
Exit status: 0 when every process exits 0, else the first non-zero status.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environment(devices_per_process: int) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    return env


def _die_with_the_launcher() -> None:
    """Linux: the kernel kills a process when the launcher dies, even by SIGKILL (a test timeout),
    so no training process is left waiting forever for a collective."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def launch(
    num_processes: int, main_args: list[str], devices_per_process: int = 1, port: int = 0, grace_seconds: float = 10.0
) -> int:
    """Run the processes to the end; returns the exit status (see the module docstring)."""
    address = f"127.0.0.1:{port or free_port()}"
    env = process_environment(devices_per_process)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xray_flax.main",
                *main_args,
                f"--coordinator_address={address}",
                f"--num_processes={num_processes}",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=env,
            preexec_fn=_die_with_the_launcher,
            start_new_session=True,
        )  # a terminal's Ctrl-C reaches the launcher only
        for i in range(num_processes)
    ]

    def forward(signum, frame):
        # Ctrl-C too becomes SIGTERM: the processes save a checkpoint and stop together.
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = 0
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed and not status:
                status = failed[0]
                print(f"launch/local.py: a process exited with status {status}; stopping the others", file=sys.stderr)
                forward(signal.SIGTERM, None)
                deadline = time.monotonic() + grace_seconds
                while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                    time.sleep(0.2)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
        return status or next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], usage="%(prog)s --num_processes N [options] -- MAIN_ARGS..."
    )
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--devices_per_process", type=int, default=1, help="simulated CPU devices each")
    parser.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (0: a free one)")
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="arguments of python -m xray_flax.main")
    args = parser.parse_args()
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be >= 1")
    if not main_args:
        parser.error("give the arguments of xray_flax.main after --, e.g. -- --config configs/tiny.py --workdir W")
    return launch(args.num_processes, main_args, args.devices_per_process, args.port)


if __name__ == "__main__":
    sys.exit(main())
