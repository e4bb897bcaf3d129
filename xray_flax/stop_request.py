"""Stop a run cleanly, with a checkpoint, when the job is preempted or cancelled.

Shared by the detectors' loop (xray_flax/train.py) and the hidden-art family's loop
(xray_flax/hidden_art/train.py).
"""

from __future__ import annotations

import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)


class StopRequest:
    """Stop cleanly, with a checkpoint, when the job is being preempted or cancelled.

    One process: SIGTERM (a preemption, scancel, a job's time limit) or SIGINT (Ctrl-C; a
    second Ctrl-C stops at once, losing the steps since the last checkpoint). Several
    processes: the coordination service's preemption sync point, which JAX's distributed
    runtime raises on SIGTERM and which every process reaches at the same step, so they all
    save the same step; a Python handler there would replace the runtime's own.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = False
        self._notice = None  # what a signal asked for, logged from the loop (see _handle)
        self._previous = {}
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        # Not logged here: the handler runs between two bytecodes of the main thread, which may
        # be inside a log handler's write to the same file, and a buffered file written
        # reentrantly raises ("reentrant call inside BufferedWriter") and prints a traceback.
        self._notice = "Ctrl-C" if signum == signal.SIGINT else f"signal {signum}"
        self.received = True

    def _log_notice(self) -> None:
        if self._notice is not None:
            name, self._notice = self._notice, None
            log.warning("received %s: saving a checkpoint and stopping after this step (Ctrl-C again: stop now)", name)

    def requested(self, manager, step: int) -> bool:
        """Whether to stop now; `manager` is the orbax CheckpointManager that will save this step."""
        self._log_notice()
        if jax.process_count() > 1 and not self.received and manager.reached_preemption(step):
            log.warning("preemption notice at step %d: saving a checkpoint and stopping", step)
            self.received = True
        return self.received

    def restore(self) -> None:
        self._log_notice()  # a signal after the last check: still said
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
