"""A simulated terminal's self-update: the events of agent/update/worker.py, without the files.

When an applied desired document names agent version V (`"agent": {"version": V}`), the rules of
the real worker (agent.update.worker.UpdateWorker.want / handle) decide whether to act:

    V is the running version                    nothing
    V was already attempted for this document   nothing (retried only when a newer document
                                                names it: a new rollout)
    an update is in flight                      it finishes first; the latest wish is then
                                                looked at again (the real agent restarts, and
                                                applies its stored document on start)
    otherwise                                   `update_downloading`, after a share of the
                                                simulated time `update_installing`, at the end
                                                `update_succeeded` (the terminal then runs V) or,
                                                for a bad release, `update_rolled_back`

Event payloads are the real agent's: `{version, from_version}` while in progress, and
agent.update.updater.Outcome.to_json() without `event` at the end: `{version, from_version,
reason, attempt}`, where `attempt` counts consecutive attempts at the same target as
Updater.begin does. The time covers download, install, restart and the launcher's health check;
the restart itself is simulated as time (no reconnect): at the end the terminal publishes a fresh
retained presence carrying the version it now runs.

A release is bad when it is listed in `bad_versions`, or by chance (`failure_rate` per attempt).
No clocks of its own: every method takes `now` (real monotonic seconds, as the report schedule).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

#: The launcher's reason for a simulated failed health check.
ROLLED_BACK_REASON = "health check failed: simulated"
#: Share of the simulated time spent downloading (the rest: install, restart, health check).
DOWNLOAD_SHARE = 0.3

#: (event name, payload) pairs for the terminal to publish, in order.
Emitted = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class UpdatePolicy:
    """What every simulated terminal shares about updates."""

    #: Simulated seconds from the document to the outcome, drawn uniformly per attempt.
    seconds: tuple[float, float] = (1.0, 2.0)
    #: Releases whose health check always fails (rolled back).
    bad_versions: frozenset[str] = frozenset()
    #: Probability that any other attempt fails its health check.
    failure_rate: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.seconds
        if not 0 <= low <= high:
            raise ValueError(f"update seconds: expected 0 <= min <= max, got {low}, {high}")
        if not 0 <= self.failure_rate <= 1:
            raise ValueError(
                f"update failure rate: a probability in [0, 1], got {self.failure_rate}"
            )


@dataclass
class _InFlight:
    version: str
    from_version: str
    attempt: int
    installing_at: float
    done_at: float
    installing: bool = False


class SimUpdater:
    """One terminal's update state: the version it runs, its attempt record, the one in flight."""

    def __init__(self, running: str, policy: UpdatePolicy, rng: random.Random) -> None:
        self.running = running
        self.policy = policy
        self._rng = rng
        #: (version, document) of the last attempt, as the worker's attempt file.
        self.attempted: tuple[str, int | None] | None = None
        #: (target, attempt) of the last update begun, as the updater's state record.
        self._last: tuple[str, int] | None = None
        #: The latest document's wish, looked at again when the update in flight ends.
        self._wanted: tuple[str, int | None] | None = None
        self.in_flight: _InFlight | None = None

    @property
    def due(self) -> float | None:
        """When `poll` next has something to do (None: nothing in flight)."""
        f = self.in_flight
        if f is None:
            return None
        return f.done_at if f.installing else f.installing_at

    def want(self, version: str | None, document: int | None, now: float) -> Emitted:
        """A newly applied document (version `document`) names `version` (None: no target)."""
        if version is None or version == self.running:
            return []
        self._wanted = (version, document)
        if self.in_flight is not None:
            return []
        return self._begin(now)

    def poll(self, now: float) -> tuple[Emitted, bool]:
        """Steps whose time has come; (events, True when the outcome changed the running version).

        Also starts the update a document asked for while another was in flight.
        """
        out: Emitted = []
        switched = False
        f = self.in_flight
        if f is not None and not f.installing and now >= f.installing_at:
            f.installing = True
            out.append(
                ("update_installing", {"version": f.version, "from_version": f.from_version})
            )
        if f is not None and f.installing and now >= f.done_at:
            self.in_flight = None
            bad = f.version in self.policy.bad_versions or (
                self.policy.failure_rate > 0 and self._rng.random() < self.policy.failure_rate
            )
            outcome = {
                "version": f.version,
                "from_version": f.from_version,
                "reason": ROLLED_BACK_REASON if bad else None,
                "attempt": f.attempt,
            }
            if not bad:
                self.running = f.version
                switched = True
            out.append(("update_rolled_back" if bad else "update_succeeded", outcome))
            if self._wanted is not None and self._wanted[0] != self.running:
                out.extend(self._begin(now))
        return out, switched

    def _begin(self, now: float) -> Emitted:
        assert self._wanted is not None
        version, document = self._wanted
        if self.attempted == (version, document):
            return []
        self.attempted = (version, document)
        attempt = self._last[1] + 1 if self._last is not None and self._last[0] == version else 1
        self._last = (version, attempt)
        total = self._rng.uniform(*self.policy.seconds)
        self.in_flight = _InFlight(
            version=version,
            from_version=self.running,
            attempt=attempt,
            installing_at=now + total * DOWNLOAD_SHARE,
            done_at=now + total,
        )
        return [("update_downloading", {"version": version, "from_version": self.running})]
