"""SIGTERM (a pod evicted or preempted) is noted even when it lands while a log line is written."""

from __future__ import annotations

import io
import logging
import signal

import pytest

from influence_core import runtime


class ReentrantStream(io.StringIO):
    """A stream that refuses a write, as stderr does when a signal handler writes to it while the
    line it interrupted is being written."""

    def write(self, text: str) -> int:
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name=2>")


@pytest.mark.parametrize("graceful", [True, False])
def test_sigterm_during_a_log_line_is_not_lost(graceful, monkeypatch, capfd, caplog):
    caplog.set_level(logging.WARNING, logger="jobs")  # whatever level a stage run before in this process left
    monkeypatch.setattr(runtime, "_stop_requested", runtime.threading.Event())  # this test's own
    monkeypatch.setattr("sys.stderr", ReentrantStream())  # logging's own error report meets it too
    handler = logging.StreamHandler(ReentrantStream())
    logging.getLogger("jobs").addHandler(handler)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        runtime.handle_sigterm(graceful=graceful)
        on_sigterm = signal.getsignal(signal.SIGTERM)
        if graceful:
            on_sigterm(signal.SIGTERM, None)
        else:
            with pytest.raises(runtime.Terminated):
                on_sigterm(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
        logging.getLogger("jobs").removeHandler(handler)
    assert runtime.stop_requested()
    assert "SIGTERM: " in capfd.readouterr().err  # written to the file descriptor itself instead
