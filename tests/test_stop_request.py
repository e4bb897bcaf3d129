"""The stop request's signal handler never logs: it may run inside a log handler's write."""

import logging
import os
import signal

from xray_flax import stop_request


class _Manager:
    def reached_preemption(self, step):
        return False


def test_a_signal_is_logged_by_the_loop_not_by_the_handler(caplog):
    stop = stop_request.StopRequest()
    try:
        with caplog.at_level(logging.WARNING, logger=stop_request.__name__):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next bytecode
            assert stop.received
            assert not caplog.records  # a write from the handler could be reentrant
            assert stop.requested(_Manager(), 3)
            assert [r.getMessage() for r in caplog.records] == [
                "received Ctrl-C: saving a checkpoint and stopping after this step (Ctrl-C again: stop now)"
            ]
            stop.requested(_Manager(), 4)
            assert len(caplog.records) == 1  # said once
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) != stop._handle


def test_a_signal_after_the_last_check_is_said_when_the_handlers_are_restored(caplog):
    stop = stop_request.StopRequest()
    with caplog.at_level(logging.WARNING, logger=stop_request.__name__):
        os.kill(os.getpid(), signal.SIGTERM)
        stop.restore()
    assert stop.received
    assert "received signal 15" in caplog.text
