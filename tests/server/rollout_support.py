"""Helpers for the rollout tests: a fleet of 20 terminals, a movable clock, an engine wired to a
desired-state service whose publisher records what terminals would receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.desired.document import open_envelope
from fleet.server.db.models import Site, SiteKind, Terminal
from fleet.server.desired.service import DesiredService
from fleet.server.events_bus import EventBus
from fleet.server.forecast import ServiceHours
from fleet.server.metrics import FleetMetrics
from fleet.server.rollouts import RolloutEngine, UpdateEvent, agent_targets
from fleet.server.rollouts.engine import RolloutSpec
from tests.server.desired_support import KEY, MODELS, FakePublisher

#: Wednesday 2026-11-25 21:00 in Asia/Shanghai: a service day, after service hours.
EVENING = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
#: The same day at 14:00 local: the hall is open.
AFTERNOON = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
IDS = [f"T{i:02d}" for i in range(1, 21)]
VERSION = "1.3.0"


@dataclass
class Clock:
    now: datetime = EVENING

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclass
class Rig:
    engine: RolloutEngine
    desired: DesiredService
    pub: FakePublisher
    clock: Clock
    bus: EventBus
    metrics: FleetMetrics
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def agent(self, tid: str) -> object:
        """The `agent` field of the last document published to `tid` ("none" if none was)."""
        topic = f"fleet/v1/t/{tid}/desired"
        if not any(t == topic for t, _, _ in self.pub.sent):
            return "none"
        return open_envelope(self.pub.last(topic), KEY.verifying_key(), tid).document["agent"]

    def with_version(self) -> list[str]:
        return [t for t in IDS if self.agent(t) == {"version": VERSION}]

    async def send(self, tid: str, kind: str, **data: Any) -> None:
        await self.engine.on_update_events([UpdateEvent(tid, kind, data)])


async def seed_fleet() -> None:
    """T01..T20 over two sites; odd terminals are model kx-a4-ipp, even ones kx-escpos."""
    s1 = await Site.create(id="S1", name="Hall", kind=SiteKind.HALL)
    s2 = await Site.create(id="S2", name="Street", kind=SiteKind.STREET)
    for i, tid in enumerate(IDS, 1):
        await Terminal.create(
            id=tid,
            site=s1 if i <= 10 else s2,
            model="kx-a4-ipp" if i % 2 else "kx-escpos",
            mqtt_username=tid,
            tags=["lobby"] if i in (3, 4) else [],
        )


async def rig(clock: Clock | None = None) -> Rig:
    await seed_fleet()
    clock = clock or Clock()
    pub = FakePublisher()
    desired = DesiredService(KEY, pub, models=MODELS, clock=clock, agent_targets=agent_targets)
    await desired.recompute(reason="first documents")
    bus, metrics = EventBus(), FleetMetrics()
    engine = RolloutEngine(
        desired=lambda: desired, bus=bus, metrics=metrics, clock=clock, hours=ServiceHours()
    )
    desired.agent_targets = engine.agent_targets  # as fleet serve wires them
    return Rig(engine, desired, pub, clock, bus, metrics)


def spec(**kw: Any) -> RolloutSpec:
    args: dict[str, Any] = {"version": VERSION, "target": {"sites": ["S1", "S2"]}}
    args.update(kw)
    return RolloutSpec(**args)
