"""Helpers for the desired-state tests: a recording publisher, a seeded fleet, a service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rust_core
from fleet.server.db.models import Site, SiteKind, Terminal
from fleet.server.desired.service import DesiredService
from fleet.server.mqtt_publish import PublishError

KEY = rust_core.SigningKey.generate("EdDSA")
NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


@dataclass
class FakePublisher:
    """Records what it publishes; `down` makes every publish fail like a broker outage."""

    sent: list[tuple[str, bytes, bool]] = field(default_factory=list)
    down: bool = False

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if self.down:
            raise PublishError("not connected to the broker")
        self.sent.append((topic, payload, retain))

    def last(self, topic: str) -> bytes:
        return [p for t, p, _ in self.sent if t == topic][-1]


@dataclass
class Model:
    desired: dict[str, Any]


MODELS = {"kx-a4-ipp": Model({"paper": {"capacity": 1000, "low_pct": 15}})}


async def seed(sites: dict[str, list[str]] | None = None, model: str = "kx-a4-ipp") -> None:
    for sid, terminals in (sites or {"S1": ["T1", "T2"], "S2": ["T3"]}).items():
        site = await Site.create(id=sid, name=sid, kind=SiteKind.HALL)
        for tid in terminals:
            await Terminal.create(id=tid, site=site, model=model, mqtt_username=tid)


def service(publisher: Any = None) -> DesiredService:
    return DesiredService(
        KEY,
        publisher if publisher is not None else FakePublisher(),
        models=MODELS,
        clock=lambda: NOW,
    )
