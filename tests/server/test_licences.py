"""Issuing, reading, listing and revoking licences through the API (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import io
from datetime import timedelta

import pytest
import zxingcpp
from PIL import Image
from pydantic import SecretStr

import rust_core
from fleet.server.db.models import Licence
from tests.server.api_support import NOW, Api, seed_fleet
from tests.server.licence_support import ISSUER, give_issuer, issue, lic_body

pytest_plugins = ["tests.server.api_fixtures"]


async def test_issue_signs_stores_and_returns_the_qr(api: Api) -> None:
    issuer = give_issuer(api)
    out = await issue(api)
    assert set(out) == {"serial", "text", "qr_svg", "qr_png_base64", "issued_at"}
    assert len(out["serial"]) == 32 and out["text"].startswith("LIC1:")
    store = rust_core.TrustStore.from_keys([issuer.key], ISSUER)
    v = store.verify(out["text"], at=int(NOW.timestamp()))
    assert v.verdict == "valid"
    assert v.claims is not None
    assert v.claims["cti"].hex() == out["serial"]
    assert v.claims["iss"] == ISSUER and v.claims["iat"] == int(NOW.timestamp())
    assert v.claims["lic"][1] == lic_body()["lic"]["uscc"]
    # The QR codes carry exactly the text.
    png = Image.open(io.BytesIO(base64.b64decode(out["qr_png_base64"])))
    assert [b.text for b in zxingcpp.read_barcodes(png)] == [out["text"]]
    assert out["qr_svg"].startswith("<svg") or "<svg" in out["qr_svg"][:200]
    row = await Licence.get(serial=out["serial"])
    assert row.text == out["text"] and row.issued_by == "operator-1"
    assert row.claims["lic"]["2"] == "成都市武侯区蓉香小吃店" and row.claims["cti"] == out["serial"]
    assert row.revoked_at is None and row.terminal_id is None


async def test_terminal_links_the_licence_and_fills_term(api: Api) -> None:
    await seed_fleet()
    give_issuer(api)
    out = await issue(api, {**lic_body(term=None), "terminal": "T1"}, role="admin")
    row = await Licence.get(serial=out["serial"])
    assert row.terminal_id == "T1" and row.claims["lic"]["9"] == "T1"
    r = await api.client.get("/api/v1/licences?terminal=T1", headers=api.auth())
    assert r.json()["total"] == 1
    r = await api.client.post(
        "/api/v1/licences", json={**lic_body(), "terminal": "NOPE"}, headers=api.auth()
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "terminal"]


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        (lic_body(uscc="92510107MA6CQ8T150"), ["body", "lic", "uscc"], "check character"),
        (lic_body(name=None), ["body", "lic", "name"], "required"),
        (lic_body(addr=""), ["body", "lic", "addr"], "at least 1 character"),
        (lic_body(addr="  "), ["body", "lic", "addr"], "pattern"),
        (lic_body(term=None), ["body", "lic", "term"], "required"),
        (lic_body(est="18/03/2024"), ["body", "lic", "est"], "YYYY-MM-DD"),
        (lic_body(est="2024-02-30"), ["body", "lic", "est"], "YYYY-MM-DD"),  # rust_core's check
        (lic_body(colour="red"), ["body", "lic", "colour"], "Extra inputs"),
        (lic_body(**{"2": "蓉香"}), ["body", "lic"], "twice"),
        ({**lic_body(), "iss": "CN-1"}, ["body", "iss"], "Extra inputs"),
        ({**lic_body(), "cti": "abc"}, ["body", "cti"], "pattern"),
        ({"lic": "x"}, ["body", "lic"], "dictionary"),
    ],
)
async def test_refused_claims_name_the_field(
    api: Api, body: dict[str, object], loc: list[str], words: str
) -> None:
    give_issuer(api)
    r = await api.client.post("/api/v1/licences", json=body, headers=api.auth())
    assert r.status_code == 422, r.text
    [err] = r.json()["detail"]
    assert err["loc"] == loc
    assert words in err["msg"]
    assert await Licence.all().count() == 0


async def test_given_serial_is_used_once(api: Api) -> None:
    give_issuer(api)
    serial = "00112233445566778899aabbccddeeff"
    out = await issue(api, {**lic_body(), "cti": serial.upper(), "exp": 1_900_000_000})
    assert out["serial"] == serial
    r = await api.client.post(
        "/api/v1/licences", json={**lic_body(), "cti": serial}, headers=api.auth()
    )
    assert r.status_code == 409


async def test_roles_for_issuing_reading_and_revoking(api: Api) -> None:
    give_issuer(api)
    r = await api.client.post("/api/v1/licences", json=lic_body(), headers=api.auth("auditor"))
    assert r.status_code == 403
    r = await api.client.post("/api/v1/licences", json=lic_body())
    assert r.status_code == 401
    serial = (await issue(api))["serial"]
    for path in ("/api/v1/licences", f"/api/v1/licences/{serial}"):
        assert (await api.client.get(path, headers=api.auth("auditor"))).status_code == 403
        assert (await api.client.get(path, headers=api.auth("operator"))).status_code == 200
    revoke = f"/api/v1/licences/{serial}/revoke"
    r = await api.client.post(revoke, json={"reason": "x"}, headers=api.auth("operator"))
    assert r.status_code == 403
    r = await api.client.post(revoke, json={"reason": "x"}, headers=api.auth("auditor"))
    assert r.status_code == 403


async def test_get_and_list_with_paging(api: Api) -> None:
    give_issuer(api)
    serials = []
    for i in range(5):
        api.ctx.clock = lambda i=i: NOW + timedelta(minutes=i)  # type: ignore[misc]
        serials.append((await issue(api))["serial"])
    r = await api.client.get("/api/v1/licences?limit=2&offset=1", headers=api.auth())
    page = r.json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    assert [x["serial"] for x in page["items"]] == [serials[3], serials[2]]  # newest first
    r = await api.client.get(f"/api/v1/licences/{serials[0].upper()}?qr=true", headers=api.auth())
    one = r.json()
    assert one["serial"] == serials[0] and one["revoked"] is False
    assert one["claims"]["lic"]["3"] == "个体工商户" and one["qr_svg"] and one["qr_png_base64"]
    r = await api.client.get("/api/v1/licences/" + "0" * 32, headers=api.auth())
    assert r.status_code == 404


async def test_revoke_is_idempotent_and_listed(api: Api) -> None:
    give_issuer(api)
    serial = (await issue(api))["serial"]
    other = (await issue(api))["serial"]
    path = f"/api/v1/licences/{serial}/revoke"
    r = await api.client.post(path, json={"reason": "吊销：虚假登记"}, headers=api.auth("admin"))
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["revoked"] and first["revoke_reason"] == "吊销：虚假登记"
    assert first["revoked_by"] == "admin-1"
    api.ctx.clock = lambda: NOW + timedelta(hours=1)
    r = await api.client.post(path, json={"reason": "again"}, headers=api.auth("admin"))
    assert r.status_code == 200
    assert r.json()["revoked_at"] == first["revoked_at"]
    assert r.json()["revoke_reason"] == "吊销：虚假登记"
    r = await api.client.post(
        "/api/v1/licences/" + "f" * 32 + "/revoke", json={"reason": "x"}, headers=api.auth("admin")
    )
    assert r.status_code == 404
    r = await api.client.post(path, json={"reason": ""}, headers=api.auth("admin"))
    assert r.status_code == 422
    r = await api.client.get("/api/v1/licences?revoked=true", headers=api.auth())
    assert [x["serial"] for x in r.json()["items"]] == [serial]
    r = await api.client.get("/api/v1/licences?revoked=false", headers=api.auth())
    assert [x["serial"] for x in r.json()["items"]] == [other]


async def test_missing_issuing_key_outside_dev_mode_is_503(api: Api, tmp_path: object) -> None:
    from pathlib import Path

    from fleet.server.settings import Settings

    assert isinstance(tmp_path, Path)
    api.ctx.settings = Settings(
        dev_mode=False,
        database_url="sqlite://:memory:",
        data_dir=tmp_path,
        broker_admin_password=SecretStr("x" * 20),
        session_secret=SecretStr("y" * 20),
    )
    r = await api.client.post("/api/v1/licences", json=lic_body(), headers=api.auth())
    assert r.status_code == 503 and "no issuing key" in r.json()["detail"]
