"""Issue 12 (6): every error in the shape the OpenAPI documents, and the unexpected kept inside."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fleet.server.api.routes.updates import updates_dir
from tests.server.api_support import Api

pytest_plugins = ["tests.server.api_fixtures"]


async def test_a_body_that_is_not_even_text_is_a_422_at_body(api: Api) -> None:
    r = await api.client.put(
        "/api/v1/config/defaults",
        content=b'{"debounce_s": "\xff"}',
        headers={**api.auth("admin"), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body"]]


@pytest.mark.parametrize("version", [True, "2"])
async def test_a_body_number_must_be_a_json_number(api: Api, version: object) -> None:
    r = await api.client.post(
        "/api/v1/config/terminals/T1/desired/rollback",
        json={"version": version},
        headers=api.auth("admin"),
    )
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "version"]]


async def test_a_405_allows_every_method_of_the_path(api: Api) -> None:
    r = await api.client.request("DELETE", "/api/v1/licences", headers=api.auth())
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"


async def test_an_unexpected_error_is_a_logged_500_without_its_traceback(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Path:
        raise RuntimeError("secret internals")

    api.app.dependency_overrides[updates_dir] = broken  # a bug, as far as the route knows
    with caplog.at_level(logging.ERROR, logger="fleet.server.api.errors"):
        r = await api.client.get("/api/v1/updates/metadata/root.json")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert "secret" not in r.text and "Traceback" not in r.text
    [record] = caplog.records
    reference = detail.split("reference ")[1].split(")")[0]
    assert reference in record.getMessage() and record.exc_info is not None
