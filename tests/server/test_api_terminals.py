"""GET /api/v1/terminals, /terminals/{id} and /terminals/{id}/history on a seeded fleet."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from fleet.server.db.models import Site, Terminal
from tests.server.api_support import NOW, Api, seed_fleet

pytest_plugins = ["tests.server.api_fixtures"]


async def _list(api: Api, **params: Any) -> dict[str, Any]:
    r = await api.client.get("/api/v1/terminals", params=params, headers=api.auth())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _ids(body: dict[str, Any]) -> list[str]:
    return [t["id"] for t in body["items"]]


async def test_list_is_ordered_with_state_and_open_alerts(api: Api) -> None:
    await seed_fleet()
    body = await _list(api)
    assert body["total"] == 5 and body["limit"] == 100 and body["offset"] == 0
    assert _ids(body) == ["T1", "T2", "T3", "T4", "T5"]
    by_id = {t["id"]: t for t in body["items"]}
    assert by_id["T1"]["state"] == "idle" and by_id["T1"]["paper_pct"] == 30
    assert by_id["T2"]["active_alerts"] == ["paper_out"]
    assert by_id["T3"]["state"] == "offline"
    assert by_id["T3"]["active_alerts"] == ["paper_low", "terminal_offline"]
    assert by_id["T4"]["active_alerts"] == []  # its jams are cleared
    assert by_id["T5"]["state"] == "printer_offline" and by_id["T5"]["paper_pct"] is None
    assert by_id["T1"]["site"] == "S1" and by_id["T1"]["agent_version"] == "1.2.0"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"site": "S1"}, ["T1", "T2"]),
        ({"site": "nowhere"}, []),
        ({"state": "online"}, ["T1", "T2", "T4", "T5"]),
        ({"state": "offline"}, ["T3"]),
        ({"state": "idle"}, ["T1"]),  # T3's printer was idle, but T3 is offline
        ({"state": "stopped"}, ["T2"]),
        ({"state": "printing"}, ["T4"]),
        ({"state": "printer_offline"}, ["T5"]),
        ({"state": "unknown"}, []),
        ({"alert": "paper_out"}, ["T2"]),
        ({"alert": "jam"}, []),  # cleared alerts do not count
        ({"alert": "terminal_offline"}, ["T3"]),
        ({"site": "S2", "state": "online"}, ["T4", "T5"]),
        ({"site": "S2", "alert": "paper_low", "state": "offline"}, ["T3"]),
    ],
)
async def test_filters(api: Api, params: dict[str, str], expected: list[str]) -> None:
    await seed_fleet()
    body = await _list(api, **params)
    assert _ids(body) == expected
    assert body["total"] == len(expected)


async def test_pagination(api: Api) -> None:
    await seed_fleet()
    pages = [await _list(api, limit=2, offset=off) for off in (0, 2, 4, 6)]
    assert [_ids(p) for p in pages] == [["T1", "T2"], ["T3", "T4"], ["T5"], []]
    assert {p["total"] for p in pages} == {5}
    filtered = await _list(api, state="online", limit=1, offset=1)
    assert _ids(filtered) == ["T2"] and filtered["total"] == 4


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"state": "sleeping"}]
)
async def test_bad_list_parameters(api: Api, params: dict[str, Any]) -> None:
    r = await api.client.get("/api/v1/terminals", params=params, headers=api.auth())
    assert r.status_code == 422


async def test_one_terminal(api: Api) -> None:
    await seed_fleet()
    r = await api.client.get("/api/v1/terminals/T3", headers=api.auth())
    assert r.status_code == 200
    t = r.json()
    assert t["id"] == "T3" and t["site"] == "S2" and t["state"] == "offline"
    assert t["presence"]["online"] is False
    assert t["presence"]["last_seen"] is not None
    assert t["versions"] == {"agent": "1.2.0", "desired": "sha256:abc"}
    assert t["drift"] == {"desired": None, "reported": "sha256:abc", "in_sync": None}
    assert t["status"]["seq"] == 100 and t["last_seq"] == 100
    assert [a["rule"] for a in t["alerts"]] == ["paper_low", "terminal_offline"]
    assert all(a["active"] for a in t["alerts"])


async def test_unknown_terminal(api: Api) -> None:
    for path in ("/api/v1/terminals/T9", "/api/v1/terminals/T9/history"):
        r = await api.client.get(path, headers=api.auth())
        assert r.status_code == 404


async def test_history_defaults_to_the_last_day(api: Api) -> None:
    await seed_fleet()
    r = await api.client.get("/api/v1/terminals/T1/history", headers=api.auth())
    assert r.status_code == 200
    h = r.json()
    assert h["terminal"] == "T1" and h["truncated"] is False
    assert len(h["items"]) == 37
    assert h["items"][0]["paper_pct"] == 60 and h["items"][-1]["paper_pct"] == 30
    stamps = [s["ts"] for s in h["items"]]
    assert stamps == sorted(stamps)
    assert set(h) == {"terminal", "from", "to", "items", "truncated"}


async def test_history_range_and_limit(api: Api) -> None:
    await seed_fleet()
    start = (NOW - timedelta(hours=1)).isoformat()
    r = await api.client.get(
        "/api/v1/terminals/T1/history",
        params={"from": start, "to": NOW.isoformat()},
        headers=api.auth(),
    )
    items = r.json()["items"]
    assert len(items) == 12  # every 5 min in [13:00, 14:00): the 14:00 sample is excluded
    r = await api.client.get(
        "/api/v1/terminals/T1/history", params={"limit": 5}, headers=api.auth()
    )
    assert len(r.json()["items"]) == 5 and r.json()["truncated"] is True
    # A naive time is UTC; without `to` the sample stamped "now" is included.
    naive = (NOW - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    r = await api.client.get(
        "/api/v1/terminals/T1/history", params={"from": naive}, headers=api.auth()
    )
    assert len(r.json()["items"]) == 13


async def test_history_refuses_an_empty_range(api: Api) -> None:
    await seed_fleet()
    r = await api.client.get(
        "/api/v1/terminals/T1/history",
        params={"from": NOW.isoformat(), "to": (NOW - timedelta(hours=1)).isoformat()},
        headers=api.auth(),
    )
    assert r.status_code == 422


async def test_unknown_state_is_an_online_terminal_without_a_printer_state(api: Api) -> None:
    await seed_fleet()
    site = await Site.get(id="S1")
    await Terminal.create(id="T6", site=site, model="kiosk-a", mqtt_username="T6", online=True)
    body = await _list(api, state="unknown")
    assert _ids(body) == ["T6"]
    assert body["items"][0]["state"] == "unknown" and body["items"][0]["last_seen"] is None
