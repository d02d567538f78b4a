"""Prometheus metrics of the fleet server, in a registry of its own (one per app, so tests and
several apps in one process do not collide on the global one).

Two kinds:
- Counters and histograms the ingest updates as it works (`FleetMetrics.ingest_messages` ...).
- Fleet state (terminals by state and site, paper per terminal, active alerts), which lives in the
  database: a custom Collector exposes it at scrape time, from a snapshot refreshed just before
  the scrape is rendered. The snapshot comes from the DB (a couple of cheap queries) unless the
  ingest plugs in its in-memory view (`FleetMetrics.snapshot_source`), which costs nothing.

Names follow Prometheus practice: `fleet_` prefix, base units (seconds, ratios rather than
percent), `_total` on counters, labels from bounded sets (site, state, rule, severity, terminal id
-- the fleet bounds it -- never users or licence serials).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from fleet.server.alerts import RULES
from fleet.server.broker import BrokerLog
from fleet.server.db.models import Alert, InboxMessage, Terminal
from fleet.server.desired.drift import drift_seconds
from fleet.server.events_bus import EventBus
from fleet.server.terminal_state import terminal_state

log = logging.getLogger(__name__)

#: `result` values of fleet_ingest_messages_total: a bounded set, so the ingest cannot explode it.
INGEST_RESULTS = ("stored", "duplicate", "rejected", "rate_limited", "error")


@dataclass(frozen=True)
class FleetSnapshot:
    """Fleet state for one scrape."""

    #: (site, state) -> number of terminals.
    terminals: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: (terminal, site) -> paper level as a ratio 0..1; terminals without a reading are absent.
    paper: Mapping[tuple[str, str], float] = field(default_factory=dict)
    #: (rule, severity) -> number of active alerts.
    alerts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: terminal -> seconds its reported applied document has differed from its latest desired one.
    drift: Mapping[str, float] = field(default_factory=dict)
    #: agent version (as reported; "unknown" before the first report) -> number of terminals.
    agent_versions: Mapping[str, int] = field(default_factory=dict)
    #: Messages relayed by replicas and not yet handled by the lease holder (0 without replicas).
    inbox: int = 0


SnapshotSource = Callable[[], Awaitable[FleetSnapshot]]


async def snapshot_from_db() -> FleetSnapshot:
    """Fleet state from the database: one pass over the terminal table, one grouped alert query."""
    terminals: Tally[tuple[str, str]] = Tally()
    paper: dict[tuple[str, str], float] = {}
    versions: Tally[str] = Tally()
    rows = await Terminal.all().values_list(
        "id", "site_id", "online", "printer_state", "paper_pct", "agent_version"
    )
    for tid, site, online, printer_state, paper_pct, agent in rows:
        terminals[(site, terminal_state(bool(online), printer_state))] += 1
        versions[str(agent or "unknown")] += 1
        if paper_pct is not None:
            paper[(tid, site)] = paper_pct / 100.0
    alert_rows = await Alert.filter(active_key=1).values_list("rule", "severity")
    alerts = Tally((str(rule), str(sev)) for rule, sev in alert_rows)
    drift = await drift_seconds(datetime.now(UTC))
    inbox = await InboxMessage.all().count()
    return FleetSnapshot(dict(terminals), paper, dict(alerts), drift, dict(versions), inbox)


class FleetStateCollector(Collector):
    """Yields the last snapshot; `FleetMetrics.refresh` replaces it before each scrape."""

    def __init__(self, bus: EventBus | None = None) -> None:
        self.snapshot = FleetSnapshot()
        self._bus = bus

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        terminals = GaugeMetricFamily(
            "fleet_terminals", "Registered terminals by site and state", labels=["site", "state"]
        )
        for (site, state), n in sorted(snap.terminals.items()):
            terminals.add_metric([site, state], n)
        yield terminals
        paper = GaugeMetricFamily(
            "fleet_terminal_paper_ratio",
            "Paper left in the terminal's tray (0..1), from its latest report",
            labels=["terminal", "site"],
        )
        for (tid, site), ratio in sorted(snap.paper.items()):
            paper.add_metric([tid, site], ratio)
        yield paper
        alerts = GaugeMetricFamily(
            "fleet_alerts_active", "Open alerts by rule and severity", labels=["rule", "severity"]
        )
        # Every known rule, at zero when quiet: a series that vanishes breaks `rate` and alerting.
        counts = {(r.id, str(r.severity)): 0 for r in RULES.values()}
        counts.update(snap.alerts)
        for (rule, sev), n in sorted(counts.items()):
            alerts.add_metric([rule, sev], n)
        yield alerts
        yield GaugeMetricFamily(
            "fleet_desired_drift_terminals",
            "Terminals whose applied desired-state document is not their latest one",
            value=len(snap.drift),
        )
        drift = GaugeMetricFamily(
            "fleet_desired_drift_seconds",
            "How long a drifting terminal's latest desired-state document has waited to be applied",
            labels=["terminal"],
        )
        for tid, seconds in sorted(snap.drift.items()):
            drift.add_metric([tid], seconds)
        yield drift
        versions = GaugeMetricFamily(
            "fleet_agent_version_terminals",
            "Terminals by the agent version they last reported (a rollout's progress)",
            labels=["version"],
        )
        for version, n in sorted(snap.agent_versions.items()):
            versions.add_metric([version], n)
        yield versions
        yield GaugeMetricFamily(
            "fleet_ingest_inbox_messages",
            "Messages relayed into the ingest inbox and not yet handled by the lease holder "
            "(replicas): a backlog that grows means the holder cannot keep up",
            value=snap.inbox,
        )
        if self._bus is not None:
            yield GaugeMetricFamily(
                "fleet_events_subscribers",
                "Live event-stream subscribers",
                value=self._bus.subscribers,
            )
            yield CounterMetricFamily(
                "fleet_events_dropped_subscribers",
                "Event-stream subscribers dropped for falling behind",
                value=self._bus.dropped_total,
            )


class FleetMetrics:
    """The registry, the ingest's instruments, and the fleet-state collector."""

    def __init__(
        self,
        bus: EventBus | None = None,
        snapshot_source: SnapshotSource = snapshot_from_db,
        min_refresh_s: float = 1.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.snapshot_source = snapshot_source
        self.min_refresh_s = min_refresh_s
        self._refreshed_at = -float("inf")
        self._lock = asyncio.Lock()
        self.state = FleetStateCollector(bus)
        self.registry.register(self.state)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

        self.ingest_messages = Counter(
            "fleet_ingest_messages",
            "MQTT messages handled by the ingest, by result",
            ["result"],
            registry=self.registry,
        )
        for result in INGEST_RESULTS:
            self.ingest_messages.labels(result)  # present at zero from the start
        self.ingest_lag = Histogram(
            "fleet_ingest_lag_seconds",
            "From a report's own timestamp to the server storing it",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.ingest_storage_retries = Counter(
            "fleet_ingest_storage_retries",
            "Ingest database calls that failed because the database was away, and were retried "
            "(the messages stay unacknowledged meanwhile)",
            registry=self.registry,
        )
        self.ingest_relayed = Counter(
            "fleet_ingest_relayed_messages",
            "Messages this replica took off the broker and filed into the ingest inbox (replicas)",
            registry=self.registry,
        )
        self.lease_held = Gauge(
            "fleet_replica_lease_held",
            "1 while this replica holds the lease and runs the singletons (the ingest's handling, "
            "timers, jobs); exactly one replica should",
            registry=self.registry,
        )
        self.snapshot_errors = Counter(
            "fleet_state_snapshot_errors",
            "Scrapes that could not read the fleet state and served the previous snapshot",
            registry=self.registry,
        )
        self.db_write = Histogram(
            "fleet_db_write_seconds",
            "Duration of one ingest write to the database (a batch)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )

        # The embedded broker's log (fleet.server.broker.BrokerLog); absent with an external one.
        self.broker_clients = Counter(
            "fleet_broker_client_events",
            "Embedded broker events caused by clients: session takeovers, refused logins",
            ["kind"],
            registry=self.registry,
        )
        for kind in BrokerLog.KINDS:
            self.broker_clients.labels(kind)

        self.desired_published = Counter(
            "fleet_desired_documents_published",
            "Desired-state documents the broker took (new versions and republished ones)",
            registry=self.registry,
        )

        # Rollouts (fleet.server.rollouts.engine keeps these current; active rollouts only).
        self.rollout_terminals = Gauge(
            "fleet_rollout_terminals",
            "Terminals of an active rollout by update state",
            ["rollout", "state"],
            registry=self.registry,
        )
        self.rollout_transitions = Counter(
            "fleet_rollout_transitions",
            "Rollouts entering a state (running, paused, aborted, completed, ...)",
            ["state"],
            registry=self.registry,
        )
        self.rollout_results = Counter(
            "fleet_rollout_terminal_results",
            "Final update results of rollout terminals (succeeded, failed, rolled_back, timed_out)",
            ["state"],
            registry=self.registry,
        )

    async def refresh(self) -> None:
        """Take a new fleet snapshot, at most every `min_refresh_s`: several Prometheus servers
        scraping at once must not each cost a database round."""
        async with self._lock:
            if time.monotonic() - self._refreshed_at < self.min_refresh_s:
                return
            try:
                self.state.snapshot = await self.snapshot_source()
            except Exception:
                # A database outage is exactly when the ingest and process metrics matter: serve
                # them with the last fleet snapshot rather than fail the whole scrape.
                log.exception("fleet state snapshot failed; serving the previous one")
                self.snapshot_errors.inc()
                return
            self._refreshed_at = time.monotonic()

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)
