"""GET /api/v1/refill-round: terminals to refill today, by site, most urgent first."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.server.api_support import NOW, Api, seed_fleet

pytest_plugins = ["tests.server.api_fixtures"]


async def test_round_orders_sites_and_stops_by_urgency(api: Api) -> None:
    await seed_fleet()
    r = await api.client.get("/api/v1/refill-round", headers=api.auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert datetime.fromisoformat(body["generated_at"]) == NOW
    # Close of service today: 17:30 Asia/Shanghai.
    assert datetime.fromisoformat(body["round_end"]) == NOW + timedelta(hours=3, minutes=30)
    sites = [(s["site"], [(x["terminal"], x["why"]) for x in s["stops"]]) for s in body["sites"]]
    # S1 first: T2 is already out. T1 falls 10 %/h from 30 %: empty about 17:00, before close.
    # T3 has an open paper_low alert; T4 is steady and T5 has no paper reading: not listed.
    assert sites == [("S1", [("T2", "out"), ("T1", "forecast")]), ("S2", [("T3", "low")])]
    assert body["sites"][0]["name"] == "Service hall"
    t1 = body["sites"][0]["stops"][1]
    runout = datetime.fromisoformat(t1["runout_at"])
    assert NOW + timedelta(hours=2, minutes=30) < runout < NOW + timedelta(hours=3, minutes=30)
    assert t1["level_pct"] == 30


async def test_empty_fleet_has_an_empty_round(api: Api) -> None:
    r = await api.client.get("/api/v1/refill-round", headers=api.auth())
    assert r.status_code == 200
    assert r.json()["sites"] == []
