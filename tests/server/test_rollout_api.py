"""The rollout routes: auth, creating with a plan, reading, control, and clear 4xx errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleet.server.api.routes.updates import updates_dir
from fleet.server.rollouts import agent_targets
from fleet.server.updates.repository import init_repository
from tests.server.api_support import Api
from tests.server.desired_support import FakePublisher, service
from tests.server.rollout_support import IDS, VERSION, seed_fleet

pytest_plugins = ["tests.server.api_fixtures"]

BODY: dict[str, Any] = {
    "version": VERSION,
    "target": {"sites": ["S1", "S2"]},
    "waves": [1, "10%", "50%", "100%"],
    "override_window": True,
}


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TUF repository with agent 1.3.0 published (shared: signing keys costs time)."""
    base = tmp_path_factory.mktemp("updates")
    repo = init_repository(base / "updates", base / "root-keys")
    bundle = base / "bundle.tar.gz"
    bundle.write_bytes(b"agent 1.3.0" * 100)
    repo.add_target(bundle, VERSION)
    return base / "updates"


@pytest.fixture
async def rapi(api: Api, repo_dir: Path) -> AsyncIterator[Api]:
    await seed_fleet()
    desired = service(FakePublisher())
    desired.agent_targets = agent_targets
    api.ctx.desired = desired
    api.app.dependency_overrides[updates_dir] = lambda: repo_dir
    yield api
    api.app.dependency_overrides.clear()


async def test_auth(rapi: Api) -> None:
    c = rapi.client
    calls = [
        ("POST", "/api/v1/rollouts", BODY),
        ("GET", "/api/v1/rollouts", None),
        ("GET", "/api/v1/rollouts/1", None),
        ("POST", "/api/v1/rollouts/1/pause", None),
        ("POST", "/api/v1/rollouts/1/resume", None),
        ("POST", "/api/v1/rollouts/1/abort", None),
    ]
    for method, url, body in calls:
        assert (await c.request(method, url, json=body)).status_code == 401, url
        assert (
            await c.request(method, url, json=body, headers=rapi.auth("auditor"))
        ).status_code == 403
        if method == "POST":
            r = await c.request(method, url, json=body, headers=rapi.auth("operator"))
            assert r.status_code == 403, url


async def test_create_returns_the_plan_and_operators_read_it(rapi: Api) -> None:
    r = await rapi.client.post("/api/v1/rollouts", json=BODY, headers=rapi.auth("admin"))
    assert r.status_code == 201, r.text
    plan = r.json()
    assert plan["state"] == "running" and plan["current_wave"] == 0
    assert [len(w["terminals"]) for w in plan["waves"]] == [1, 1, 8, 10]
    assert plan["waves"][0]["terminals"][0]["id"] == "T01" and plan["waves"][0]["started"]
    assert [t["id"] for w in plan["waves"] for t in w["terminals"]] == IDS
    assert plan["counts"]["pending"] == 20 and plan["created_by"] == "admin-1"
    rid = plan["id"]

    got = await rapi.client.get(f"/api/v1/rollouts/{rid}", headers=rapi.auth("operator"))
    assert got.status_code == 200 and got.json()["waves"] == plan["waves"]
    listed = await rapi.client.get("/api/v1/rollouts?state=running", headers=rapi.auth())
    assert listed.json()["total"] == 1 and listed.json()["items"][0]["wave_count"] == 4
    assert (await rapi.client.get("/api/v1/rollouts/999", headers=rapi.auth())).status_code == 404

    await rapi.ctx.rollouts.on_update_events([])  # nothing happens on no events
    admin = rapi.auth("admin")
    paused = await rapi.client.post(
        f"/api/v1/rollouts/{rid}/pause", json={"reason": "lunch"}, headers=admin
    )
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert paused.json()["reason"] == "lunch"
    assert (
        await rapi.client.post(f"/api/v1/rollouts/{rid}/pause", headers=admin)
    ).status_code == 409
    resumed = await rapi.client.post(f"/api/v1/rollouts/{rid}/resume", headers=admin)
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    aborted = await rapi.client.post(f"/api/v1/rollouts/{rid}/abort", headers=admin)
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    again = await rapi.client.post(f"/api/v1/rollouts/{rid}/resume", headers=admin)
    assert again.status_code == 409 and "aborted" in again.json()["detail"]
    assert (await rapi.client.post("/api/v1/rollouts/999/abort", headers=admin)).status_code == 404


async def test_in_service_hours_the_first_wave_waits(rapi: Api) -> None:
    body = {**BODY, "override_window": False}  # the API's clock: 14:00 on a service day
    r = await rapi.client.post("/api/v1/rollouts", json=body, headers=rapi.auth("admin"))
    assert r.status_code == 201
    assert r.json()["state"] == "pending" and "maintenance window" in r.json()["reason"]
    assert not any(w["started"] for w in r.json()["waves"])


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"version": "2.0.0"}, 422, "not published"),
        ({"version": "latest"}, 422, "version"),
        ({"target": {}}, 422, "target"),
        ({"target": {"terminals": ["NOPE"]}}, 422, "NOPE"),
        ({"target": {"sites": ["S9"]}}, 422, "no terminal"),
        ({"waves": ["200%"]}, 422, "waves"),
        ({"waves": []}, 422, "waves"),
        ({"success_threshold": 0}, 422, "success_threshold"),
        ({"window": {"start": "25:00", "end": "06:00", "tz": "Asia/Shanghai"}}, 422, "window"),
        ({"window": {"start": "22:00", "end": "06:00", "tz": "Mars/Base"}}, 422, "time zone"),
        ({"extra": 1}, 422, "extra"),
    ],
)
async def test_bad_input(rapi: Api, change: dict[str, Any], status: int, words: str) -> None:
    body = {**BODY, **change}
    r = await rapi.client.post("/api/v1/rollouts", json=body, headers=rapi.auth("admin"))
    assert r.status_code == status, r.text
    assert words in r.text


async def test_overlapping_rollout_is_a_conflict(rapi: Api) -> None:
    admin = rapi.auth("admin")
    first = {**BODY, "target": {"sites": ["S1"]}}
    assert (
        await rapi.client.post("/api/v1/rollouts", json=first, headers=admin)
    ).status_code == 201
    r = await rapi.client.post(
        "/api/v1/rollouts", json={**BODY, "target": {"terminals": ["T05"]}}, headers=admin
    )
    assert r.status_code == 409 and "T05" in r.json()["detail"]


async def test_without_a_repository_or_desired_state(rapi: Api, tmp_path: Path) -> None:
    admin = rapi.auth("admin")
    rapi.app.dependency_overrides[updates_dir] = lambda: tmp_path / "none"
    r = await rapi.client.post("/api/v1/rollouts", json=BODY, headers=admin)
    assert r.status_code == 409 and "no TUF repository" in r.json()["detail"]
    rapi.ctx.desired = None
    assert (await rapi.client.post("/api/v1/rollouts", json=BODY, headers=admin)).status_code == 503
