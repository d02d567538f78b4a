"""At most so many lines of one kind a window, then one line saying how many were held back.

What a client controls must not control the size of our log: a stream of malformed CONNECTs put
8,200 broker lines a second into it, and a terminal restarting its sequence on every report
51,000 lines in 10 s (issue 12 attack).
"""

from __future__ import annotations

import logging
import threading
import time


class LogThrottle:
    def __init__(self, logger: logging.Logger, max_lines: int = 20, window_s: float = 10.0) -> None:
        self.logger = logger
        self.max_lines = max_lines
        self.window_s = window_s
        self._start = -float("inf")
        self._lines = 0
        self._held = 0
        self._lock = threading.Lock()  # the broker's log pump is a thread of its own

    def log(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._start >= self.window_s:
                held, self._held = self._held, 0
                self._start, self._lines = now, 0
                if held:
                    self.logger.warning("%d similar log lines held back in %g s", held,
                                        self.window_s)  # fmt: skip
            if self._lines >= self.max_lines:
                self._held += 1
                return
            self._lines += 1
        self.logger.log(level, msg, *args)
