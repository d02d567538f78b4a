"""The ingest pipeline: receiver -> validate -> dedupe -> latest state + history -> ack -> publish.

One batch at a time, in the order the broker delivered it:

1. `validate.parse` every message, and check its `ts` against the server's clock. A rejection
   (or a message the receiver could not decode) becomes a dead-letter row (the newest
   `dead_letter_max_per_terminal` kept per terminal) and
   `fleet_ingest_messages_total{result="rejected"}`, and is acknowledged like a stored message:
   no message, however bad, is redelivered in a loop or holds the flow (issue 12).
2. Status reports and events go through `SequenceTracker`: a duplicate is counted and dropped,
   a gap is recorded (`SeqGap`), a late message is stored as history but never overwrites the
   latest state. Presence messages, and anything alive from a terminal, feed `PresenceTracker`.
   A new sequence (a reinstalled terminal, a lost outbox: seq back at 1 with a newer ts; the
   tracker is restored with the ts of `last_seq`, gaps.py) archives the terminal's old rows into
   a band below zero (store.SEQ_BAND) in the batch's transaction, so no seq of the new sequence
   collides with a stored one and nothing of either is lost.
3. The batch's rows (samples with `bulk_create`, events, gaps, dead letters) and each terminal's
   latest state go to the database in one transaction (store.py). Only then are the batch's
   messages acknowledged: a crash before that leaves them unacknowledged and the broker delivers
   them again; the tracker (restored from `last_seq`) and the unique (terminal, seq) drop the
   repeats.
4. The newest status of each terminal in the batch, and every presence transition, go to the
   `AlertEngine`; its transitions are persisted one by one, idempotently (the DB allows one open
   alert per (terminal, rule)).
5. Changes are published on the events bus (for SSE) and counted in the metrics.

Unknown terminals. The broker's ACL only lets users in its password file publish, and only on
their own topics, so a message from a terminal without a `Terminal` row comes from someone who
holds valid credentials for that id: a terminal provisioned on an external broker, or whose row
was created by hand. Refusing it would hide a working kiosk, so it is registered on the spot at
the site `unassigned` (model `unknown`) and logged; an operator then moves it to its site. What
a terminal publishes as someone else never gets here (the ACL refuses it at the broker).

Storage failures. Every database call of a batch goes through `_retrying`: an error that says
the database is away (db.transient.is_transient: a connection lost mid-query, a dead pool,
PostgreSQL shutting down or starting, a deadlock, SQLite busy) is retried in place with a capped
backoff and a fresh pool, the batch's messages stay unacknowledged (the broker holds the rest:
backpressure, not loss) and `storage_ok` is False, which /healthz reports. A stop asked for
meanwhile leaves the batch unacknowledged (`StorageUnavailable`); the broker redelivers it to
the next server. Only a batch the database refuses for its content is dead-lettered (reason
`store_failed`), so one bad row cannot stop the ingest.

Agent updates. Stored `update_*` events (fleet.server.rollouts.engine.UPDATE_EVENTS) are handed
to `update_events` (the rollout engine) after the batch is stored; a failure there is logged and
costs the ingest nothing (the events are in the history either way).

Timers (`tick`, every second from `fleet serve`): presence timeouts and hold-downs, and alert
raise delays and hold-downs, run out without new messages. Presence timeouts wait while the
receiver's link to the broker is down and for a full timeout after it is back (`broker_link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, TypeVar

from agent.desired.document import DocumentError, check_reported
from fleet.firmware import HardwareModel
from fleet.server.alerts import (
    RULES,
    STATUS_RULES,
    ActiveAlert,
    AlertEngine,
    Cleared,
    Thresholds,
    assess,
)
from fleet.server.alerts import Transition as AlertTransition
from fleet.server.alerts.rules import paper_level
from fleet.server.alerts.thresholds import ThresholdsByModel
from fleet.server.db.models import Alert, DeadLetter, SeqGap, Terminal, TerminalEvent
from fleet.server.db.retry import StorageRetry, StorageUnavailable
from fleet.server.desired import commands
from fleet.server.desired.drift import applied_intervals, record_reported
from fleet.server.events_bus import EventBus
from fleet.server.ingest.gaps import last_seq_ts, missing_seqs
from fleet.server.ingest.presence import PresenceTracker
from fleet.server.ingest.presence import Transition as PresenceTransition
from fleet.server.ingest.rate import TerminalRateLimit
from fleet.server.ingest.receiver import Received
from fleet.server.ingest.sequence import Duplicate, New, SequenceTracker
from fleet.server.ingest.store import (
    UNASSIGNED_SITE,
    BatchWrite,
    SampleRow,
    SequenceReset,
    json_text,
    persist_alert,
    persist_presence,
    write_batch,
)
from fleet.server.ingest.validate import (
    TOPIC_PREFIX,
    CmdResult,
    Event,
    Message,
    Presence,
    Rejection,
    Reported,
    Status,
    parse,
    topic_parts,
)
from fleet.server.log_throttle import LogThrottle
from fleet.server.metrics import FleetMetrics
from fleet.server.rollouts.engine import UPDATE_EVENTS, UpdateEvent
from fleet.server.settings import Settings
from fleet.server.terminal_state import terminal_state

log = logging.getLogger(__name__)

#: Status reports decide these; presence decides terminal_offline (see fleet.server.alerts).
_STATUS_SCOPE = STATUS_RULES | {"terminal_offline"}
#: A gap between two timer runs this long means the process was not running (see run_ticks).
STALL_S = 5.0

T = TypeVar("T")


class NotActive(Exception):
    """This pipeline may not act now (replicas: the lease is not held)."""


class MessageSource(Protocol):
    """What the pipeline needs of `receiver.Receiver` (tests feed batches directly)."""

    async def batch(self, max_items: int = ..., linger_s: float = ...) -> list[Received]: ...

    def ack_many(self, msgs: list[Received]) -> int: ...


@dataclass
class _DesiredSide:
    """`reported` and `cmd/result` messages of a batch, written once the batch is stored."""

    reported: list[tuple[str, dict[str, Any], datetime]] = field(default_factory=list)
    results: list[tuple[commands.Result, datetime]] = field(default_factory=list)


@dataclass
class _Known:
    site: str
    model: str


def _dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _topic_terminal(m: Received) -> str | None:
    found = topic_parts(m.topic)
    return found[0] if found is not None else None


def _small(value: float | None) -> int | None:
    return None if value is None else round(value)


class Pipeline:
    """Owns the ingest's in-memory state; `handle` one batch, `tick` the timers."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: EventBus | None = None,
        metrics: FleetMetrics | None = None,
        engine: AlertEngine | None = None,
        presence: PresenceTracker | None = None,
        sequence: SequenceTracker | None = None,
        clock: Callable[[], float] = time.time,
        models: Mapping[str, HardwareModel] | None = None,
        update_events: Callable[[Sequence[UpdateEvent]], Awaitable[None]] | None = None,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        """`models`: the hardware models (firmware_configs/) whose thresholds the alerts use;
        `update_events`: where agent update events go (the rollout engine); `active`: may this
        pipeline act now (with replicas: does this replica still hold the lease)."""
        self.settings = settings
        self.bus = bus
        self.metrics = metrics
        self.engine = engine or AlertEngine()
        self.presence = presence or PresenceTracker(
            status_interval_s=settings.status_interval_s,
            timeout_intervals=settings.heartbeat_intervals,
        )  # each terminal's own interval, once it reported applying a document (restore)
        self.sequence = sequence or SequenceTracker()
        self.thresholds = Thresholds(paper_low_pct=float(settings.paper_low_pct))
        self._model_thresholds = ThresholdsByModel(models or {}, self.thresholds)
        self.clock = clock
        self.update_events = update_events
        self.active = active
        self._max_age_s = settings.history_retention_days * 86400.0
        # A terminal may restart its sequence on every report: its lines are bounded.
        self._reset_log = LogThrottle(log)
        self.rate_limit = TerminalRateLimit(
            settings.ingest_terminal_rate_per_s, settings.ingest_terminal_burst
        )
        self._known: dict[str, _Known] = {}
        # handle() and tick() both move the trackers and write; one at a time keeps the
        # database in the order the trackers decided.
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        #: Totals by result, also when no metrics are attached (tests, the benchmark).
        self.counts: Counter[str] = Counter()
        self._retry = StorageRetry(
            self._stop, metrics.ingest_storage_retries if metrics is not None else None
        )

    # -- start-up -----------------------------------------------------------------------------

    async def restore(self) -> None:
        """Load terminals, their last seq and presence, and the open alerts from the database."""
        now = self.clock()
        rows = await Terminal.all().values_list(
            "id", "site_id", "model", "online", "presence_reason", "presence_changed_at", "last_seq"
        )
        missing = await missing_seqs(self.sequence.window)
        last_ts = await last_seq_ts()
        for tid, site, model, online, reason, changed_at, last_seq in rows:
            self._known[tid] = _Known(site, model)
            if last_seq is not None:
                self.sequence.restore(
                    tid, int(last_seq), last_ts.get(tid), missing=missing.get(tid, ())
                )
            if online or changed_at is not None:
                self.presence.restore(
                    tid,
                    online=bool(online),
                    reason=reason.value if reason is not None else None,
                    now=now,
                    changed_at=changed_at.timestamp() if changed_at is not None else None,
                )
        for tid, interval in (await applied_intervals()).items():
            self.presence.set_interval(tid, interval)
        alerts = await Alert.filter(active_key=1).values_list(
            "terminal_id", "rule", "opened_at", "acked_at"
        )
        self.engine.restore(ActiveAlert(t, r, o, a is not None) for t, r, o, a in alerts)
        log.info("ingest restored %d terminals and %d open alerts", len(rows), len(alerts))

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, source: MessageSource, max_batch: int | None = None) -> None:
        """Take, store and acknowledge batches until `stop()`; a batch in hand is finished."""
        size = max_batch or self.settings.ingest_batch_size
        while not self._stop.is_set():
            get = asyncio.ensure_future(source.batch(size))
            stop = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if get not in done:
                get.cancel()  # batch() takes messages only when it returns: none are lost
                break
            msgs = get.result()
            try:
                try:
                    await self.handle(msgs)
                except NotActive:
                    # Not ours to handle now (the lease is being renewed late, or is lost and the
                    # term about to end): unacknowledged, they come again, here or elsewhere.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), 0.2)
                    continue
                except StorageUnavailable:
                    raise
                except Exception:
                    # A bug must cost this batch, not the ingest: holding its messages unacked
                    # would stop the broker's flow to us for good (Receive Maximum).
                    log.exception("ingest failed on a batch of %d; dead-lettering it", len(msgs))
                    await self._dead_letter_all(msgs, "internal_error")
            except StorageUnavailable as e:
                log.warning("stopping with %d messages not stored (%s): not acknowledged, the "
                            "broker keeps them", len(msgs), e)  # fmt: skip
                break
            source.ack_many(msgs)

    async def _dead_letter_all(self, msgs: Sequence[Received], reason: str) -> None:
        self._count(Counter({"error": len(msgs)}))
        rows = BatchWrite(
            dead=[self._dead(m, reason, "see the server log", _topic_terminal(m)) for m in msgs]
        )
        keep = self.settings.dead_letter_max_per_terminal
        await self._best_effort("dead-lettering a batch", partial(write_batch, rows, keep))

    async def _best_effort(self, what: str, op: Callable[[], Awaitable[object]]) -> None:
        """`op()` through `_retrying`; any other failure is logged and costs only `op`, not the
        batch (the rows it writes are kept elsewhere, or are idempotent and come again)."""
        try:
            await self._retrying(what, op)
        except StorageUnavailable:
            raise
        except Exception:
            log.exception("%s failed", what)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """`op()`, again and again while the database is unavailable (db/retry.py); any other
        error is raised at once."""
        return await self._retry(what, op)

    @property
    def storage_ok(self) -> bool:
        """False while the database is unavailable (the ingest holds its batch and retries);
        each retry is counted in fleet_ingest_storage_retries_total."""
        return self._retry.ok

    def stop(self) -> None:
        self._stop.set()

    def broker_link(self, up: bool) -> None:
        """The receiver's link to the broker came up or went down: presence timeouts wait for
        the terminals to be heard again (PresenceTracker.link_back / link_lost, issue 13)."""
        now = self.clock()
        if up:
            self.presence.link_back(now)
        else:
            self.presence.link_lost(now)

    async def run_ticks(self, interval_s: float = 1.0) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last > STALL_S:
                # The process did not run (a stall, a suspended VM): it heard nobody meanwhile,
                # and what the terminals sent is still queued. As after a lost link, everyone
                # gets a full timeout to be heard before the timers call them offline.
                log.warning("the ingest did not run for %.0f s: presence timeouts wait", now - last)
                self.presence.grace(self.clock())
            last = now
            try:
                await self.tick()
            except Exception:  # a failed tick is retried next second; the ingest goes on
                log.exception("ingest tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval_s)

    # -- one batch ----------------------------------------------------------------------------

    async def handle(self, msgs: Sequence[Received]) -> None:
        """Validate, dedupe and store one batch; never raises for a message's content. Raises
        `NotActive` (nothing done) when not `active`."""
        async with self._lock:
            if not self.active():
                raise NotActive
            await self._handle(msgs)

    def _over_rate(self, msgs: Sequence[Received]) -> tuple[list[Received], Counter[str]]:
        """The messages within their terminal's rate, and how many each terminal sent over it."""
        kept: list[Received] = []
        over: Counter[str] = Counter()
        limit = self.rate_limit
        for m in msgs:
            tid = _topic_terminal(m)
            if tid is None or limit.allow(tid, m.received_at):
                kept.append(m)
            else:
                over[tid] += 1
        return kept, over

    def _check(self, m: Received) -> Message | Rejection:
        """`parse`, plus what needs the server: the receiver's refusals and the clock."""
        if m.refused is not None:
            reason, _, detail = m.refused.partition(": ")
            return Rejection(reason, detail, m.topic[:255], _topic_terminal(m))  # type: ignore[arg-type]
        p = parse(m.topic, m.payload)
        if isinstance(p, Rejection):
            return p
        ts = p.ts
        if ts is None:
            return p
        ahead = ts.timestamp() - m.received_at
        if ahead > self.settings.ingest_max_ts_ahead_s:
            detail = f"ts {ts.isoformat()} is {ahead:.0f} s ahead of the server"
            return Rejection("clock_skew", detail, m.topic, p.terminal)
        # Old reports are welcome (an outbox emptying after an outage) back to the retention;
        # a presence may be older (retained), it only orders presence changes.
        if isinstance(p, Status | Event) and -ahead > self._max_age_s:
            detail = f"ts {ts.isoformat()} is older than the history retention"
            return Rejection("clock_skew", detail, m.topic, p.terminal)
        return p

    async def _handle(self, msgs: Sequence[Received]) -> None:
        msgs, over = self._over_rate(msgs)
        parsed = [(m, self._check(m)) for m in msgs]
        await self._resolve_unknown(parsed)
        write = BatchWrite()
        counts: Counter[str] = Counter()
        for tid, n in over.items():
            counts["rate_limited"] += n
            write.dead.append(
                DeadLetter(
                    received_at=_dt(self.clock()),
                    topic=f"{TOPIC_PREFIX}{tid}/",
                    reason=f"rate_limited: {n} messages over the terminal's rate, not stored",
                    payload="",
                    terminal=tid,
                )
            )
        newest: dict[str, tuple[Status, float]] = {}
        presence: list[PresenceTransition] = []
        lags: list[float] = []
        side = _DesiredSide()
        known_cmds = await self._known_commands(parsed)
        for m, p in parsed:
            if isinstance(p, Reported | CmdResult):
                refused = self._desired_side(m, p, side, known_cmds)
                if refused is not None:
                    p = Rejection(refused[0], refused[1], m.topic, p.terminal)  # type: ignore[arg-type]
            if isinstance(p, Rejection):
                write.dead.append(self._dead(m, p.reason, p.detail, p.terminal))
                counts["rejected"] += 1
                continue
            if p.terminal not in self._known:
                self._known[p.terminal] = _Known(UNASSIGNED_SITE, "unknown")
                write.new_terminals[p.terminal] = "unknown"
            result = self._apply(m, p, write, newest, presence, lags)
            counts[result] += 1
        started = time.perf_counter()
        if not await self._store(write, parsed, counts):
            return
        if self.metrics is not None:
            self.metrics.db_write.observe(time.perf_counter() - started)
        await self._store_desired_side(side)
        await self._after_store(newest, presence, write)
        await self._feed_updates(write)
        self._count(counts)
        if self.metrics is not None:
            for lag in lags:
                self.metrics.ingest_lag.observe(lag)

    def _apply(
        self,
        m: Received,
        p: Message,
        write: BatchWrite,
        newest: dict[str, tuple[Status, float]],
        presence: list[PresenceTransition],
        lags: list[float],
    ) -> str:
        tid = p.terminal
        if isinstance(p, Presence):
            presence += self.presence.presence(
                tid, online=p.online, ts=p.ts, now=m.received_at, reason=p.reason
            )
            if p.agent:
                write.update(tid, agent_version=p.agent)
            return "stored"
        presence += self.presence.alive(tid, m.received_at)
        if not isinstance(p, Status | Event):
            return "stored"  # reported, cmd/result: liveness only until their tables exist
        outcome = self.sequence.observe(tid, p.seq, p.ts)
        if isinstance(outcome, Duplicate):
            return "duplicate"
        self._sequence_notes(tid, p.seq, outcome, write)
        received = _dt(m.received_at)
        if isinstance(p, Event):
            write.events.append(
                TerminalEvent(terminal_id=tid, seq=p.seq, kind=p.event, ts=p.ts, data=p.raw)
            )
            if not outcome.late:
                write.update(tid, last_seq=p.seq, last_seen=received, agent_version=p.agent)
            return "stored"
        level, _ = paper_level(p.raw["printer"].get("paper") if p.printer else None)
        paper_pct = _small(level)
        write.samples.append(self._sample(p, received, paper_pct))
        lags.append(max(0.0, m.received_at - p.ts.timestamp()))
        if not outcome.late:
            write.update(
                tid,
                last_seq=p.seq,
                last_seen=received,
                agent_version=p.agent,
                printer_state=p.printer.state if p.printer else None,
                paper_pct=paper_pct,
                reader_state=p.reader.state if p.reader else None,
                status=p.raw,
            )
            newest[tid] = (p, m.received_at)
        return "stored"

    # -- reported and cmd/result ----------------------------------------------------------------

    async def _known_commands(
        self,
        parsed: list[tuple[Received, Message | Rejection]],
    ) -> set[Any]:
        pairs = set()
        for _, p in parsed:
            if isinstance(p, CmdResult):
                with contextlib.suppress(DocumentError):
                    pairs.add((commands.check_result(p.raw).id, p.terminal))
        return await self._retrying("reading commands", lambda: commands.known(pairs))

    @staticmethod
    def _desired_side(
        m: Received, p: Reported | CmdResult, side: _DesiredSide, known_cmds: set[Any]
    ) -> tuple[str, str] | None:
        """Check one message and queue its write; (reason, detail) when it is refused."""
        received = _dt(m.received_at)
        try:
            if isinstance(p, Reported):
                check_reported(p.raw)
                side.reported.append((p.terminal, p.raw, p.ts or received))
                return None
            result = commands.check_result(p.raw)
        except DocumentError as e:
            return "schema", str(e)
        if (result.id, p.terminal) not in known_cmds:
            return "unknown_command", f"no command {result.id} for this terminal"
        side.results.append((result, received))
        return None

    async def _store_desired_side(self, side: _DesiredSide) -> None:
        # After the batch's own transaction: both writes are idempotent, and the batch is acked
        # only after them, so a crash in between redelivers and rewrites them.
        now = _dt(self.clock())
        for tid, doc, ts in side.reported:
            await self._best_effort(
                f"storing a reported message of {tid}", partial(record_reported, tid, doc, ts, now)
            )
        if side.reported:
            # A newly applied document may change how often its terminal reports.
            tids = sorted({tid for tid, _, _ in side.reported})
            intervals = await self._retrying("reading status intervals",
                                             partial(applied_intervals, tids))  # fmt: skip
            for tid, interval in intervals.items():
                self.presence.set_interval(tid, interval)
        for result, at in side.results:
            await self._best_effort(
                f"storing the result of command {result.id}", partial(commands.record, result, at)
            )

    async def _feed_updates(self, write: BatchWrite) -> None:
        if self.update_events is None:
            return
        updates = [
            UpdateEvent(e.terminal_id, e.kind, e.data)
            for e in write.events
            if e.kind in UPDATE_EVENTS
        ]
        if updates:
            await self._best_effort(
                f"feeding {len(updates)} update events to the rollout engine",
                partial(self.update_events, updates),
            )

    def _sequence_notes(self, tid: str, seq: int, outcome: New, write: BatchWrite) -> None:
        if outcome.gap is not None:
            g = outcome.gap
            write.gaps.append(SeqGap(terminal_id=tid, after_seq=g.after, before_seq=g.before))
        if outcome.reset is not None:
            self._reset_log.log(
                logging.INFO,
                "terminal %s restarted its sequence at %d (was %d)",
                tid,
                seq,
                outcome.reset.previous,
            )
            if any(r.terminal == tid for r in write.resets):
                # Twice in one batch: the rows between the two resets may collide with the
                # newest sequence and be dropped (ON CONFLICT); never seen, so only logged.
                log.warning("terminal %s restarted its sequence twice in one batch", tid)
                return
            write.resets.append(
                SequenceReset(
                    tid,
                    samples=[i for i, row in enumerate(write.samples) if row[0] == tid],
                    events=[i for i, e in enumerate(write.events) if e.terminal_id == tid],
                    gaps=[i for i, g in enumerate(write.gaps) if g.terminal_id == tid],
                )
            )

    @staticmethod
    def _sample(p: Status, received: datetime, paper_pct: int | None) -> SampleRow:
        printer, reader = p.printer, p.reader
        reasons = printer.reasons if printer else ()
        return (
            p.terminal,
            p.seq,
            p.ts,
            received,
            paper_pct,
            printer.state if printer else None,
            json_text(list(reasons)) if reasons else "[]",
            reader.state if reader else None,
            _small(printer.toner_pct) if printer else None,
            False,
        )

    def _dead(self, m: Received, reason: str, detail: str, terminal: str | None) -> DeadLetter:
        limit = self.settings.dead_letter_payload_max_chars
        text = m.payload[: limit * 4].decode("utf-8", errors="replace")[:limit]
        return DeadLetter(
            received_at=_dt(m.received_at),
            topic=m.topic[:255].replace("\x00", "\ufffd"),
            reason=f"{reason}: {detail}"[:255].replace("\x00", "\ufffd"),
            payload=text.replace("\x00", "\ufffd"),  # PostgreSQL text cannot hold NUL
            terminal=terminal,  # from a parsed topic: a valid terminal id or None
        )

    async def _resolve_unknown(self, parsed: list[tuple[Received, Message | Rejection]]) -> None:
        """Terminals registered since start (`fleet terminals add`) are looked up, once."""
        unknown = {
            p.terminal
            for _, p in parsed
            if not isinstance(p, Rejection) and p.terminal not in self._known
        }
        if not unknown:
            return
        rows = await self._retrying(
            "looking up new terminals",
            lambda: Terminal.filter(id__in=list(unknown)).values_list(
                "id", "site_id", "model", "last_seq"
            ),
        )
        for tid, site, model, last_seq in rows:
            self._known[tid] = _Known(site, model)
            if last_seq is not None and not self.sequence.known(tid):
                self.sequence.restore(tid, int(last_seq))

    async def _store(
        self,
        write: BatchWrite,
        parsed: list[tuple[Received, Message | Rejection]],
        counts: Counter[str],
    ) -> bool:
        """Write the batch, waiting out a database that is away; False when the database refused
        the rows themselves and the batch's messages were dead-lettered instead."""
        if not write:
            return True
        keep = self.settings.dead_letter_max_per_terminal
        try:
            await self._retrying("storing a batch", lambda: write_batch(write, keep))
            return True
        except StorageUnavailable:
            raise
        except Exception:  # not transient (see _retrying): the rows themselves
            log.exception("the database refused a batch; dead-lettering its messages")
            await self._dead_letter_all([m for m, _ in parsed], "store_failed")
            counts.clear()
            return False

    async def _after_store(
        self,
        newest: dict[str, tuple[Status, float]],
        presence: list[PresenceTransition],
        write: BatchWrite,
    ) -> None:
        alerts: list[AlertTransition] = []
        for tr in presence:
            await self._presence_changed(tr, alerts)
        for tid, (status, received_at) in newest.items():
            online = self.presence.is_online(tid) is not False
            th = self.thresholds_for(tid)
            a = assess(status.raw, online, th, self.engine.active_rules(tid))
            alerts += self.engine.update(
                tid, _dt(received_at), a.hits, a.unknown, scope=_STATUS_SCOPE
            )
        await self._persist_alerts(alerts)
        if self.bus is not None:
            for tid, columns in write.latest.items():
                if "status" in columns:
                    self.bus.publish("status", self._status_event(tid, columns))

    def _status_event(self, tid: str, c: dict[str, Any]) -> dict[str, Any]:
        online = self.presence.is_online(tid) is not False
        last_seen = c.get("last_seen")
        return {
            "terminal": tid,
            "site": self._known[tid].site if tid in self._known else UNASSIGNED_SITE,
            "state": terminal_state(online, c.get("printer_state")),
            "online": online,
            "printer_state": c.get("printer_state"),
            "paper_pct": c.get("paper_pct"),
            "reader_state": c.get("reader_state"),
            "last_seen": last_seen.isoformat() if isinstance(last_seen, datetime) else None,
            "seq": c.get("last_seq"),
        }

    # -- presence and alerts ------------------------------------------------------------------

    def thresholds_for(self, terminal: str) -> Thresholds:
        """The alert thresholds of a terminal: its hardware model's, else the settings'."""
        known = self._known.get(terminal)
        return self._model_thresholds.thresholds_for(known.model if known else None)

    async def _presence_changed(
        self, tr: PresenceTransition, alerts: list[AlertTransition]
    ) -> None:
        at = _dt(tr.at)
        await self._retrying(
            "storing a presence change",
            lambda: persist_presence(tr.terminal, tr.online, tr.reason, at),
        )
        if tr.online:
            alerts += self.engine.update(tr.terminal, at, [], scope={"terminal_offline"})
        else:
            a = assess(None, False, offline_reason=tr.reason)
            alerts += self.engine.update(tr.terminal, at, a.hits, a.unknown, scope=_STATUS_SCOPE)
        if self.bus is not None:
            self.bus.publish(
                "presence",
                {
                    "terminal": tr.terminal,
                    "online": tr.online,
                    "reason": tr.reason,
                    "at": at.isoformat(),
                },
            )

    async def feed_alerts(self, feed: Callable[[AlertEngine], list[AlertTransition]]) -> None:
        """Let another alert source (the forecast job) update the engine with `feed`, and persist
        and publish its transitions as the ingest's own, under the ingest's lock."""
        async with self._lock:
            if self.active():
                await self._persist_alerts(feed(self.engine))

    async def _persist_alerts(self, transitions: list[AlertTransition]) -> None:
        for t in transitions:
            alert_id = await self._retrying("storing an alert", partial(persist_alert, t))
            if alert_id is None or self.bus is None:
                continue
            cleared = isinstance(t, Cleared)
            self.bus.publish(
                "alert",
                {
                    "id": alert_id,
                    "terminal": t.terminal,
                    "rule": t.rule,
                    # A cleared alert keeps its rule's severity: a console sorts and colours by it.
                    "severity": str(RULES[t.rule].severity),
                    "transition": "cleared" if cleared else "opened",
                    "at": t.at.isoformat(),
                },
            )

    async def tick(self, now: float | None = None) -> None:
        """Run the presence and alert timers to `now` (default: the clock)."""
        async with self._lock:
            if not self.active():
                return  # another replica's timers run now
            t = self.clock() if now is None else now
            alerts: list[AlertTransition] = []
            for tr in self.presence.tick(t):
                await self._presence_changed(tr, alerts)
            alerts += self.engine.tick(_dt(t))
            await self._persist_alerts(alerts)

    def _count(self, counts: Counter[str]) -> None:
        self.counts.update(counts)
        if self.metrics is not None:
            for result, n in counts.items():
                self.metrics.ingest_messages.labels(result).inc(n)
