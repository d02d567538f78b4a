"""The config, template and command routes: roles, validation, per-terminal results, drift."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest

from agent.desired.document import canonical, open_envelope
from fleet.server.db.models import Command
from tests.server.api_support import NOW, Api
from tests.server.desired_support import KEY, FakePublisher, seed, service

pytest_plugins = ["tests.server.api_fixtures"]

FORM = {"schema": {"type": "object", "properties": {"name": {"type": "string"}}}, "layout": []}


@pytest.fixture
async def pub(api: Api) -> FakePublisher:
    p = FakePublisher()
    api.ctx.desired = service(p)
    await seed()
    return p


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/config/defaults", None),
        ("PUT", "/api/v1/config/sites/S1", {}),
        ("GET", "/api/v1/config/terminals/T1/desired", None),
        ("POST", "/api/v1/config/terminals/T1/desired/rollback", {"version": 1}),
        ("PUT", "/api/v1/templates/gtgsh", FORM),
        ("POST", "/api/v1/terminals/T1/commands", {"name": "refresh_status"}),
        ("GET", "/api/v1/terminals/T1/commands", None),
    ],
)
async def test_roles(api: Api, pub: FakePublisher, method: str, path: str, body: object) -> None:
    r = await api.client.request(method, path, json=body)
    assert r.status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert (await api.client.request(method, path, json=body, headers=bad)).status_code == 401
    r = await api.client.request(method, path, json=body, headers=api.auth("auditor"))
    assert r.status_code == 403
    r = await api.client.request(method, path, json=body, headers=api.auth("operator"))
    changes_config = method != "GET" and "/commands" not in path
    assert r.status_code == (403 if changes_config else 200 if method == "GET" else 201), r.text


async def test_put_layer_pushes_and_reports_per_terminal(api: Api, pub: FakePublisher) -> None:
    r = await api.client.put(
        "/api/v1/config/sites/S1", json={"paper": {"low_pct": 35}}, headers=api.auth("admin")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["new"], body["unchanged"], body["errors"]) == (2, 0, 0)
    assert [(x["terminal"], x["version"], x["published"]) for x in body["results"]] == [
        ("T1", 1, True),
        ("T2", 1, True),
    ]
    assert body["layer"]["layer"] == {"paper": {"low_pct": 35}}
    assert body["layer"]["updated_by"] == "admin-1"
    r = await api.client.get("/api/v1/config/sites/S1", headers=api.auth())
    assert r.json()["layer"] == {"paper": {"low_pct": 35}}
    r = await api.client.get("/api/v1/config/models/kx-a4-ipp", headers=api.auth())
    assert r.json()["base"] == {"paper": {"capacity": 1000, "low_pct": 15}}
    opened = open_envelope(pub.last("fleet/v1/t/T2/desired"), KEY.verifying_key(), "T2")
    assert opened.document["config"]["paper"]["low_pct"] == 35


@pytest.mark.parametrize(
    ("layer", "where"),
    [
        ({"paper": {"low_pct": 120}}, "site.paper.low_pct"),
        ({"papr": {}}, "site.papr"),
        (
            {"service_hours": {"tz": "Asia/Shanghai", "days": {"mon": [["9", "5"]]}}},
            "site.service_hours",
        ),
    ],
)
async def test_a_bad_layer_is_422_with_its_path(
    api: Api, pub: FakePublisher, layer: dict[str, object], where: str
) -> None:
    r = await api.client.put("/api/v1/config/sites/S1", json=layer, headers=api.auth("admin"))
    assert r.status_code == 422, r.text
    [err] = r.json()["detail"]  # the documented list form, naming the field inside the body
    prefix = ["body", *where.split(".")[1:]]
    assert err["msg"].startswith(where) and err["loc"][: len(prefix)] == prefix
    assert not pub.sent


async def test_unknown_site_or_terminal_is_404(api: Api, pub: FakePublisher) -> None:
    for path in ("/api/v1/config/sites/nowhere", "/api/v1/config/terminals/T9"):
        r = await api.client.put(path, json={}, headers=api.auth("admin"))
        assert r.status_code == 404


async def test_desired_history_rollback_and_terminal_drift(api: Api, pub: FakePublisher) -> None:
    admin = api.auth("admin")
    await api.client.put("/api/v1/config/terminals/T1", json={"debounce_s": 1.0}, headers=admin)
    await api.client.put("/api/v1/config/terminals/T1", json={"debounce_s": 2.0}, headers=admin)
    r = await api.client.get("/api/v1/config/terminals/T1/desired", headers=api.auth())
    body = r.json()
    assert body["version"] == 2 and not body["pending"]
    assert body["document"]["config"]["debounce_s"] == 2.0
    assert [h["version"] for h in body["history"]] == [2, 1]
    r = await api.client.post(
        "/api/v1/config/terminals/T1/desired/rollback", json={"version": 1}, headers=admin
    )
    assert r.status_code == 200 and r.json()["version"] == 3
    r = await api.client.get("/api/v1/config/terminals/T1/desired/history", headers=api.auth())
    assert [(h["version"], h["reason"]) for h in r.json()][:1] == [(3, "rollback to 1")]
    r = await api.client.post(
        "/api/v1/config/terminals/T1/desired/rollback", json={"version": 7}, headers=admin
    )
    assert r.status_code == 404
    t = (await api.client.get("/api/v1/terminals/T1", headers=api.auth())).json()
    state = t["desired_state"]
    assert state["desired_version"] == 3 and state["drift"] is True
    assert state["reported_result"] is None and state["drift_s"] == 0
    assert t["drift"]["desired"] == state["desired_hash"] and t["drift"]["in_sync"] is False


async def test_templates_versions_assignments_and_blobs(api: Api, pub: FakePublisher) -> None:
    admin = api.auth("admin")
    r = await api.client.put("/api/v1/templates/gtgsh-setup", json=FORM, headers=admin)
    assert r.status_code == 200 and r.json()["template"]["version"] == 1 and r.json()["created"]
    r = await api.client.put(
        "/api/v1/templates/gtgsh-setup/assignments",
        json={"sites": ["S1"], "terminals": {"T3": 1}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert {x["terminal"] for x in r.json()["results"]} == {"T1", "T2", "T3"}
    assert r.json()["assignments"] == {"sites": {"S1": None}, "terminals": {"T3": 1}}
    r = await api.client.put(
        "/api/v1/templates/gtgsh-setup/assignments", json={"sites": {"S1": 5}}, headers=admin
    )
    assert r.status_code == 422 and "no version 5" in r.json()["detail"][0]["msg"]
    assert r.json()["detail"][0]["loc"] == ["body", "sites", "S1"]
    r = await api.client.put("/api/v1/templates/gtgsh-setup", json={"layout": []}, headers=admin)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "schema"]
    r = await api.client.put("/api/v1/templates/Bad_Id!", json=FORM, headers=admin)
    assert r.status_code == 422
    r = await api.client.get("/api/v1/templates/gtgsh-setup", headers=api.auth())
    assert r.json()["versions"] == [1] and r.json()["latest"]["content"] == FORM
    r = await api.client.get("/api/v1/templates/gtgsh-setup/versions/1", headers=api.auth())
    sha = r.json()["sha256"]
    blob = await api.client.get(f"/api/v1/templates/blobs/{sha}")  # no token, by design
    assert blob.status_code == 200 and blob.content == canonical(FORM)
    assert hashlib.sha256(blob.content).hexdigest() == sha
    assert (await api.client.get(f"/api/v1/templates/blobs/{'0' * 64}")).status_code == 404
    opened = open_envelope(pub.last("fleet/v1/t/T1/desired"), KEY.verifying_key(), "T1")
    assert opened.document["templates"][0]["sha256"] == sha


async def test_commands_send_list_and_expire(api: Api, pub: FakePublisher) -> None:
    r = await api.client.post(
        "/api/v1/terminals/T1/commands",
        json={"name": "print_test_page", "ttl_s": 60},
        headers=api.auth(),
    )
    assert r.status_code == 201 and r.json()["status"] == "sent"
    cid = r.json()["id"]
    (topic, payload, retain) = pub.sent[-1]
    assert topic == "fleet/v1/t/T1/cmd" and json.loads(payload)["id"] == cid and not retain
    bad = await api.client.post(
        "/api/v1/terminals/T1/commands", json={"name": "format_disk"}, headers=api.auth()
    )
    assert bad.status_code == 422
    pub.down = True
    down = await api.client.post(
        "/api/v1/terminals/T1/commands", json={"name": "refresh_status"}, headers=api.auth()
    )
    assert down.status_code == 503
    r = await api.client.get("/api/v1/terminals/T1/commands", headers=api.auth())
    assert [c["status"] for c in r.json()["items"]] == ["sent", "failed"] or [
        c["status"] for c in r.json()["items"]
    ] == ["failed", "sent"]
    api.ctx.clock = lambda: NOW + timedelta(seconds=61)
    r = await api.client.get("/api/v1/terminals/T1/commands", headers=api.auth())
    assert {c["id"]: c["status"] for c in r.json()["items"]}[cid] == "expired"
    assert await Command.filter(status="expired").count() == 1
    r = await api.client.post(
        "/api/v1/terminals/T9/commands", json={"name": "refresh_status"}, headers=api.auth()
    )
    assert r.status_code == 404


async def test_without_the_service_changes_are_503(api: Api) -> None:
    await seed()
    r = await api.client.put("/api/v1/config/defaults", json={}, headers=api.auth("admin"))
    assert r.status_code == 503


async def test_drift_and_publish_metrics(api: Api, pub: FakePublisher) -> None:
    api.ctx.desired = service(pub)
    api.ctx.desired.published_total = api.ctx.metrics.desired_published
    await api.client.put("/api/v1/config/sites/S1", json={}, headers=api.auth("admin"))
    text = (await api.client.get("/metrics")).text
    assert "fleet_desired_drift_terminals 2.0" in text
    assert 'fleet_desired_drift_seconds{terminal="T1"}' in text
    assert "fleet_desired_documents_published_total 2.0" in text


async def test_which_layer_decides(api: Api, pub: FakePublisher) -> None:
    """Issue 20: a fleet-wide change that some terminals override says how many and by which
    layer; a terminal's document says which layer each of its values comes from."""
    admin = api.auth("admin")
    r = await api.client.put("/api/v1/config/sites/S2", json={"paper": {"low_pct": 40}},
                             headers=admin)  # fmt: skip
    assert r.status_code == 200 and r.json()["overridden"] == {}  # the site decides for T3
    r = await api.client.put(
        "/api/v1/config/defaults",
        json={"paper": {"low_pct": 25}, "kiosk": {"notice": "维护通知"}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    # Every terminal is a kx-a4-ipp, whose model file sets low_pct 15; T3's site sets 40.
    assert r.json()["overridden"] == {"paper.low_pct": {"model file": 2, "site": 1}}
    r = await api.client.get("/api/v1/config/terminals/T3/desired", headers=api.auth())
    sources = r.json()["sources"]
    assert sources["paper.low_pct"] == "site"
    assert sources["paper.capacity"] == "model file"
    assert sources["kiosk.notice"] == "defaults"
    assert sources["kiosk.locale"] == "built-in"
    assert set(sources) >= {"status_interval_s", "service_hours"}
