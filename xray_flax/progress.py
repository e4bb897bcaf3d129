"""Progress lines with rate and ETA for every long loop (training steps, tiles scored or stitched).

clu's `periodic_actions.ReportProgress` decides when to report (every N steps, every N
seconds, on given steps, always on the last) and measures the rate between reports and the
share of time spent in `timed(...)` parts; this subclass only words its line for a log
(`what: 120/400 steps (30%), 3.2 steps/s, ETA 1m52s`) instead of setting work-unit notes.
"""

from __future__ import annotations

import logging
import os
import resource

from clu import periodic_actions

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


class ReportProgress(periodic_actions.ReportProgress):
    """Call `report(start)` once, then `report(done)` as work completes; logs
    `what: done/total unit (%), rate unit/s, ETA ... | detail` when clu's trigger fires.

    `detail` (e.g. the latest losses) is set by the caller before the call that reports.
    """

    def __init__(self, what: str, total: int, *, unit: str = "steps", **kwargs):
        super().__init__(num_train_steps=total, **kwargs)
        self.what, self.total, self.unit = what, total, unit
        self.detail = ""

    def _apply(self, step: int, t: float):
        rate = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
        eta = format_duration((self.total - step) / rate) if rate > 0 else "?"
        parts = ", ".join(f"{name} {format_duration(dt)}" for name, dt in sorted(self._time_per_part.items()))
        detail = " | ".join(x for x in (self.detail, parts) if x)
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
            f" | {detail}" if detail else "",
        )
        if self._writer is not None:
            self._writer.write_scalars(step, {f"{self.unit}_per_sec": rate})
