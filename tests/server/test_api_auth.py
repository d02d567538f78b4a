"""Every protected route refuses a missing, unknown, revoked or under-privileged token, and
tells nothing; public routes need no token."""

from __future__ import annotations

import pytest

from fleet.server.db.models import Role
from tests.server.api_support import Api, make_token, seed_fleet

pytest_plugins = ["tests.server.api_fixtures"]

#: (method, path) of every protected route. /events streams forever when allowed, so its
#: allowed case is covered by test_api_events.
PROTECTED = [
    ("GET", "/api/v1/terminals"),
    ("GET", "/api/v1/terminals/T1"),
    ("GET", "/api/v1/terminals/T1/history"),
    ("GET", "/api/v1/alerts"),
    ("POST", "/api/v1/alerts/1/ack"),
    ("GET", "/api/v1/refill-round"),
    ("GET", "/api/v1/events"),
]


def _no_data(body: dict[str, object]) -> bool:
    return set(body) == {"detail"}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_refused_without_a_valid_token(api: Api, method: str, path: str) -> None:
    await seed_fleet()
    revoked = await make_token(Role.OPERATOR, name="gone", revoked=True)
    cases = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {api.tokens['operator']}"},
        "unknown": {"Authorization": "Bearer not-a-token"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }
    for case, headers in cases.items():
        r = await api.client.request(method, path, headers=headers)
        assert r.status_code == 401, case
        assert r.headers["www-authenticate"].startswith("Bearer"), case
        assert _no_data(r.json()), case
    r = await api.client.request(method, path, headers=api.auth("auditor"))
    assert r.status_code == 403
    assert "www-authenticate" not in r.headers
    assert _no_data(r.json())


@pytest.mark.parametrize(("method", "path"), [p for p in PROTECTED if "events" not in p[1]])
async def test_operator_and_admin_are_allowed(api: Api, method: str, path: str) -> None:
    await seed_fleet()
    for role in ("operator", "admin"):
        r = await api.client.request(method, path, headers=api.auth(role))
        # Alert 1 is T2's open paper_out: acking it twice is fine (idempotent).
        assert r.status_code == 200, (role, r.text)


@pytest.mark.parametrize(
    "path", ["/healthz", "/healthz/live", "/metrics", "/docs", "/openapi.json"]
)
async def test_public_routes_need_no_token(api: Api, path: str) -> None:
    r = await api.client.get(path)
    assert r.status_code == 200


async def test_openapi_declares_bearer_auth(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {
        "/api/v1/terminals",
        "/api/v1/terminals/{terminal_id}",
        "/api/v1/terminals/{terminal_id}/history",
        "/api/v1/alerts",
        "/api/v1/alerts/{alert_id}/ack",
        "/api/v1/refill-round",
        "/api/v1/events",
        "/healthz",
        "/metrics",
    } <= set(spec["paths"])
    # Protected operations declare the scheme, public ones do not.
    assert spec["paths"]["/api/v1/terminals"]["get"]["security"] == [{"HTTPBearer": []}]
    assert {"401", "403"} <= set(
        spec["paths"]["/api/v1/alerts/{alert_id}/ack"]["post"]["responses"]
    )
    assert "security" not in spec["paths"]["/healthz"]["get"]
