"""What a client can make us log is bounded: N lines a window, then one line counting the rest."""

from __future__ import annotations

import logging
import time

import pytest

from fleet.server.log_throttle import LogThrottle


def test_a_flood_of_lines_is_held_back_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.throttle")
    throttle = LogThrottle(logger, max_lines=5, window_s=0.2)
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        for i in range(1000):
            throttle.log(logging.INFO, "Invalid protocol from client %d", i)
        assert len(caplog.records) == 5
        time.sleep(0.25)
        throttle.log(logging.INFO, "after the window")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[5] == "995 similar log lines held back in 0.2 s"
    assert messages[-1] == "after the window"
