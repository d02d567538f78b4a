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
from fleet.qr_images import MAX_PIXELS
from fleet.server.api.routes.verify import MAX_REQUEST_PIXELS, MAX_VERIFY_BYTES
from fleet.server.licences.keys import Issuer, load_issuer
from fleet.server.settings import Settings
from tests.image_bombs import declared_png, many_scans_jpeg
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
    # The body as a whole is bounded, whatever its texts.
    r = await api.client.post(
        "/api/v1/verify",
        content=b'{"texts": ["' + b"A" * (MAX_VERIFY_BYTES + 1) + b'"]}',
        headers={**api.auth("auditor"), "content-type": "application/json"},
    )
    assert r.status_code == 413 and str(MAX_VERIFY_BYTES) in r.json()["detail"]
    # Not a list of texts at all: the request is refused, naming where.
    for bad in (b"{", b'{"texts": "LIC1:"}', b'{"at": 1}', b'{"texts": ["ok", 5]}', b"[]"):
        r = await api.client.post(
            "/api/v1/verify",
            content=bad,
            headers={**api.auth("auditor"), "content-type": "application/json"},
        )
        assert r.status_code == 422, bad
        assert r.json()["detail"][0]["loc"][0] == "body"
    assert await _verify(api, []) == []


async def test_every_text_gets_the_command_lines_verdict(api: Api, tmp_path: Path) -> None:
    """One bad scan costs only its own verdict: over-long, not LIC1, not UTF-8, blank, a lone
    surrogate each get the verdict `fleet verify` gives that line, beside a genuine one."""
    give_issuer(api)
    genuine = (await issue(api))["text"]
    trust = tmp_path / "trust.json"
    trust.write_text((await api.client.get("/api/v1/trust", headers=api.auth("auditor"))).text)
    lines: list[bytes] = [
        genuine.encode(),
        b"L" * (rust_core.MAX_TEXT_CHARS + 1),
        b"LIC1:" + b"A" * 5000,
        genuine.encode() + b"A" * rust_core.MAX_TEXT_CHARS,
        b"A" * 1_000_000,  # one huge line; the body stays under its bound
        b"hello",
        "营业执照".encode(),
        b"LIC1:\xff\xfe6BF",  # not UTF-8: the CLI reads U+FFFD
        b"  " + genuine.encode() + b"\t",  # trimmed by both
        genuine.encode(),
    ]
    cli = subprocess.run(
        [sys.executable, "-m", "fleet", "verify", "--json", "--trust", str(trust), "--at", str(AT)],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        check=False,
    )
    want = [json.loads(line)["verdict"] for line in cli.stdout.decode().splitlines()]
    assert want == ["valid", *["too_large"] * 4, *["malformed"] * 3, "valid", "valid"]
    # The same texts as a JSON body, the non-UTF-8 bytes as they came (not JSON-escaped).
    body = b'{"at": %d, "texts": [' % AT + b", ".join(_json_bytes(x) for x in lines) + b"]}"
    r = await api.client.post(
        "/api/v1/verify",
        content=body,
        headers={**api.auth("auditor"), "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text[:500]
    results = r.json()["results"]
    assert [x["verdict"] for x in results] == want
    assert results[1]["stage"] == "length" and results[1]["claims"] is None
    assert results[8]["serial"] == results[0]["serial"]
    # What only JSON can say: a lone surrogate, and a blank text (the CLI skips blank lines).
    r = await api.client.post(
        "/api/v1/verify",
        content=b'{"texts": ["LIC1:\\ud800", "", "%s"]}' % genuine.encode(),
        headers={**api.auth("auditor"), "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert [x["verdict"] for x in r.json()["results"]] == ["malformed", "malformed", "valid"]


def _json_bytes(raw: bytes) -> bytes:
    """`raw` as a JSON string literal, leaving bytes that are not UTF-8 as they are."""
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\t", b"\\t") + b'"'


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


async def test_images_share_one_pixel_budget_checked_from_their_headers(api: Api) -> None:
    """Ten 7,700x7,700 PNGs cost seconds of CPU to decode: a request decodes at most
    MAX_REQUEST_PIXELS, counted from the headers, and an image past it gets its own error
    without being decoded, while the others still get their verdicts."""
    give_issuer(api)
    genuine = (await issue(api))["text"]
    qr = rust_core.qr_png(genuine, 3)
    side = 7_700  # under the per-image limit; two fit the request's budget, three do not
    assert side * side <= MAX_PIXELS and 3 * side * side > MAX_REQUEST_PIXELS
    big = declared_png(side, side)
    files = [
        ("files", (f"{i}.png", data, "image/png")) for i, data in enumerate([qr, big, big, big, qr])
    ]
    r = await api.client.post(
        "/api/v1/verify/images", files=files, headers=api.auth("auditor"), params={"at": AT}
    )
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert [[x["verdict"] for x in i["results"]] for i in images] == [
        ["valid"],
        [],
        [],
        [],
        ["valid"],
    ]
    # The two that fit were decoded (and found cut short); the third was refused unread.
    assert "truncated" in images[1]["error"] and "truncated" in images[2]["error"]
    assert f"{MAX_REQUEST_PIXELS:,} pixel budget" in images[3]["error"]
    assert "7700x7700" in images[3]["error"]
    # One image over the per-image limit is refused from its header too, whatever the budget.
    files = [("files", ("huge.png", declared_png(8_000, 8_000), "image/png"))]
    r = await api.client.post("/api/v1/verify/images", files=files, headers=api.auth("auditor"))
    assert "over the 60,000,000 pixel limit" in r.json()["images"][0]["error"]


async def test_a_jpeg_of_too_many_scans_gets_its_own_error(api: Api) -> None:
    """A progressive JPEG repeating its scans thousands of times (7.4 s of CPU for one 7,000 px
    square in the security test) is refused from its markers; a normal progressive one is read."""
    give_issuer(api)
    genuine = (await issue(api))["text"]
    progressive = io.BytesIO()
    Image.open(io.BytesIO(rust_core.qr_png(genuine, 3))).save(
        progressive, "JPEG", progressive=True, quality=90
    )
    files = [
        ("files", ("scans.jpg", many_scans_jpeg(80, 60, 2_000), "image/jpeg")),
        ("files", ("progressive.jpg", progressive.getvalue(), "image/jpeg")),
    ]
    r = await api.client.post(
        "/api/v1/verify/images", files=files, headers=api.auth("auditor"), params={"at": AT}
    )
    assert r.status_code == 200, r.text
    scans, ok = r.json()["images"]
    assert scans["results"] == [] and "more than 100 scans" in scans["error"]
    assert ok["error"] is None and [x["verdict"] for x in ok["results"]] == ["valid"]


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
