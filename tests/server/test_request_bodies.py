"""Hostile request bodies against a real `fleet serve`: one over its route's bound is refused
before it is read (declared by Content-Length, or counted as it streams in), with or without a
token; a client that hangs up mid-body is no server error."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

import rust_core
from fleet.server.api.body_limit import DEFAULT_BODY_BYTES
from fleet.server.api.routes.templates import MAX_TEMPLATE_BODY_BYTES
from fleet.server.api.routes.verify import MAX_IMAGES_BODY_BYTES, MAX_VERIFY_BYTES
from fleet.server.web.pages import MAX_FORM_BYTES
from tests.services import mosquitto
from tests.services.fleet_server import Server, fleet_serve

pytestmark = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")

#: How long a refusal may take: it needs no body, so it is as quick as any small request.
PROMPT_S = 5.0


@pytest.fixture(scope="module")
def served() -> Iterator[Server]:
    with fleet_serve("fleet-bodies-", status_interval_s=60) as running:
        s = Server(**vars(running))
        s.token = s.fleet("tokens", "create", "--role", "auditor", "--name", "a").split()[0]
        yield s


def _rss_mib(s: Server) -> float:
    for line in Path(f"/proc/{s.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _connect(s: Server) -> socket.socket:
    url = urlsplit(s.url)
    return socket.create_connection((url.hostname, url.port), timeout=PROMPT_S)


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the response on `sock` (read until the server closes it or the
    declared length is in); socket.timeout if none comes within PROMPT_S."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
         if k.strip().lower() == b"content-length"),
        None,
    )  # fmt: skip
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


BOUNDS = [
    ("POST", "/api/v1/licences", DEFAULT_BODY_BYTES),
    ("PUT", "/api/v1/config/defaults", DEFAULT_BODY_BYTES),
    ("POST", "/login", MAX_FORM_BYTES),
    ("POST", "/api/v1/verify", MAX_VERIFY_BYTES),
    ("POST", "/api/v1/verify/images", MAX_IMAGES_BODY_BYTES),
    ("PUT", "/api/v1/templates/form-a", MAX_TEMPLATE_BODY_BYTES),
]


@pytest.mark.parametrize(("method", "path", "bound"), BOUNDS)
def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    served: Server, method: str, path: str, bound: int
) -> None:
    """Content-Length over the route's bound: 413 while the body has not even been sent, and
    without a token (the 300 MB the tester sent were read and parsed before the 401)."""
    rss = _rss_mib(served)
    with _connect(served) as sock:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {300 * 1024 * 1024}\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"x": "' + b"a" * 1000)  # 1 KB of the declared 300 MB
        started = time.monotonic()
        status, body = _response(sock)  # before the fix: waits for the other 299.99 MB
    assert status == 413, body[:200]
    assert time.monotonic() - started < PROMPT_S
    assert "detail" in json.loads(body)
    # A body just past the bound is refused too; the bound itself is named.
    with _connect(served) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {bound + 1}\r\n\r\n"
        sock.sendall(head.encode())
        status, body = _response(sock)
    assert status == 413 and str(bound) in json.loads(body)["detail"]
    assert _rss_mib(served) - rss < 32  # nothing of the body was kept


@pytest.mark.parametrize(
    ("path", "bound"), [("/api/v1/licences", DEFAULT_BODY_BYTES), ("/login", MAX_FORM_BYTES)]
)
def test_a_streamed_body_is_cut_at_the_bound(served: Server, path: str, bound: int) -> None:
    """Chunked, without a Content-Length: the bytes are counted as they come and reading stops
    at the bound, so the 413 comes while the client is still sending."""
    total = 32 * 1024 * 1024
    step = 64 * 1024
    sent = 0
    finished = False

    def body() -> Iterator[bytes]:
        nonlocal sent, finished
        yield b'{"x": "'
        while sent < total:
            time.sleep(0.005)  # a client streaming slowly: ~13 MB/s, 2.6 s for all of it
            sent += step
            yield b"a" * step
        yield b'"}'
        finished = True

    rss = _rss_mib(served)
    r = httpx.post(
        served.url + path,
        content=body(),
        headers={"Content-Type": "application/json"},
        timeout=30,
        trust_env=False,
    )
    assert r.status_code == 413, r.text[:200]
    assert str(bound) in r.json()["detail"]
    assert not finished and sent < total // 4, sent  # ~1.2 MB of 32 when measured
    assert _rss_mib(served) - rss < 32


def test_bodies_within_their_bounds_still_work(served: Server) -> None:
    auth = {"Authorization": f"Bearer {served.token}"}
    r = httpx.post(
        served.url + "/api/v1/verify", json={"texts": ["hello"]}, headers=auth, trust_env=False
    )
    assert r.status_code == 200 and r.json()["results"][0]["verdict"] == "malformed"
    png = io.BytesIO()
    Image.open(io.BytesIO(rust_core.qr_png("HELLO", 3))).save(png, "PNG")
    files = [("files", ("qr.png", png.getvalue(), "image/png"))] * 3
    r = httpx.post(served.url + "/api/v1/verify/images", files=files, headers=auth, trust_env=False)
    assert r.status_code == 200 and len(r.json()["images"]) == 3
    # A form exactly at its bound is read (and refused for its missing CSRF cookie, not size).
    r = httpx.post(
        served.url + "/login",
        content=b"token=" + b"a" * (MAX_FORM_BYTES - 6),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        trust_env=False,
    )
    assert r.status_code == 403, r.text[:200]
    # The connection that was refused is not reused; the server keeps serving.
    assert httpx.get(served.url + "/healthz", trust_env=False).status_code == 200


def test_a_client_hanging_up_mid_body_is_no_server_error(served: Server) -> None:
    log = served.data / "serve.log"
    before = log.read_text(errors="replace")
    for _ in range(3):
        with _connect(served) as sock:
            sock.sendall(
                b"POST /api/v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + served.token.encode() + b"\r\n"
                b'Content-Length: 1000\r\n\r\n{"texts": ['
            )
            time.sleep(0.1)  # the route is reading the body when the client goes
    # A request after them: the server has handled the hang-ups by the time it answers.
    r = httpx.post(
        served.url + "/api/v1/verify",
        json={"texts": []},
        headers={"Authorization": f"Bearer {served.token}"},
        trust_env=False,
    )
    assert r.status_code == 200
    time.sleep(0.3)
    new = log.read_text(errors="replace")[len(before) :]
    assert "unexpected error" not in new and "Traceback" not in new, new[-2000:]


def test_the_413_is_documented(served: Server) -> None:
    spec = httpx.get(served.url + "/openapi.json", trust_env=False).json()
    with_body = [
        (path, op)
        for path, item in spec["paths"].items()
        for op in item.values()
        if isinstance(op, dict) and "requestBody" in op
    ]
    assert len(with_body) > 10
    for path, op in with_body:
        assert "413" in op["responses"], path
    images = spec["paths"]["/api/v1/verify/images"]["post"]
    assert str(MAX_IMAGES_BODY_BYTES) in images["responses"]["413"]["description"]
    assert "64 MiB" in images["description"]
