"""Shared helpers for the peer (PyTorch) benchmarks in this folder.

Timing rule used everywhere: `warmup` untimed calls, then `repeats` timed calls,
each timed call measured with time.perf_counter around one full step; the
reported figure is the median of the timed calls (all raw times are kept in the
JSON).  FLOPs are counted with torch.utils.flop_counter.FlopCounterMode, which
counts matmul/conv/bmm FLOPs only (2 FLOPs per multiply-add; BN, activations,
pooling, upsampling, loss elementwise ops are NOT counted).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def env_info(extra: dict | None = None) -> dict:
    import torch

    info = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
        "cpu": cpu_name(),
        "os_cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "argv": sys.argv,
    }
    if extra:
        info.update(extra)
    return info


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NCPU = os.cpu_count() or 1


def _busy_steal_s() -> tuple[float, float]:
    """Machine-wide busy CPU seconds (all processes) and steal seconds, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + irq + softirq) / _HZ, steal / _HZ


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def wait_idle(timeout_s: float, threshold: float = 0.10, window_s: float = 2.0) -> float:
    """Block until the machine's CPU use by others is < threshold (fraction of all cores)."""
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < timeout_s:
        b0, s0 = _busy_steal_s(), _self_cpu_s()
        time.sleep(window_s)
        b1, s1 = _busy_steal_s(), _self_cpu_s()
        foreign = max(0.0, (b1[0] - b0[0]) - (s1 - s0)) / (window_s * _NCPU)
        if foreign < threshold:
            break
    return time.perf_counter() - t_start


class Clean:
    """Contention guard settings (other processes on this 2-core box distort timings)."""

    max_foreign = 0.05  # max fraction of machine CPU used by others during a timed call
    wait_timeout_s = 900.0
    max_extra = 3  # extra calls allowed to replace contaminated ones


def time_fn(fn: Callable[[], object], warmup: int, repeats: int, info: dict | None = None) -> list[float]:
    """Median-ready timings; calls during which other processes used > Clean.max_foreign of
    the machine are discarded (after waiting for idle) and redone, up to Clean.max_extra times."""
    waited = wait_idle(Clean.wait_timeout_s) if Clean.wait_timeout_s > 0 else 0.0
    for _ in range(warmup):
        fn()
    times, foreign_fracs, discarded, steal = [], [], [], 0.0
    extra = 0
    while len(times) < repeats:
        b0, s0 = _busy_steal_s(), _self_cpu_s()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        b1, s1 = _busy_steal_s(), _self_cpu_s()
        ff = max(0.0, (b1[0] - b0[0]) - (s1 - s0)) / (dt * _NCPU)
        steal += b1[1] - b0[1]
        if ff > Clean.max_foreign and extra < Clean.max_extra and Clean.wait_timeout_s > 0:
            discarded.append({"s": dt, "foreign_frac": ff})
            extra += 1
            waited += wait_idle(Clean.wait_timeout_s)
            continue
        times.append(dt)
        foreign_fracs.append(ff)
    if info is not None:
        info.update(
            {
                "foreign_cpu_frac_per_call": [round(x, 4) for x in foreign_fracs],
                "max_foreign_cpu_frac": max(foreign_fracs) if foreign_fracs else None,
                "discarded_calls": discarded,
                "waited_for_idle_s": round(waited, 1),
                "steal_s": round(steal, 2),
            }
        )
    return times


