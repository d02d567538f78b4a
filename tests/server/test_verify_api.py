"""Verifying through the API, and the trust and revocation lists auditors download: the same
verdicts as `fleet verify` with the same lists."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image

import rust_core
from fleet.demo import FORGED_NAME, NAME, forge_name
from fleet.server.licences.keys import Issuer, load_issuer
from fleet.server.settings import Settings
from tests.server.api_support import NOW, Api
from tests.server.licence_support import ISSUER, give_issuer, issue

pytest_plugins = ["tests.server.api_fixtures"]

AT = int(NOW.timestamp())


async def _verify(
    api: Api, texts: list[str], role: str = "auditor", **extra: object
) -> list[dict[str, Any]]:
    r = await api.client.post(
        "/api/v1/verify", json={"texts": texts, **extra}, headers=api.auth(role)
    )
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


async def test_verdicts_genuine_tampered_revoked_unknown_malformed(api: Api) -> None:
    give_issuer(api)
    genuine = (await issue(api))["text"]
    revoked = await issue(api)
    r = await api.client.post(
        f"/api/v1/licences/{revoked['serial']}/revoke",
        json={"reason": "test"},
        headers=api.auth("admin"),
    )
    assert r.status_code == 200
    stranger = rust_core.SigningKey.generate().sign_licence(
        {"iss": ISSUER, "iat": AT, "cti": os.urandom(16), "lic": _lic()}
    )
    texts = [genuine, forge_name(genuine, NAME, FORGED_NAME), revoked["text"], stranger, "hello"]
    results = await _verify(api, texts)
    assert [x["verdict"] for x in results] == [
        "valid",
        "bad_signature",
        "revoked",
        "unknown_kid",
        "malformed",
    ]
    ok = results[0]
    assert ok["valid"] is True and ok["stage"] is None and ok["claims"]["lic"]["2"] == NAME
    assert ok["serial"] == ok["claims"]["cti"] and ok["alg"] == "EdDSA"
    # The contents of a forgery are never handed out.
    assert results[1]["claims"] is None and results[1]["serial"] is None
    assert results[1]["stage"] == "signature" and results[1]["detail"]
    assert results[2]["serial"] == revoked["serial"] and results[2]["valid"] is False
    # Every role may verify.
    for role in ("operator", "admin"):
        assert [x["verdict"] for x in await _verify(api, [genuine], role)] == ["valid"]
    r = await api.client.post("/api/v1/verify", json={"texts": [genuine]})
    assert r.status_code == 401


async def test_at_decides_expiry(api: Api) -> None:
    give_issuer(api)
    text = (await issue(api, {**_body(), "exp": AT + 100}))["text"]
    assert [x["verdict"] for x in await _verify(api, [text], at=AT + 50)] == ["valid"]
    assert [x["verdict"] for x in await _verify(api, [text], at=AT + 101)] == ["expired"]
    assert [x["verdict"] for x in await _verify(api, [text], at=AT - 3600)] == ["not_yet_valid"]


async def test_request_bounds(api: Api) -> None:
    give_issuer(api)
    r = await api.client.post(
        "/api/v1/verify", json={"texts": ["x"] * 1001}, headers=api.auth("auditor")
    )
    assert r.status_code == 413 and "1000" in r.json()["detail"]
    r = await api.client.post(
        "/api/v1/verify",
        json={"texts": ["ok", "L" * (rust_core.MAX_TEXT_CHARS + 1)]},
        headers=api.auth("auditor"),
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "texts", 1]
    r = await api.client.post(
        "/api/v1/verify",
        content=b'{"texts": ["' + b"A" * 6_000_000 + b'"]}',
        headers={**api.auth("auditor"), "content-type": "application/json"},
    )
    assert r.status_code == 413
    for bad in (b"{", b'{"texts": "LIC1:"}', b'{"at": 1}'):
        r = await api.client.post(
            "/api/v1/verify",
            content=bad,
            headers={**api.auth("auditor"), "content-type": "application/json"},
        )
        assert r.status_code == 422, bad
        assert r.json()["detail"][0]["loc"][0] == "body"
    assert await _verify(api, []) == []


async def test_trust_and_revoked_lists_match_the_command_line(api: Api, tmp_path: Path) -> None:
    issuer = give_issuer(api)
    old = rust_core.SigningKey.generate("ES256")
    api.ctx.issuer = Issuer(issuer.key, ISSUER, "", (old.verifying_key(),))
    (tmp_path / "key.pem").write_text(issuer.key.to_pem())
    (tmp_path / "old.pem").write_text(old.public_pem())
    serial = (await issue(api))["serial"]
    await api.client.post(
        f"/api/v1/licences/{serial}/revoke", json={"reason": "x"}, headers=api.auth("admin")
    )
    r = await api.client.get("/api/v1/trust", headers=api.auth("auditor"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["content-disposition"] == 'inline; filename="trust.json"'
    cli = _fleet(
        "keys",
        "trust-list",
        "--issuer",
        ISSUER,
        str(tmp_path / "key.pem"),
        str(tmp_path / "old.pem"),
    )
    assert r.text == cli
    assert [k["alg"] for k in json.loads(r.text)["keys"]] == ["EdDSA", "ES256"]
    r = await api.client.get("/api/v1/revoked?download=true", headers=api.auth("auditor"))
    assert r.headers["content-disposition"] == 'attachment; filename="revoked.json"'
    assert r.text == _fleet("revocations", serial)
    assert json.loads(r.text) == {"v": 1, "revoked": [serial]}
    for path in ("/api/v1/trust", "/api/v1/revoked"):
        assert (await api.client.get(path)).status_code == 401


async def test_verify_images(api: Api) -> None:
    give_issuer(api)
    genuine = (await issue(api))["text"]
    tampered = forge_name(genuine, NAME, FORGED_NAME)
    two = Image.new("L", (900, 450), 255)
    for i, t in enumerate((genuine, tampered)):
        two.paste(Image.open(io.BytesIO(rust_core.qr_png(t, 3))), (20 + 450 * i, 20))
    buf = io.BytesIO()
    two.save(buf, "JPEG", quality=90)
    blank = io.BytesIO()
    Image.new("RGB", (200, 200), "white").save(blank, "PNG")
    files = [
        ("files", ("two.jpg", buf.getvalue(), "image/jpeg")),
        ("files", ("blank.png", blank.getvalue(), "image/png")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
    ]
    r = await api.client.post(
        "/api/v1/verify/images", files=files, headers=api.auth("auditor"), params={"at": AT}
    )
    assert r.status_code == 200, r.text
    two_r, blank_r, notes_r = r.json()["images"]
    assert two_r["file"] == "two.jpg" and two_r["error"] is None
    assert sorted(x["verdict"] for x in two_r["results"]) == ["bad_signature", "valid"]
    assert {x["text"] for x in two_r["results"]} == {genuine[:120], tampered[:120]}
    assert blank_r == {"file": "blank.png", "error": None, "results": []}
    assert notes_r["results"] == [] and "not an image" in notes_r["error"]


def test_load_issuer_makes_a_key_in_dev_mode_only_and_keeps_it(tmp_path: Path) -> None:
    s = Settings(dev_mode=True, data_dir=tmp_path, issuer_key_alg="SM2", issuer="CN-1")
    first = load_issuer(s)
    assert first.key.alg == "SM2" and first.name == "CN-1"
    assert (tmp_path / "issuer-key.pem").stat().st_mode & 0o777 == 0o600
    assert load_issuer(s).key.kid == first.key.kid
    assert s.issuer_key_file != s.config_key_file


def _body() -> dict[str, object]:
    from tests.server.licence_support import lic_body

    return lic_body()


def _lic() -> dict[int, str]:
    from fleet.demo import sample_claims

    lic: dict[int, str] = sample_claims(AT, b"\0" * 16)["lic"]
    return lic


def _fleet(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "fleet", *args], check=True, capture_output=True, text=True
    )
    return out.stdout
