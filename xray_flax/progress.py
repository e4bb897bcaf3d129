"""Progress lines with rate and ETA for every long loop (training steps, tiles scored or stitched).

`ReportProgress` reports as clu's `periodic_actions.ReportProgress` decides to (every N steps,
every N seconds, on given steps, always on the last; never on the first call), measures the
rate between reports and words its line for a log (`what: 120/400 steps (30%), 3.2 steps/s,
ETA 1m52s`). Its own code rather than clu's subclass: `clu.periodic_actions` imports
`clu.metric_writers`, which imports TensorFlow (xray_flax/summary.py says why that is gone).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (getrusage; KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ReportProgress:
    """Call `report(start)` once, then `report(done)` as work completes; logs
    `what: done/total unit (%), rate unit/s, ETA ... | detail` when the trigger fires: `done` a
    multiple of `every_steps` (then every step must be reported), `every_secs` seconds since the
    last line, `done` in `on_steps`, or `done == total`. Returns whether it logged.

    `detail` (e.g. the latest losses) is set by the caller before the call that reports; with a
    `writer` (xray_flax.summary), each line's rate also goes to TensorBoard as `<unit>_per_sec`.
    """

    def __init__(
        self,
        what: str,
        total: int,
        *,
        unit: str = "steps",
        every_steps: int | None = None,
        every_secs: float | None = 60.0,
        on_steps: Iterable[int] = (),
        writer=None,
    ):
        self.what, self.total, self.unit = what, total, unit
        self.detail = ""
        self._every_steps, self._every_secs = every_steps, every_secs
        self._on_steps = {*on_steps, total}
        self._writer = writer
        self._previous_step: int | None = None
        self._previous_time = 0.0
        self._last_step: int | None = None

    def __call__(self, step: int, t: float | None = None) -> bool:
        t = time.monotonic() if t is None else t
        if self._previous_step is None:  # the start: measured from, never reported
            self._previous_step, self._previous_time, self._last_step = step, t, step
            return False
        if self._every_steps is not None and step - self._last_step != 1:
            raise ValueError(
                f"ReportProgress with every_steps={self._every_steps} must be called after every step "
                f"(last step {self._last_step}, now {step})"
            )
        self._last_step = step
        if step == self._previous_step or not self._should_report(step, t):
            return False
        self._apply(step, t)
        self._previous_step, self._previous_time = step, t
        return True

    def _should_report(self, step: int, t: float) -> bool:
        return (
            (self._every_steps is not None and step % self._every_steps == 0)
            or (self._every_secs is not None and t - self._previous_time > self._every_secs)
            or step in self._on_steps
        )

    def _apply(self, step: int, t: float):
        rate = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
        eta = format_duration((self.total - step) / rate) if rate > 0 else "?"
        log.info(
            "%s: %d/%d %s (%.0f%%), %.2f %s/s, ETA %s%s",
            self.what,
            step,
            self.total,
            self.unit,
            100 * step / max(self.total, 1),
            rate,
            self.unit,
            eta,
            f" | {self.detail}" if self.detail else "",
        )
        if self._writer is not None:
            self._writer.write_scalars(step, {f"{self.unit}_per_sec": rate})
