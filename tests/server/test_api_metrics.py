"""GET /metrics: Prometheus text that the Prometheus parser reads, with the fleet's families."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import ValidationError

import rust_core
from fleet.server.alerts import RULES
from fleet.server.metrics import FleetSnapshot
from fleet.server.settings import Settings
from tests.server.api_support import Api, seed_fleet
from tests.services import mosquitto
from tests.services.fleet_server import fleet_serve

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


# --- who may scrape: against a real `fleet serve` ---------------------------------------------

METRICS_TOKEN = "scrape-" + "s3cr3t" * 4


def _get(url: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(url, headers=headers, timeout=10, trust_env=False)


def _production_env(tmp_path: Path) -> dict[str, str]:
    """What a server outside dev mode needs: real secrets and its two keys made beforehand."""
    for name in ("config", "issuer"):
        (tmp_path / f"{name}-key.pem").write_text(rust_core.SigningKey.generate().to_pem())
    return {
        "FLEET_DEV_MODE": "0",
        "FLEET_BROKER_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "FLEET_SESSION_SECRET": secrets.token_urlsafe(24),
        "FLEET_CONFIG_KEY_FILE": str(tmp_path / "config-key.pem"),
        "FLEET_ISSUER_KEY_FILE": str(tmp_path / "issuer-key.pem"),
    }


def _fleet_families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text) if f.name.startswith("fleet_")}


@pytest.mark.parametrize("dev_mode", [True, False])
def test_metrics_token_is_required_when_set(tmp_path: Path, dev_mode: bool) -> None:
    """FLEET_METRICS_TOKEN set: a scrape needs `Authorization: Bearer <it>` (Prometheus's
    `authorization` / `bearer_token_file`), in dev mode too; an operator's API token also does."""
    if not mosquitto.available():
        pytest.skip("mosquitto not installed")
    env = {} if dev_mode else _production_env(tmp_path)
    env["FLEET_METRICS_TOKEN"] = METRICS_TOKEN
    with fleet_serve("fleet-metrics-", status_interval_s=60, extra_env=env) as s:
        url = s.url + "/metrics"
        for token in (None, "wrong", METRICS_TOKEN[:-1], METRICS_TOKEN + "x"):
            r = _get(url, token)
            assert r.status_code == 401, (token, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "fleet_" not in r.text
        basic = {"Authorization": f"Basic {METRICS_TOKEN}"}  # the right secret, another scheme
        assert httpx.get(url, headers=basic, trust_env=False).status_code == 401
        r = _get(url, METRICS_TOKEN)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert {"fleet_terminals", "fleet_terminal_paper_ratio"} <= _fleet_families(r.text)
        operator = s.fleet("tokens", "create", "--role", "operator", "--name", "m").split()[0]
        auditor = s.fleet("tokens", "create", "--role", "auditor", "--name", "a").split()[0]
        assert _get(url, operator).status_code == 200
        assert _get(url, auditor).status_code == 403  # least privilege: not the fleet's state
        assert _get(s.url + "/healthz").status_code == 200  # liveness stays open


def test_without_a_metrics_token_only_dev_mode_serves_metrics_to_anyone(tmp_path: Path) -> None:
    """Outside dev mode with no FLEET_METRICS_TOKEN, the terminal ids, sites and paper levels
    are for operator and admin API tokens only; dev mode (one machine, `make run`) stays open."""
    if not mosquitto.available():
        pytest.skip("mosquitto not installed")
    with fleet_serve(
        "fleet-metrics-", status_interval_s=60, extra_env=_production_env(tmp_path)
    ) as s:
        url = s.url + "/metrics"
        assert _get(url).status_code == 401
        assert _get(url, "fleet_not-a-token").status_code == 401
        admin = s.fleet("tokens", "create", "--role", "admin", "--name", "m").split()[0]
        auditor = s.fleet("tokens", "create", "--role", "auditor", "--name", "a").split()[0]
        assert _get(url, auditor).status_code == 403
        r = _get(url, admin)
        assert r.status_code == 200 and "fleet_terminals" in _fleet_families(r.text)
    with fleet_serve("fleet-metrics-", status_interval_s=60) as s:
        assert _get(s.url + "/metrics").status_code == 200


def test_a_short_metrics_token_is_refused_outside_dev_mode() -> None:
    strong = {"broker_admin_password": "b" * 20, "session_secret": "s" * 20}
    with pytest.raises(ValidationError, match="FLEET_METRICS_TOKEN is shorter than 16"):
        Settings(dev_mode=False, metrics_token="short", **strong)
    assert Settings(dev_mode=False, metrics_token="m" * 16, **strong).metrics_token is not None
    assert Settings(dev_mode=True, metrics_token="short").metrics_token is not None
