"""Per (terminal, rule) alert state machine: pure, deterministic, clock passed in by the caller.

    state      condition  event                                   next      transition
    idle       present    held for raise_delay_s                  active    Opened
    idle       absent     -                                       idle      -
    active     absent     at once (flapping: absent for hold_down_s) idle   Cleared
    active     present    -  (an absence in progress is forgotten) active    -
    any        unknown    timers restart, state kept               same      -

Clear on evidence, hold on doubt (issue 20): a report that shows the fault gone (paper refilled,
the door closed) clears its alert at once -- a refill worker must see the kiosk go green. Only a
condition that has flapped (opened FLAP_OPENS times within FLAP_WINDOW_S) waits its rule's
hold-down before clearing, and its alerts say so in their detail ("flapping").

Acknowledging marks an active alert without closing it: only the condition clearing closes it, and
a condition that comes back afterwards opens a new alert. The ingest persists the transitions; the
DB's one-active-alert-per-(terminal, rule) constraint is the backstop. Calls for one terminal must
be serialised by the caller (one ingest task per message, in order); the engine holds no locks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from fleet.server.alerts.rules import RULES, Rule, RuleHit, Severity

#: A condition that opened this many alerts within FLAP_WINDOW_S is flapping.
FLAP_OPENS = 3
FLAP_WINDOW_S = 600.0


@dataclass(frozen=True)
class Opened:
    terminal: str
    rule: str
    severity: Severity
    at: datetime
    #: When the condition was first seen (earlier than `at` when the rule has a raise delay).
    since: datetime
    detail: str = ""


@dataclass(frozen=True)
class Cleared:
    terminal: str
    rule: str
    at: datetime
    opened_at: datetime
    acknowledged: bool


Transition = Opened | Cleared


@dataclass(frozen=True)
class ActiveAlert:
    """An open alert, as the engine holds it and as it is restored from the DB after a restart."""

    terminal: str
    rule: str
    opened_at: datetime
    acknowledged: bool = False


@dataclass(frozen=True)
class Timing:
    raise_delay_s: float
    hold_down_s: float


@dataclass
class _State:
    active: ActiveAlert | None = None
    #: Condition present since (idle: counting towards the raise delay).
    present_since: datetime | None = None
    #: Condition absent since (active: counting towards the hold-down).
    absent_since: datetime | None = None
    detail: str = ""
    #: The raise delay of this occurrence when its hit set one (RuleHit.raise_delay_s).
    raise_delay_s: float | None = None


class AlertEngine:
    def __init__(
        self,
        rules: Mapping[str, Rule] = RULES,
        timings: Mapping[str, Timing] | None = None,
        hold_down_s: float | None = None,
    ) -> None:
        """`timings` overrides a rule's delays; `hold_down_s` overrides every rule's hold-down."""
        self._rules = rules
        self._timing = {
            rid: Timing(r.raise_delay_s, r.hold_down_s if hold_down_s is None else hold_down_s)
            for rid, r in rules.items()
        }
        self._timing.update(timings or {})
        #: terminal -> rule -> state; only rules alerting or pending are kept.
        self._terms: dict[str, dict[str, _State]] = {}
        #: (terminal, rule) -> when its latest alerts opened (the last FLAP_OPENS), for flapping.
        self._opens: dict[tuple[str, str], deque[datetime]] = {}

    def restore(self, alerts: Iterable[ActiveAlert]) -> None:
        """Load the DB's active alerts after a restart; unknown rules are skipped (rule retired)."""
        for a in alerts:
            if a.rule in self._rules:
                self._terms.setdefault(a.terminal, {})[a.rule] = _State(active=a)

    def update(
        self,
        terminal: str,
        now: datetime,
        hits: Iterable[RuleHit],
        unknown: Collection[str] = (),
        scope: Collection[str] | None = None,
    ) -> list[Transition]:
        """Feed one evaluation for a terminal. Rules in `scope` (default: all) that are neither
        hit nor unknown are absent; rules outside it are left alone, so separate sources (status
        reports, presence, the forecast job) can each update only the rules they decide."""
        present = {h.rule: h for h in hits}
        for rid in (*present, *unknown, *(scope or ())):
            if rid not in self._rules:
                raise ValueError(f"unknown alert rule {rid!r}")
        states = self._terms.setdefault(terminal, {})
        for rid in present.keys() - states.keys():
            states[rid] = _State()
        for rid, st in states.items():
            if scope is not None and rid not in scope and rid not in present:
                continue
            if rid in present:
                st.absent_since = None
                st.detail = present[rid].detail
                if st.present_since is None:
                    st.present_since = now
                    st.raise_delay_s = present[rid].raise_delay_s
            elif rid in unknown:
                st.present_since = st.absent_since = None
            else:
                st.present_since = None
                if st.active is not None and st.absent_since is None:
                    st.absent_since = now
        return self._advance(terminal, now)

    def tick(self, now: datetime) -> list[Transition]:
        """Let timers expire without a new report (raise delays and hold-downs run on time)."""
        return [t for terminal in sorted(self._terms) for t in self._advance(terminal, now)]

    def acknowledge(self, terminal: str, rule: str) -> bool:
        """Mark an active alert acknowledged; False when none is active or it already was."""
        st = self._terms.get(terminal, {}).get(rule)
        if st is None or st.active is None or st.active.acknowledged:
            return False
        a = st.active
        st.active = ActiveAlert(a.terminal, a.rule, a.opened_at, acknowledged=True)
        return True

    def active(self, terminal: str | None = None) -> list[ActiveAlert]:
        terminals = sorted(self._terms) if terminal is None else [terminal]
        return [
            st.active
            for t in terminals
            for _, st in sorted(self._terms.get(t, {}).items())
            if st.active is not None
        ]

    def active_rules(self, terminal: str) -> frozenset[str]:
        """The rules alerting for a terminal: `evaluate(..., active=)` needs them for hysteresis."""
        return frozenset(a.rule for a in self.active(terminal))

    def forget(self, terminal: str) -> None:
        """Drop a deregistered terminal's state (its alerts are closed by whoever removed it)."""
        self._terms.pop(terminal, None)
        for key in [k for k in self._opens if k[0] == terminal]:
            del self._opens[key]

    def flapping(self, terminal: str, rule: str, now: datetime) -> bool:
        """Has this condition opened FLAP_OPENS alerts within the last FLAP_WINDOW_S?"""
        opens = self._opens.get((terminal, rule))
        if not opens:
            return False
        while opens and _elapsed(opens[0], now) > FLAP_WINDOW_S:
            opens.popleft()
        if not opens:
            del self._opens[(terminal, rule)]
        return len(opens) >= FLAP_OPENS

    def _advance(self, terminal: str, now: datetime) -> list[Transition]:
        """Fire the timers that have run out, in rule order, and drop settled states."""
        states = self._terms.get(terminal, {})
        out: list[Transition] = []
        for rid in sorted(states):
            st, timing = states[rid], self._timing[rid]
            if st.active is None and st.present_since is not None:
                delay = timing.raise_delay_s if st.raise_delay_s is None else st.raise_delay_s
                if _elapsed(st.present_since, now) >= delay:
                    st.active = ActiveAlert(terminal, rid, now)
                    sev = self._rules[rid].severity
                    opens = self._opens.setdefault((terminal, rid), deque(maxlen=FLAP_OPENS))
                    opens.append(now)
                    detail = st.detail
                    if self.flapping(terminal, rid, now):
                        note = f"flapping: opened {FLAP_OPENS} times in {FLAP_WINDOW_S / 60:g} min"
                        detail = f"{detail}; {note}" if detail else note
                    out.append(Opened(terminal, rid, sev, now, st.present_since, detail))
            elif st.active is not None and st.absent_since is not None:
                hold = timing.hold_down_s if self.flapping(terminal, rid, now) else 0.0
                if _elapsed(st.absent_since, now) >= hold:
                    a = st.active
                    del states[rid]
                    out.append(Cleared(terminal, rid, now, a.opened_at, a.acknowledged))
            elif st.active is None:
                del states[rid]  # nothing pending: keep the table small
        if not states:
            self._terms.pop(terminal, None)
        return out


def _elapsed(since: datetime, now: datetime) -> float:
    # A clock that steps backwards (NTP) must not make a timer negative forever.
    return max(0.0, (now - since).total_seconds())
