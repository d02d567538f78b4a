"""How much one terminal may send: a token bucket per terminal.

A kiosk reports every few seconds; a hostile one (stolen credentials, a broken agent in a loop)
sent 6,700 valid reports a second and filled the disk at 65 MB/s (issue 12). The bucket holds
`burst` messages and refills at `rate_per_s`: an agent emptying its outbox after days offline
(its reports arrive as fast as the broker hands them over) fits in the burst, while a flood is
held to the sustained rate. What is over is not stored: the pipeline counts it and leaves one
dead letter per terminal and batch, so the flood costs neither disk nor a row per message.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TerminalRateLimit:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, terminal: str, now: float) -> bool:
        """Take one message's token; False when the terminal is over its rate."""
        b = self._buckets.get(terminal)
        if b is None:
            b = self._buckets[terminal] = _Bucket(self.burst, now)
        elif now > b.at:
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate_per_s)
            b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False
