"""GET /api/v1/alerts and POST /api/v1/alerts/{id}/ack."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleet.server.alerts import ActiveAlert, AlertEngine
from fleet.server.db.models import Alert, Role
from tests.server.api_support import NOW, Api, make_token, seed_fleet

pytest_plugins = ["tests.server.api_fixtures"]


async def _alerts(api: Api, **params: Any) -> dict[str, Any]:
    r = await api.client.get("/api/v1/alerts", params=params, headers=api.auth())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _keys(body: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(a["terminal"], a["rule"], a["active"]) for a in body["items"]]


async def test_active_and_recent_newest_first(api: Api) -> None:
    await seed_fleet()
    body = await _alerts(api)
    # The jam cleared two days ago is history beyond the default 24 h.
    assert _keys(body) == [
        ("T3", "terminal_offline", True),
        ("T2", "paper_out", True),
        ("T4", "jam", False),
        ("T3", "paper_low", True),
    ]
    assert body["total"] == 4
    jam = body["items"][2]
    assert jam["cleared_at"] is not None and jam["severity"] == "critical"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"state": "active"}, ["terminal_offline", "paper_out", "paper_low"]),
        ({"state": "cleared"}, ["jam"]),
        ({"state": "cleared", "recent_hours": 72}, ["jam", "jam"]),
        ({"rule": "paper_low"}, ["paper_low"]),
        ({"severity": "warning"}, ["paper_low"]),
        ({"terminal": "T3"}, ["terminal_offline", "paper_low"]),
        ({"site": "S1"}, ["paper_out"]),
        ({"site": "S2", "state": "active"}, ["terminal_offline", "paper_low"]),
    ],
)
async def test_filters(api: Api, params: dict[str, Any], expected: list[str]) -> None:
    await seed_fleet()
    body = await _alerts(api, **params)
    assert [a["rule"] for a in body["items"]] == expected


async def test_pagination(api: Api) -> None:
    await seed_fleet()
    first = await _alerts(api, limit=3)
    rest = await _alerts(api, limit=3, offset=3)
    assert len(first["items"]) == 3 and len(rest["items"]) == 1
    assert first["total"] == rest["total"] == 4
    ids = [a["id"] for a in first["items"] + rest["items"]]
    assert len(set(ids)) == 4


async def _paper_out_id() -> int:
    alert = await Alert.get(terminal_id="T2", rule="paper_out")
    return int(alert.id)


async def test_ack_records_who_and_when_once(api: Api) -> None:
    await seed_fleet()
    alert_id = await _paper_out_id()
    first = await api.client.post(f"/api/v1/alerts/{alert_id}/ack", headers=api.auth())
    assert first.status_code == 200
    body = first.json()
    assert body["acked_by"] == "operator-1" and body["active"] is True
    assert body["acked_at"].startswith(NOW.strftime("%Y-%m-%dT%H:%M:%S"))
    # Again, by someone else: nothing changes, and it is not an error.
    second = await api.client.post(f"/api/v1/alerts/{alert_id}/ack", headers=api.auth("admin"))
    assert second.status_code == 200 and second.json() == body
    stored = await Alert.get(id=alert_id)
    assert stored.acked_by == "operator-1" and stored.active_key == 1  # ack does not close it


async def test_concurrent_acks_record_one(api: Api) -> None:
    await seed_fleet()
    alert_id = await _paper_out_id()
    tokens = [await make_token(Role.OPERATOR, name=f"op-{i}") for i in range(4)]
    results = await asyncio.gather(
        *(
            api.client.post(
                f"/api/v1/alerts/{alert_id}/ack", headers={"Authorization": f"Bearer {t}"}
            )
            for t in tokens
        )
    )
    assert {r.status_code for r in results} == {200}
    assert len({r.json()["acked_by"] for r in results}) == 1


async def test_ack_publishes_and_reaches_the_engine(api: Api) -> None:
    await seed_fleet()
    alert_id = await _paper_out_id()
    engine = AlertEngine()
    engine.restore([ActiveAlert("T2", "paper_out", NOW)])
    api.ctx.alert_engine = engine
    sub = api.ctx.bus.subscribe()
    r = await api.client.post(f"/api/v1/alerts/{alert_id}/ack", headers=api.auth())
    assert r.status_code == 200
    assert engine.active("T2") == [ActiveAlert("T2", "paper_out", NOW, acknowledged=True)]
    event = await sub.get(timeout=1)
    assert event is not None and event.kind == "alert"
    assert event.data["transition"] == "acked" and event.data["id"] == alert_id
    # An idempotent repeat publishes nothing.
    await api.client.post(f"/api/v1/alerts/{alert_id}/ack", headers=api.auth())
    assert await sub.get(timeout=0.05) is None


async def test_ack_of_cleared_or_unknown_alert(api: Api) -> None:
    await seed_fleet()
    jam = await Alert.filter(terminal_id="T4", rule="jam").first()
    assert jam is not None
    r = await api.client.post(f"/api/v1/alerts/{jam.id}/ack", headers=api.auth())
    assert r.status_code == 409
    r = await api.client.post("/api/v1/alerts/999999/ack", headers=api.auth())
    assert r.status_code == 404
    r = await api.client.post("/api/v1/alerts/nope/ack", headers=api.auth())
    assert r.status_code == 422
