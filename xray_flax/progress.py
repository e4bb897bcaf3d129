"""Progress lines with rate and ETA for every long loop (training steps, tiles scored or stitched).

`ReportProgress` reports as clu's `periodic_actions.ReportProgress` decides to (every N steps,
every N seconds, on given steps, always on the last; never on the first call), measures the
rate between reports and words its line for a log (`what: 120/400 steps (30%), 3.2 steps/s,
ETA 1m52s`). Unlike clu's, the first rate leaves out the first step after the start: that step
compiles the loop's program (seconds to minutes), which says nothing of the time still to go.
Its own code rather than clu's subclass: `clu.periodic_actions` imports `clu.metric_writers`,
which imports TensorFlow (xray_flax/summary.py says why that is gone).
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

    The rate is measured from the first call after the start on (then between lines): the work
    before it compiles the program (the first batch or step). A line at that first call says
    how long it took, without a rate or ETA.

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
        # The last report (or the start): the triggers count from it.
        self._previous_step: int | None = None
        self._previous_time = 0.0
        self._last_step: int | None = None
        # Where the rate is measured from: the end of the first step after the start, then
        # each report; None until that first step is done.
        self._rate_from: tuple[int, float] | None = None

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
        if step == self._previous_step:
            return False
        first = self._rate_from is None
        if first:
            self._rate_from = (step, t)
        if not self._should_report(step, t):
            return False
        if first:
            self._apply_first(step, t)
        else:
            self._apply(step, t)
        self._previous_step, self._previous_time = step, t
        self._rate_from = (step, t)
        return True

    def _should_report(self, step: int, t: float) -> bool:
        return (
            (self._every_steps is not None and step % self._every_steps == 0)
            or (self._every_secs is not None and t - self._previous_time > self._every_secs)
            or step in self._on_steps
        )

    def _apply(self, step: int, t: float):
        rate_step, rate_time = self._rate_from
        rate = (step - rate_step) / max(t - rate_time, 1e-9)
        eta = format_duration((self.total - step) / rate) if rate > 0 else "?"
        log.info("%s, %.2f %s/s, ETA %s%s", self._done(step), rate, self.unit, eta, self._detail())
        if self._writer is not None:
            self._writer.write_scalars(step, {f"{self.unit}_per_sec": rate})

    def _apply_first(self, step: int, t: float):
        # Reported at the first step after the start: its time may include compiling, so it
        # gives no rate; the next line will.
        log.info(
            "%s in %.1fs (the first, which may include compiling): rate and ETA from the next line%s",
            self._done(step),
            t - self._previous_time,
            self._detail(),
        )

    def _done(self, step: int) -> str:
        return f"{self.what}: {step}/{self.total} {self.unit} ({100 * step / max(self.total, 1):.0f}%)"

    def _detail(self) -> str:
        return f" | {self.detail}" if self.detail else ""
