"""Online/offline per terminal: the retained presence topic, the Last Will, a heartbeat timeout.

Pure logic with an injected clock: every call takes `now` (seconds, the server's clock) and
returns the transitions it caused; `tick(now)` finds the timeouts. Nothing here does I/O.

Signals
- Alive: an `online:true` presence, or any message carrying a seq (status, event) -- anything a
  live agent sent. `alive()` is the entry point for the latter.
- Down, with a reason:
  * `timeout`: nothing alive for `timeout_intervals` x the terminal's status interval
    (default 3 x 30 s);
  * `clean` / `will`: an `online:false` presence. The agent (agent/mqtt_link.py) sends the same
    payload for both: a clean shutdown publishes `online:false` itself, and its Last Will is the
    same `online:false` -- but the Will is built just *before* connecting, so its `ts` is not
    later than the `online:true` that the agent publishes on CONNACK; a clean goodbye is built at
    shutdown, after it. Rule: an explicit `"reason": "clean" | "will"` field in the payload wins
    (an added field the agent may send); otherwise `ts` later than the last `online:true` `ts`
    seen from that terminal means `clean`, and anything else (not later, or no online seen
    since the server started) means `will`. Both ts come from the agent's clock, so the server's
    clock does not enter into it. Timestamps have one-second resolution: an agent stopped within
    the second it connected is recorded as `will` -- the safe side for an operator.

Coming back (issue 20: a report is proof of life)
- Going offline is reported at once, with the reason of the first down signal; further down
  signals while offline change nothing.
- Coming back online is reported at the first alive signal after the latest down signal: a kiosk
  that reports is online, whatever came before. (`hold_s`, 0 by default, can delay it to
  max(first alive signal after the latest down signal, latest down signal + `hold_s`), and only
  if no down signal came in between; a pending online is then confirmed by `tick()`.) Alerts,
  not presence, absorb a flapping link: a Last Will raises terminal_offline only if the terminal
  is not back within its grace (fleet.server.alerts.rules).

A server restart: `restore()` the state from the DB; a terminal restored as online is given a full
timeout from the restore time, so queued messages can drain before anyone is called offline.

The server's own link to the broker (issue 13): while it is down (`link_lost`: the server starting,
the broker restarting or unreachable) the server hears nobody, so silence says nothing and nobody
is timed out; when it is back (`link_back`) every terminal gets a full timeout from then to report
(terminals reconnect with their own backoff). A goodbye (`clean`) counts at once. A Last Will
heard meanwhile waits too: a broker that stops (or restarts) publishes the Will of every client
connected to it, alive or not, and the server reads them from its session when it is back --
every kiosk called offline for a restart (measured: all of them, with an alert each). Such a Will
is held until the grace ends and then counts (reason `will`) only if the terminal has not been
heard since.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

OfflineReason = Literal["clean", "will", "timeout"]
_EXPLICIT: frozenset[str] = frozenset({"clean", "will"})


@dataclass(frozen=True, slots=True)
class Transition:
    terminal: str
    online: bool
    #: Why it went offline; None for online.
    reason: OfflineReason | None
    at: float


class _State:
    __slots__ = ("last_alive", "last_down", "online", "online_ts", "reason", "up_since", "will_at")

    def __init__(self) -> None:
        self.online: bool | None = None  # what was last reported
        self.reason: OfflineReason | None = None
        self.last_alive: float | None = None
        self.last_down: float | None = None
        #: First alive signal since the latest down signal; None while the link is down.
        self.up_since: float | None = None
        self.online_ts: datetime | None = None  # agent ts of the latest online:true
        #: When a Will heard during the link's grace arrived (held until the grace ends).
        self.will_at: float | None = None


class PresenceTracker:
    def __init__(
        self,
        *,
        status_interval_s: float = 30.0,
        timeout_intervals: float = 3.0,
        hold_s: float = 0.0,
    ) -> None:
        self.status_interval_s = status_interval_s
        self.timeout_intervals = timeout_intervals
        self.hold_s = hold_s
        self._states: dict[str, _State] = {}
        self._intervals: dict[str, float] = {}
        #: The server's link to the broker: down since (None: up), and up since.
        self._link_down_at: float | None = None
        self._link_up_at = float("-inf")

    # -- configuration and state ------------------------------------------------------------

    def set_interval(self, terminal: str, status_interval_s: float) -> None:
        """This terminal reports every `status_interval_s` (its pushed config says so)."""
        self._intervals[terminal] = status_interval_s

    def timeout_s(self, terminal: str) -> float:
        return self.timeout_intervals * self._intervals.get(terminal, self.status_interval_s)

    def is_online(self, terminal: str) -> bool | None:
        s = self._states.get(terminal)
        return s.online if s else None

    def reason(self, terminal: str) -> OfflineReason | None:
        s = self._states.get(terminal)
        return s.reason if s else None

    def restore(
        self,
        terminal: str,
        *,
        online: bool,
        reason: OfflineReason | None,
        now: float,
        changed_at: float | None = None,
    ) -> None:
        """Start from the DB's view (see the module docstring for the grace on restart)."""
        s = self._states.setdefault(terminal, _State())
        s.online, s.reason = online, (None if online else reason)
        if online:
            s.last_alive = s.up_since = now
        else:
            s.last_down = changed_at if changed_at is not None else now
            s.up_since = None

    def link_lost(self, now: float) -> None:
        """The server cannot hear the terminals (see the module docstring): no timeouts."""
        if self._link_down_at is None:
            self._link_down_at = now

    def link_back(self, now: float) -> None:
        """The server hears the terminals again: each has a full timeout from `now` to report."""
        self._link_down_at = None
        self._link_up_at = now

    def grace(self, now: float) -> None:
        """The server heard nobody for a while (its process stalled): each terminal gets a full
        timeout from `now`, as after `link_back`, whatever the link's state."""
        self._link_up_at = max(self._link_up_at, now)

    # -- signals ---------------------------------------------------------------------------

    def presence(
        self,
        terminal: str,
        *,
        online: bool,
        ts: datetime,
        now: float,
        reason: str | None = None,
    ) -> list[Transition]:
        """A message on the presence topic (retained ones included)."""
        s = self._states.setdefault(terminal, _State())
        if online:
            if s.online_ts is None or ts > s.online_ts:
                s.online_ts = ts
            return self._alive(terminal, s, now)
        why: OfflineReason
        if reason in _EXPLICIT:
            why = "clean" if reason == "clean" else "will"
        elif s.online_ts is not None and ts > s.online_ts:
            why = "clean"
        else:
            why = "will"
        if why == "will" and self._in_grace(terminal, now):
            s.will_at = now
            return []
        return self._down(terminal, s, now, why)

    def alive(self, terminal: str, now: float) -> list[Transition]:
        """A status report, event or other message from the terminal arrived."""
        return self._alive(terminal, self._states.setdefault(terminal, _State()), now)

    def tick(self, now: float) -> list[Transition]:
        out: list[Transition] = []
        for terminal, s in self._states.items():
            out.extend(self._check(terminal, s, now))
        return out

    def terminals(self) -> Iterable[str]:
        return self._states.keys()

    # -- the rules -------------------------------------------------------------------------

    def _alive(self, terminal: str, s: _State, now: float) -> list[Transition]:
        s.last_alive = now
        s.will_at = None  # heard after its Will: that Will was the broker's, not the kiosk's
        if s.up_since is None:
            s.up_since = now
        if s.online is None or (s.online is False and self._hold_over(s, now)):
            return [self._report(terminal, s, True, None, now)]
        return []

    def _down(self, terminal: str, s: _State, now: float, why: OfflineReason) -> list[Transition]:
        s.last_down = now
        s.up_since = None
        if s.online is False:
            return []  # already offline: keep the first reason, do not flap
        return [self._report(terminal, s, False, why, now)]

    def _in_grace(self, terminal: str, now: float) -> bool:
        return self._link_down_at is not None or now - self._link_up_at <= self.timeout_s(terminal)

    def _check(self, terminal: str, s: _State, now: float) -> list[Transition]:
        if s.will_at is not None and not self._in_grace(terminal, now):
            s.will_at = None
            return self._down(terminal, s, now, "will")
        if s.up_since is not None and s.last_alive is not None:
            heard = max(s.last_alive, self._link_up_at)
            if self._link_down_at is None and now - heard > self.timeout_s(terminal):
                return self._down(terminal, s, now, "timeout")
            if s.online is False and self._hold_over(s, now):
                return [self._report(terminal, s, True, None, now)]
        return []

    def _hold_over(self, s: _State, now: float) -> bool:
        return s.last_down is None or now - s.last_down >= self.hold_s

    @staticmethod
    def _report(
        terminal: str, s: _State, online: bool, why: OfflineReason | None, now: float
    ) -> Transition:
        s.online, s.reason = online, why
        return Transition(terminal, online, why, now)
