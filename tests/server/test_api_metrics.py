"""GET /metrics: Prometheus text that the Prometheus parser reads, with the fleet's families."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fleet.server.alerts import RULES
from fleet.server.metrics import FleetSnapshot
from tests.server.api_support import Api, seed_fleet

pytest_plugins = ["tests.server.api_fixtures"]


async def _scrape(api: Api) -> dict[str, list[Sample]]:
    r = await api.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def _values(samples: list[Sample], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[n] for n in labels): s.value for s in samples}


async def test_fleet_state_families(api: Api) -> None:
    await seed_fleet()
    families = await _scrape(api)
    terminals = _values(families["fleet_terminals"], "site", "state")
    assert terminals == {
        ("S1", "idle"): 1,
        ("S1", "stopped"): 1,
        ("S2", "offline"): 1,
        ("S2", "printing"): 1,
        ("S2", "printer_offline"): 1,
    }
    paper = _values(families["fleet_terminal_paper_ratio"], "terminal", "site")
    assert paper == {("T1", "S1"): 0.3, ("T2", "S1"): 0.0, ("T3", "S2"): 0.15, ("T4", "S2"): 0.5}
    alerts = _values(families["fleet_alerts_active"], "rule", "severity")
    assert alerts[("paper_out", "critical")] == 1
    assert alerts[("paper_low", "warning")] == 1
    assert alerts[("terminal_offline", "critical")] == 1
    assert alerts[("jam", "critical")] == 0  # cleared ones do not count, quiet rules stay at 0
    assert {rule for rule, _ in alerts} == set(RULES)
    assert _values(families["fleet_agent_version_terminals"], "version") == {("1.2.0",): 5}


async def test_ingest_instruments_and_process_metrics(api: Api) -> None:
    m = api.ctx.metrics
    m.ingest_messages.labels("stored").inc(3)
    m.ingest_messages.labels("rejected").inc()
    m.ingest_lag.observe(0.2)
    m.db_write.observe(0.004)
    families = await _scrape(api)
    # The parser names a counter's family without `_total`; its sample keeps it.
    messages = {s.labels["result"]: s.value for s in families["fleet_ingest_messages"]}
    assert messages["stored"] == 3 and messages["rejected"] == 1 and messages["duplicate"] == 0
    assert {s.name for s in families["fleet_ingest_messages"]} >= {"fleet_ingest_messages_total"}
    lag = {s.name: s for s in families["fleet_ingest_lag_seconds"] if "le" not in s.labels}
    assert lag["fleet_ingest_lag_seconds_count"].value == 1
    assert lag["fleet_ingest_lag_seconds_sum"].value == 0.2
    buckets = _values(
        [s for s in families["fleet_db_write_seconds"] if s.name.endswith("_bucket")], "le"
    )
    assert buckets[("0.005",)] == 1 and buckets[("0.0025",)] == 0
    assert "process_cpu_seconds" in families and "process_resident_memory_bytes" in families
    assert "python_gc_objects_collected" in families
    assert families["fleet_events_subscribers"][0].value == 0


async def test_every_fleet_name_follows_prometheus_practice(api: Api) -> None:
    await seed_fleet()
    r = await api.client.get("/metrics")
    for family in text_string_to_metric_families(r.text):
        if family.name.startswith(("process_", "python_")):
            continue
        assert family.name.startswith("fleet_"), family.name
        assert "percent" not in family.name and "milliseconds" not in family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


async def test_snapshot_source_can_be_replaced(api: Api) -> None:
    """The ingest's in-memory view serves the scrape without touching the database."""

    async def from_memory() -> FleetSnapshot:
        return FleetSnapshot(terminals={("S9", "idle"): 12}, alerts={("jam", "critical"): 2})

    api.ctx.metrics.snapshot_source = from_memory
    families = await _scrape(api)
    assert _values(families["fleet_terminals"], "site", "state") == {("S9", "idle"): 12}
    assert _values(families["fleet_alerts_active"], "rule", "severity")[("jam", "critical")] == 2


async def test_a_failing_snapshot_keeps_the_scrape_alive(api: Api) -> None:
    await seed_fleet()
    await _scrape(api)  # a good snapshot first

    async def broken() -> FleetSnapshot:
        raise ConnectionError("database went away")

    api.ctx.metrics.snapshot_source = broken
    families = await _scrape(api)
    assert families["fleet_state_snapshot_errors"][0].value == 1
    assert sum(s.value for s in families["fleet_terminals"]) == 5  # the previous snapshot