def summarize(times: list[float], batch: int) -> dict:
    med = statistics.median(times)
    return {
        "median_s_per_call": med,
        "median_s_per_image": med / batch,
        "images_per_s": batch / med,
        "min_s_per_call": min(times),
        "max_s_per_call": max(times),
        "all_s_per_call": times,
    }


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs (2*MAC) of matmul/conv-like ops executed by fn()."""
    from torch.utils.flop_counter import FlopCounterMode

    fc = FlopCounterMode(display=False)
    with fc:
        fn()
    return int(fc.get_total_flops())


def print_table(rows: list[dict], title: str) -> None:
    hdr = (
        f"{'mode':<6} {'size':>5} {'batch':>5} {'s/call':>9} {'s/image':>9} {'img/s':>8} "
        f"{'GFLOP/img':>10} {'GFLOP/s':>8} {'foreign':>8}"
    )
    print(f"\n== {title} ==")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        gf = r.get("gflop_per_image")
        gfs = r.get("achieved_gflop_per_s")
        print(
            f"{r['mode']:<6} {r['size']:>5} {r['batch']:>5} {r['median_s_per_call']:>9.3f} "
            f"{r['median_s_per_image']:>9.3f} {r['images_per_s']:>8.3f} "
            f"{(f'{gf:.1f}' if gf is not None else '-'):>10} {(f'{gfs:.1f}' if gfs is not None else '-'):>8}"
            f" {r.get('max_foreign_cpu_frac') or 0:>8.3f}"
        )
    sys.stdout.flush()


def write_json(path: str | None, obj: dict) -> None:
    if not path:
        return
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    print(f"wrote {path}")


def parse_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def add_common_args(p) -> None:
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-sizes", default="256", help="comma list of square image sizes for the train step")
    p.add_argument("--train-batches", default="1,4")
    p.add_argument("--infer-sizes", default="256,512")
    p.add_argument("--infer-batches", default="1,4")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing each config")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per config (median reported)")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--channels-last", action="store_true", help="use torch.channels_last memory format")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write JSON results here")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.05,
        help="redo a timed call if other processes used more than this fraction of the machine",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=900.0,
        help="max seconds to wait for an idle machine before each config / after a contaminated call (0 = off)",
    )


def run_suite(args, title: str, make_train, make_infer, flop_notes: str = "") -> tuple[list[dict], dict]:
    """make_train(batch, size) / make_infer(batch, size) return a zero-arg callable doing one call."""
    import gc

    rows: list[dict] = []
    flops: dict[str, int] = {}
    Clean.max_foreign = args.max_foreign
    Clean.wait_timeout_s = args.wait_idle

    def flops_per_image(mode: str, size: int, maker) -> int | None:
        if args.no_flops:
            return None
        key = f"{mode}@{size}"
        if key not in flops:
            fn = maker(1, size)
            flops[key] = count_flops(fn)
            del fn
            gc.collect()
        return flops[key]

    plan = []
    if not args.skip_train:
        plan += [
            ("train", s, b, make_train) for s in parse_list(args.train_sizes) for b in parse_list(args.train_batches)
        ]
    if not args.skip_infer:
        plan += [
            ("infer", s, b, make_infer) for s in parse_list(args.infer_sizes) for b in parse_list(args.infer_batches)
        ]

    for mode, size, batch, maker in plan:
        fpi = flops_per_image(mode, size, maker)
        fn = maker(batch, size)
        t0 = time.perf_counter()
        cinfo: dict = {}
        times = time_fn(fn, args.warmup, args.repeats, cinfo)
        wall = time.perf_counter() - t0
        row = {"mode": mode, "size": size, "batch": batch, "warmup": args.warmup, "repeats": args.repeats}
        row.update(summarize(times, batch))
        row.update(cinfo)
        if fpi is not None:
            row["gflop_per_image"] = fpi / 1e9
            row["achieved_gflop_per_s"] = fpi / 1e9 / row["median_s_per_image"]
        row["config_wall_s"] = wall
        rows.append(row)
        print(
            f"[{title}] {mode} size={size} batch={batch}: median {row['median_s_per_call']:.3f} s/call, "
            f"{row['median_s_per_image']:.3f} s/img (all: {', '.join(f'{t:.3f}' for t in times)}; "
            f"max foreign cpu {row['max_foreign_cpu_frac']:.3f}, discarded {len(row['discarded_calls'])}, "
            f"waited {row['waited_for_idle_s']} s)",
            flush=True,
        )
        del fn
        gc.collect()

    print_table(rows, title)
    flops_out = {k: v for k, v in flops.items()}
    if flop_notes:
        flops_out["note"] = flop_notes
    return rows, flops_out
