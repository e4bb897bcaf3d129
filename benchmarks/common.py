"""Timing helpers shared by the model benchmarks, in the peers' format (benchmarks/peer/README.md).

Timing rule (the same as the PyTorch peers, so the two sides compare): `warmup` untimed
calls, then `repeats` timed calls of one full step, median reported, raw times kept.

Contention guard: this 2-core machine is shared, so before each configuration we wait
(up to `wait_idle_s`) until other processes use < 10% of the CPUs, and a timed call during
which others used more than `max_foreign` of the machine (machine busy time from /proc/stat
minus our own CPU time) is discarded and redone, at most 3 times. The foreign fraction of
every kept call goes into the JSON, so a disturbed number can be recognised afterwards.
The idea (and the JSON keys) are those of benchmarks/peer/bench_common.py.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NCPU = os.cpu_count() or 1


def _machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of all processes, steal seconds) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + irq + softirq) / _HZ, steal / _HZ


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def foreign_fraction(busy0: float, own0: float, seconds: float) -> float:
    busy1, own1 = _machine_busy_s()[0], _own_cpu_s()
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (max(seconds, 1e-9) * _NCPU)


def wait_idle(timeout_s: float, threshold: float = 0.10, window_s: float = 2.0) -> float:
    """Block until other processes use < threshold of the machine; returns seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        busy0, own0 = _machine_busy_s()[0], _own_cpu_s()
        time.sleep(window_s)
        if foreign_fraction(busy0, own0, window_s) < threshold:
            break
    return time.perf_counter() - start


def time_calls(
    fn: Callable[[], object],
    warmup: int,
    repeats: int,
    *,
    max_foreign: float = 0.05,
    wait_idle_s: float = 900.0,
    max_redo: int = 3,
) -> tuple[list[float], dict]:
    """Timed calls of fn (which must block until its result is ready) and contention stats."""
    waited = wait_idle(wait_idle_s) if wait_idle_s > 0 else 0.0
    for _ in range(warmup):
        fn()
    times, fractions, discarded, steal = [], [], [], 0.0
    while len(times) < repeats:
        busy0, steal0 = _machine_busy_s()
        own0 = _own_cpu_s()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        frac = foreign_fraction(busy0, own0, dt)
        steal += _machine_busy_s()[1] - steal0
        if frac > max_foreign and len(discarded) < max_redo and wait_idle_s > 0:
            discarded.append({"s": dt, "foreign_frac": round(frac, 4)})
            waited += wait_idle(wait_idle_s)
            continue
        times.append(dt)
        fractions.append(frac)
    return times, {
        "foreign_cpu_frac_per_call": [round(x, 4) for x in fractions],
        "max_foreign_cpu_frac": max(fractions),
        "discarded_calls": discarded,
        "waited_for_idle_s": round(waited, 1),
        "steal_s": round(steal, 2),
        "load_average": list(os.getloadavg()),
    }


def summarize(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {
        "median_s_per_call": median,
        "median_s_per_image": median / batch,
        "images_per_s": batch / median,
        "min_s_per_call": min(times),
        "max_s_per_call": max(times),
        "all_s_per_call": times,
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info(extra: dict | None = None) -> dict:
    # Imported late: bench_pipeline imports this module for cpu_name, and its parent process must
    # stay without JAX (on Linux a child's ru_maxrss starts at the parent's peak).
    import jax  # noqa: PLC0415
    import jaxlib  # noqa: PLC0415

    info = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "cpu": cpu_name(),
        "os_cpu_count": os.cpu_count(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "load_average_at_start": list(os.getloadavg()),
        "argv": sys.argv,
    }
    if extra:
        info.update(extra)
    return info


def write_json(path: str | None, obj: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    print(f"wrote {path}", flush=True)


def parse_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]
