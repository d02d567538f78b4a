"""One simulated terminal: its devices, the staff who look after it, and what it publishes.

No networking here: `tick()` returns the messages to publish, so the logic is tested without a
broker and the event loop (agent/sim/pool.py) stays about sockets. Payloads come from
agent/report.py, the same builders the real agent uses.

Two clocks: `now` (real monotonic seconds) schedules reports; the devices and the staff run on the
model clock, which a demo may speed up (`--time-scale`) so paper runs out within minutes.

Incoming messages (`on_message`): the `desired` document is handled as the agent does at the
protocol level (agent/sim/desired.py: verify, version check, `reported`), and its
`status_interval_s` applied to the report schedule; commands go through the agent's own
CommandRunner (agent/commands.py) with an in-memory store: `refresh_status` reports at once,
`print_test_page` takes a sheet from the simulated tray, `restart_agent` asks the pool to
reconnect this terminal. A document naming another agent version starts a simulated self-update
(agent/sim/update.py) with the real agent's `update_*` events; once it succeeds, presence, status
and events carry the new version.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import rust_core
from agent import report
from agent.commands import CommandRunner
from agent.drivers.base import (
    DriverError,
    PrinterStatus,
    ReaderStatus,
    offline_printer,
)
from agent.drivers.simulated import Clock, SimulatedPrinter, SimulatedReader
from agent.sim.desired import DesiredState
from agent.sim.sites import TerminalSpec
from agent.sim.update import SimUpdater, UpdatePolicy


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True)
class Behaviour:
    """What every simulated terminal shares; delays are model-clock seconds (min, max)."""

    status_interval_s: float = 10.0
    capacity: int = 500
    sheets_per_licence: int = 1
    prints_per_hour: float = 20.0
    jam_rate: float = 0.002
    card_rate: float = 0.0
    agent_version: str = "0.1.0"
    #: Staff come to an empty tray within this window, and to a low one on their daily round.
    refill_empty_s: tuple[float, float] = (900.0, 3600.0)
    refill_low_s: tuple[float, float] = (3600.0, 6 * 3600.0)
    clear_jam_s: tuple[float, float] = (300.0, 1800.0)
    #: Simulated self-update: its duration and which releases fail their health check.
    update: UpdatePolicy = field(default_factory=UpdatePolicy)


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class SimTerminal:
    def __init__(
        self,
        spec: TerminalSpec,
        behaviour: Behaviour,
        seed: int,
        clock: Clock,
        config_key: rust_core.VerifyingKey | None = None,
    ) -> None:
        self.spec = spec
        self.id = spec.terminal_id
        self.b = behaviour
        self._rng = random.Random(seed)
        self._clock = clock
        cap = behaviour.capacity
        self.printer = SimulatedPrinter(
            capacity=cap,
            sheets_per_licence=behaviour.sheets_per_licence,
            prints_per_hour=behaviour.prints_per_hour,
            jam_rate=behaviour.jam_rate,
            # A fleet in mid-life: trays anywhere between a tenth and full.
            start_sheets=self._rng.randint(cap // 10, cap),
            seed=self._rng.getrandbits(64),
            clock=clock,
        )
        self.reader = SimulatedReader(
            card_rate=behaviour.card_rate, seed=self._rng.getrandbits(64), clock=clock
        )
        # One seq for status reports and events alike, as the agent's outbox allocates it: the
        # server deduplicates and finds gaps by (terminal, seq) across both topics.
        self.seq = 0
        self.next_report: float | None = None
        self.status_interval_s = behaviour.status_interval_s
        self.desired = DesiredState(self.id, config_key)
        self.commands = CommandRunner(
            self.id, self.printer, self._report_soon, self._restart, state_dir=None, clock=time.time
        )
        #: Set by a command: report at once / reconnect; the pool reads and clears them.
        self.report_now = False
        self.restart_requested = False
        kinds = ("presence", "status", "event", "reported", "cmd/result")
        self._topics = {k: report.topic(self.id, k) for k in kinds}
        self._boot = clock() - self._rng.uniform(3600.0, 30 * 86400.0)
        self._disk_free_mb = self._rng.randint(3000, 20000)
        self._last_key: tuple[str, tuple[str, ...], str] | None = None
        self._refill_at: float | None = None
        self._clear_at: float | None = None
        # Its own stream, so updates leave the devices' and the staff's draws as they were.
        self.updater = SimUpdater(
            behaviour.agent_version, behaviour.update, random.Random(f"update:{seed}")
        )

    @property
    def agent_version(self) -> str:
        """The version this terminal runs (changes when a simulated update succeeds)."""
        return self.updater.running

    # -- messages ------------------------------------------------------------------------------

    def presence(self, online: bool, reason: str | None = None) -> Message:
        """Retained presence; the site rides along so a server can group terminals by site."""
        body = report.presence(online, self.agent_version, reason=reason)
        body["site"] = self.spec.site.to_json()
        return Message(self._topics["presence"], _encode(body), retain=True)

    def _event(self, kind: str, **data: Any) -> Message:
        self.seq += 1
        body = report.event(seq=self.seq, kind=kind, agent_version=self.agent_version, **data)
        return Message(self._topics["event"], _encode(body))

    def _status(self, printer: PrinterStatus, reader: ReaderStatus) -> Message:
        self.seq += 1
        body = report.status(
            seq=self.seq,
            agent_version=self.agent_version,
            printer=printer,
            reader=reader,
            host={"uptime_s": int(self._clock() - self._boot), "disk_free_mb": self._disk_free_mb},
            desired=self.desired.hash,
        )
        return Message(self._topics["status"], _encode(body))

    # -- what the fleet sends --------------------------------------------------------------------

    def on_message(self, kind: str, payload: bytes, now: float) -> list[Message]:
        """A message on our `desired` or `cmd` topic; returns what to publish in answer."""
        out: list[Message] = []
        if kind == "desired":
            outcome = self.desired.receive(payload)
            out.append(Message(self._topics["reported"], _encode(outcome.reported)))
            if outcome.applied is not None:
                self._apply(outcome.applied.document["config"], now)
                # As agent.desired.apply.LiveTarget.apply hands the document to the update worker.
                target = (outcome.applied.document.get("agent") or {}).get("version")
                for kind_, data in self.updater.want(target, outcome.applied.version, now):
                    out.append(self._event(kind_, **data))
        elif kind == "cmd":
            result = self.commands.handle(payload)
            if result is not None:
                out.append(Message(self._topics["cmd/result"], _encode(result)))
            if self.report_now:
                self.report_now = False
                out.append(self._status(*self._read()))
        return out

    def _apply(self, config: dict[str, Any], now: float) -> None:
        interval = config.get("status_interval_s", self.b.status_interval_s)
        self.status_interval_s = float(interval)
        if self.next_report is not None:
            # A shorter interval takes effect now, a longer one after the report already due.
            self.next_report = min(self.next_report, now + self.status_interval_s)

    def _report_soon(self) -> None:
        self.report_now = True

    def _restart(self) -> None:
        self.restart_requested = True

    # -- behaviour -----------------------------------------------------------------------------

    def on_connect(self, now: float) -> None:
        """(Re)connected: the first report comes at a random point of the first interval, so
        thousands of terminals connecting together do not all report in the same instant."""
        self.next_report = now + self._rng.uniform(0.0, self.status_interval_s)

    def _read(self) -> tuple[PrinterStatus, ReaderStatus]:
        try:
            printer = self.printer.read()
        except DriverError:
            printer = offline_printer("sim")
        try:
            reader = self.reader.read()
        except DriverError as e:
            reader = ReaderStatus(driver="sim", state="offline", detail=e.message)
        return printer, reader

    def _staff(self, printer: PrinterStatus, out: list[Message]) -> bool:
        """Staff fix what they were called for once its time has come; True when they acted."""
        mnow = self._clock()
        acted = False
        if self._clear_at is not None and mnow >= self._clear_at:
            self._clear_at = None
            self.printer.clear_jam()
            acted = True
        if self._refill_at is not None and mnow >= self._refill_at:
            self._refill_at = None
            added = self.printer.refill()
            out.append(
                self._event("paper_refilled", sheets_added=added, capacity=self.printer.capacity)
            )
            acted = True
        return acted

    def _call_staff(self, printer: PrinterStatus) -> None:
        mnow = self._clock()
        rng = self._rng
        if "media-jam" in printer.reasons and self._clear_at is None:
            self._clear_at = mnow + rng.uniform(*self.b.clear_jam_s)
        if "media-empty" in printer.reasons:
            soon = mnow + rng.uniform(*self.b.refill_empty_s)
            self._refill_at = soon if self._refill_at is None else min(self._refill_at, soon)
        elif "media-low" in printer.reasons and self._refill_at is None:
            self._refill_at = mnow + rng.uniform(*self.b.refill_low_s)

    def update_step(self, now: float) -> list[Message]:
        """The self-update's steps whose time has come (the pool also calls this on its timer).

        After a switch the terminal runs the new version: as the restarted agent would, it says
        so in a fresh retained presence before reporting the outcome.
        """
        due = self.updater.due
        if due is None or now < due:
            return []
        emitted, switched = self.updater.poll(now)
        out: list[Message] = []
        for kind, data in emitted:
            if switched and kind == "update_succeeded":
                out.append(self.presence(online=True))
            out.append(self._event(kind, **data))
        return out

    def tick(self, now: float) -> list[Message]:
        """Read the devices; return the events and, when due or changed, a status report."""
        out: list[Message] = self.update_step(now)
        printer, reader = self._read()
        if self._staff(printer, out):
            printer, reader = self._read()
        for _ in range(self.printer.take_completed()):
            out.append(self._event("print_completed", serial=f"{self._rng.getrandbits(128):032x}"))
        self._call_staff(printer)
        # A change is a state or reason change; sheet counts move with every print and ride on
        # the periodic report, or every licence printed would cost a report.
        key = (printer.state, printer.reasons, reader.state)
        changed = self._last_key is not None and key != self._last_key
        was_jammed = self._last_key is not None and "media-jam" in self._last_key[1]
        if "media-jam" in printer.reasons and not was_jammed:
            out.append(self._event("device_error", device="printer", reason="media-jam"))
        self._last_key = key
        due = self.next_report is not None and now >= self.next_report
        if changed or due:
            out.append(self._status(printer, reader))
        if due and self.next_report is not None:
            self.next_report += self.status_interval_s
            if self.next_report <= now:
                # Fell a whole interval behind (a stalled host): skip ahead, never burst.
                self.next_report = now + self.status_interval_s
        return out
