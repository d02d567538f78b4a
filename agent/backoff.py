"""Capped exponential backoff with jitter, for reconnecting to the broker.

Thousands of kiosks lose the broker at the same moment (a server restart, a district network
outage). Without jitter they would all come back in lock-step and hammer it at each doubling.
"Equal jitter": the delay is drawn from [d/2, d], so it still grows and never collapses to zero.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rand = rand
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to the cap."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return ceiling / 2.0 + self._rand() * ceiling / 2.0

    def reset(self) -> None:
        """After a successful CONNACK: the next outage starts again from the base delay."""
        self.attempt = 0
