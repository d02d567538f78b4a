"""What the API shares with the parts that run beside it (the ingest, the forecast job).

A lifespan hook (see `create_app`) receives the context and may fill in the optional parts: the
ingest sets `ingest_ready`, `alert_engine` and, if it keeps one, a cheaper
`metrics.snapshot_source`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fleet.server.alerts import AlertEngine
from fleet.server.db.cluster_lock import ClusterLock, cluster_dsn
from fleet.server.desired.service import DesiredService
from fleet.server.events_bus import EventBus
from fleet.server.forecast import ServiceHours
from fleet.server.licences.keys import Issuer
from fleet.server.licences.service import TrustStoreCache
from fleet.server.metrics import FleetMetrics
from fleet.server.rollouts.engine import ROLLOUT_LOCK_KEY, RolloutEngine
from fleet.server.settings import Settings


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AppContext:
    settings: Settings
    bus: EventBus = field(default_factory=EventBus)
    metrics: FleetMetrics = field(init=False)
    #: Staged agent rollouts; uses `desired`, `bus`, `metrics`, `clock` and the service hours.
    rollouts: RolloutEngine = field(init=False)
    #: Set by the ingest hook: is it connected to the broker? None: no ingest in this process.
    ingest_ready: Callable[[], bool] | None = None
    #: Set by the ingest hook, so an acknowledgement also reaches the in-memory alert state.
    alert_engine: AlertEngine | None = None
    #: Set by the desired-state hook (serve.py): documents, templates, commands. None: the
    #: routes that change configuration or send commands answer 503.
    desired: DesiredService | None = None
    #: The issuing key and authority; loaded from the settings on first use (licences.keys).
    issuer: Issuer | None = None
    trust_cache: TrustStoreCache = field(default_factory=TrustStoreCache)
    #: Injected so tests can pin "today" for the refill round.
    clock: Callable[[], datetime] = utc_now
    #: Seconds between SSE heartbeat comments (proxies close idle streams after ~60 s).
    sse_heartbeat_s: float = 15.0

    def __post_init__(self) -> None:
        self.metrics = FleetMetrics(self.bus)
        self.rollouts = RolloutEngine(
            desired=lambda: self.desired,
            bus=self.bus,
            metrics=self.metrics,
            clock=lambda: self.clock(),
            hours=self.service_hours,
            lock=ClusterLock(
                ROLLOUT_LOCK_KEY,
                cluster_dsn(self.settings),
            ),
        )

    @property
    def service_hours(self) -> ServiceHours:
        s = self.settings
        return ServiceHours(s.service_hours_start, s.service_hours_end, s.service_timezone)
