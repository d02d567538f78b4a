"""Issue 12 (3): path and query values the database cannot take were 500s with a traceback.

Each bad value must be a 422 whose detail names the field (FastAPI's list form), never a 500;
the dashboard's terminal and rollout pages answer such ids with their 404 page.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.server.api.routes.updates import updates_dir
from fleet.server.updates.repository import init_repository
from tests.server.api_support import Api, seed_fleet
from tests.server.desired_support import FakePublisher, service

pytest_plugins = ["tests.server.api_fixtures"]

BAD_ID = "bad!id"
LONG = "x" * 65
HUGE = 2**64  # beyond any 64-bit column


@pytest.fixture
async def fleet(api: Api) -> Api:
    await seed_fleet()
    api.ctx.desired = service(FakePublisher())
    return api


async def _call(api: Api, method: str, url: str, body: Any = None, role: str = "admin") -> Any:
    r = await api.client.request(method, url, json=body, headers=api.auth(role))
    return r


def _names(r: httpx.Response, *loc: str | int) -> bool:
    """A 422 in the documented list form whose (first) error points at `loc`."""
    assert r.status_code == 422, f"{r.status_code}: {r.text}"
    detail = r.json()["detail"]
    assert isinstance(detail, list), r.text
    return list(loc) in [d["loc"] for d in detail]


TERMINAL_ROUTES = [
    ("GET", "/api/v1/terminals/{}", None),
    ("GET", "/api/v1/terminals/{}/history", None),
    ("GET", "/api/v1/terminals/{}/commands", None),
    ("POST", "/api/v1/terminals/{}/commands", {"name": "refresh_status"}),
    ("GET", "/api/v1/config/terminals/{}", None),
    ("PUT", "/api/v1/config/terminals/{}", {}),
    ("GET", "/api/v1/config/terminals/{}/desired", None),
    ("GET", "/api/v1/config/terminals/{}/desired/history", None),
    ("POST", "/api/v1/config/terminals/{}/desired/rollback", {"version": 1}),
]


@pytest.mark.parametrize(("method", "path", "body"), TERMINAL_ROUTES)
@pytest.mark.parametrize("bad", [BAD_ID, LONG])
async def test_an_invalid_terminal_id_is_422_on_every_route(
    fleet: Api, method: str, path: str, body: Any, bad: str
) -> None:
    r = await _call(fleet, method, path.format(bad), body)
    assert _names(r, "path", "terminal_id"), r.text


@pytest.mark.parametrize("route", ["/api/v1/alerts", "/api/v1/licences"])
@pytest.mark.parametrize("bad", ["", BAD_ID])
async def test_an_empty_or_invalid_terminal_filter_is_422(fleet: Api, route: str, bad: str) -> None:
    r = await _call(fleet, "GET", f"{route}?terminal={bad}")
    assert _names(r, "query", "terminal"), r.text


@pytest.mark.parametrize(
    ("route", "name"),
    [
        ("/api/v1/alerts", "severity"),
        ("/api/v1/alerts", "rule"),
        ("/api/v1/terminals", "alert"),
        ("/api/v1/terminals", "site"),
        ("/api/v1/alerts", "site"),
    ],
)
async def test_an_over_long_filter_is_422(fleet: Api, route: str, name: str) -> None:
    r = await _call(fleet, "GET", f"{route}?{name}={LONG}")
    assert _names(r, "query", name), r.text


@pytest.mark.parametrize(
    "route",
    [
        "/api/v1/terminals",
        "/api/v1/alerts",
        "/api/v1/licences",
        "/api/v1/rollouts",
        "/api/v1/terminals/T1/commands",
        "/api/v1/config/terminals/T1/desired/history",
    ],
)
async def test_an_offset_beyond_64_bits_is_422(fleet: Api, route: str) -> None:
    r = await _call(fleet, "GET", f"{route}?offset={HUGE}")
    assert _names(r, "query", "offset"), r.text


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/api/v1/rollouts/{}", "rollout_id"),
        ("POST", "/api/v1/rollouts/{}/pause", "rollout_id"),
        ("POST", "/api/v1/rollouts/{}/resume", "rollout_id"),
        ("POST", "/api/v1/rollouts/{}/abort", "rollout_id"),
        ("POST", "/api/v1/alerts/{}/ack", "alert_id"),
        ("GET", "/api/v1/templates/form/versions/{}", "version"),
    ],
)
async def test_an_id_beyond_64_bits_is_422(fleet: Api, method: str, path: str, name: str) -> None:
    r = await _call(fleet, method, path.format(HUGE))
    assert _names(r, "path", name), r.text


async def test_a_rollback_version_beyond_64_bits_is_422(fleet: Api) -> None:
    r = await _call(
        fleet, "POST", "/api/v1/config/terminals/T1/desired/rollback", {"version": HUGE}
    )
    assert _names(r, "body", "version"), r.text


@pytest.fixture
async def with_repo(fleet: Api, tmp_path: Path) -> AsyncIterator[Api]:
    """An initialised (empty) TUF repository: the rollout route checks publication there."""
    base = tmp_path / "updates"
    init_repository(base, tmp_path / "root-keys")
    fleet.app.dependency_overrides[updates_dir] = lambda: base
    yield fleet
    fleet.app.dependency_overrides.clear()


@pytest.mark.parametrize("version", ["1.0.0-+", "1.0.0-" + "a" * 70, "١.0.0"])
async def test_a_rollout_version_that_is_no_release_name_is_422(
    with_repo: Api, version: str
) -> None:
    body = {"version": version, "target": {"sites": ["S1"]}, "override_window": True}
    r = await _call(with_repo, "POST", "/api/v1/rollouts", body)
    assert _names(r, "body", "version"), r.text


async def test_a_history_range_beyond_the_calendar_is_not_a_500(fleet: Api) -> None:
    for query in ("to=0001-01-01T00:00:00Z", "from=9999-12-31T23:00:00-05:00"):
        r = await _call(fleet, "GET", f"/api/v1/terminals/T1/history?{query}")
        assert r.status_code in (200, 422), r.text


async def _login(api: Api) -> None:
    """The dashboard's own login: its CSRF cookie echoed in the form, then the session cookie."""
    page = await api.client.get("/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert nonce is not None, page.text
    r = await api.client.post(
        "/login", data={"token": api.tokens["operator"], "csrf": nonce.group(1)}
    )
    assert r.status_code == 303, r.text


@pytest.mark.parametrize(
    "path", [f"/terminals/{BAD_ID}", f"/terminals/{LONG}", f"/rollouts/{HUGE}"]
)
async def test_dashboard_pages_answer_an_impossible_id_with_their_404_page(
    fleet: Api, path: str
) -> None:
    await _login(fleet)
    r = await fleet.client.get(path)
    assert r.status_code == 404 and "text/html" in r.headers["content-type"], r.text
