"""Deciding on desired-state documents: every refusal, no-op, fetch (from a real HTTP server),
failure and retry, the effective configuration, and the reporter taking the new settings."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rust_core
from agent import config as agent_config
from agent.desired import document
from agent.desired.apply import NO_KEY, Applier, Effective, LiveTarget, load_key
from agent.desired.document import template_entry
from agent.desired.store import CURRENT, DesiredStore
from agent.devices import BoundedDevice
from tests.agent.desired_helpers import doc, form, seal, seal_unchecked, tamper
from tests.agent.test_reporter import Rig

KEY = rust_core.SigningKey.generate("EdDSA")
VKEY = KEY.verifying_key()
BASE = Effective(status_interval_s=30.0, poll_interval_s=2.0, debounce_s=5.0, paper_capacity=500)


class Target:
    def __init__(self) -> None:
        self.applied: list[Effective] = []

    def apply(self, effective: Effective) -> None:
        self.applied.append(effective)


class Blobs(http.server.ThreadingHTTPServer):
    """A real HTTP server holding template blobs at /api/v1/templates/blobs/<sha256>."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.fail = False
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = outer.blobs.get(self.path.rsplit("/", 1)[-1])
                if outer.fail or body is None:
                    self.send_error(503 if outer.fail else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def blobs() -> Iterator[Blobs]:
    s = Blobs()
    yield s
    s.shutdown()
    s.server_close()


class Rigged:
    def __init__(self, tmp_path: Path, key: rust_core.VerifyingKey | None = VKEY, **kw: Any):
        self.root = tmp_path / "desired"
        self.target = Target()
        self.published: list[dict[str, Any]] = []
        self.applier = Applier(
            terminal_id="T-0001",
            key=key,
            store=DesiredStore(self.root),
            base=BASE,
            target=self.target,
            publish=self.published.append,
            **kw,
        )
        self.applier.load()

    def files(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in self.root.rglob("*.*")}


def test_good_document_is_stored_and_applied(tmp_path: Path) -> None:
    r = Rigged(tmp_path)
    assert r.applier.state() is None  # nothing applied, nothing wrong: nothing to say
    raw, h = document.seal(
        doc(
            3,
            config={"status_interval_s": 5, "paper": {"low_pct": 25}, "kiosk": {"locale": "zh"}},
            templates=[template_entry("gtgsh-setup", 1, form(1))],
        ),
        KEY,
    )
    msg = r.applier.handle(raw)
    assert msg["result"] == "ok" and msg["version"] == 3 and msg["hash"] == h
    assert msg["applied"] == {"version": 3, "hash": h} and msg["error"] is None
    document.check_reported(msg)
    eff = r.target.applied[-1]
    assert (eff.status_interval_s, eff.poll_interval_s, eff.paper_low_pct) == (5.0, 2.0, 25)
    assert eff.paper_capacity == 500 and eff.kiosk == {"locale": "zh"}
    assert eff.desired_hash == h and eff.desired_version == 3
    assert (r.root / CURRENT).read_bytes() == raw
    # A restart runs on it again, re-verified.
    again = Rigged(tmp_path)
    assert again.applier.applied is not None and again.applier.applied.hash == h
    assert again.target.applied[-1] == eff
    state = again.applier.state()
    assert state is not None and state["result"] == "ok" and state["version"] == 3


def test_a_setting_the_new_document_drops_goes_back_to_agent_toml(tmp_path: Path) -> None:
    r = Rigged(tmp_path)
    r.applier.handle(seal(doc(1, config={"status_interval_s": 5, "debounce_s": 1}), KEY))
    assert r.target.applied[-1].status_interval_s == 5.0
    r.applier.handle(seal(doc(2, config={"debounce_s": 1}), KEY))
    eff = r.target.applied[-1]
    assert eff.status_interval_s == 30.0 and eff.debounce_s == 1.0


def test_same_document_again_is_ok_and_touches_nothing(tmp_path: Path) -> None:
    r = Rigged(tmp_path)
    raw = seal(doc(4), KEY)
    first = r.applier.handle(raw)
    before = r.files()
    stamp = (r.root / CURRENT).stat().st_mtime_ns
    again = r.applier.handle(raw)
    assert again["result"] == "ok" and again["version"] == 4 and again["hash"] == first["hash"]
    assert r.files() == before and (r.root / CURRENT).stat().st_mtime_ns == stamp


def refusals() -> list[tuple[str, bytes, str]]:
    other = rust_core.SigningKey.generate("EdDSA")
    good = seal(doc(5), KEY)
    bad_schema = doc(6, config={"status_interval_s": 1})  # under the minimum of 5
    return [
        ("signature", tamper(good, "signature"), "cose: bad_signature"),
        ("payload", tamper(good, "payload"), "cose: "),
        ("other key", seal(doc(6), other), "cose: "),
        ("older", seal(doc(4, config={"debounce_s": 9}), KEY), "not newer than applied 5"),
        (
            "same version, other content",
            seal(doc(5, config={"debounce_s": 9}), KEY),
            "version 5 is not newer than applied 5",
        ),
        ("schema", seal_unchecked(bad_schema, KEY), "config.status_interval_s: 1 is outside"),
        ("unknown setting", seal_unchecked(doc(6, config={"volume": 3}), KEY), "unknown setting"),
        ("wrong terminal", seal(doc(6, terminal="T-0002"), KEY), "terminal: document is for"),
        ("not json", b"\xff\xfe", "envelope is not JSON"),
        ("not cose", b'{"v":1,"cose":"AAAA"}', "cose: "),
    ]


@pytest.mark.parametrize(("name", "raw", "error"), refusals(), ids=[r[0] for r in refusals()])
def test_refused_and_nothing_touched(tmp_path: Path, name: str, raw: bytes, error: str) -> None:
    r = Rigged(tmp_path)
    assert r.applier.handle(seal(doc(5), KEY))["result"] == "ok"
    before, applied = r.files(), len(r.target.applied)
    msg = r.applier.handle(raw)
    assert msg["result"] == "refused", msg
    assert error in msg["error"] and "\n" not in msg["error"]
    assert msg["applied"]["version"] == 5
    document.check_reported(msg)
    assert r.files() == before and len(r.target.applied) == applied


def test_no_key_refuses_everything(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = Rigged(tmp_path, key=None)
    for v in (1, 2):
        msg = r.applier.handle(seal(doc(v), KEY))
        assert msg["result"] == "refused" and msg["error"] == NO_KEY
    assert not r.root.exists()
    assert sum(NO_KEY in m for m in caplog.messages) == 1  # logged once
    state = r.applier.state()
    assert state is not None and state["result"] == "refused"
    assert r.target.applied == [BASE]  # runs on agent.toml alone


def test_load_key_formats(tmp_path: Path) -> None:
    pem, der, bad, es = (tmp_path / n for n in ("k.pem", "k.der", "bad", "es.pem"))
    pem.write_text(KEY.public_pem())
    der.write_bytes(KEY.public_spki())
    bad.write_text("not a key")
    es.write_text(rust_core.SigningKey.generate("ES256").public_pem())
    loaded = load_key(pem)
    assert loaded is not None and loaded.kid == KEY.kid
    loaded = load_key(der)
    assert loaded is not None and loaded.kid == KEY.kid
    assert load_key(bad) is None and load_key(es) is None and load_key(None) is None


def big(version: int) -> tuple[bytes, dict[str, Any]]:
    """A document whose template (over 16 KiB) travels by url."""
    content = form(version, size=20_000)
    entry = template_entry("gtgsh-setup", version, content)
    assert "url" in entry
    return seal(doc(version, templates=[entry]), KEY), entry


def test_template_fetched_over_http(tmp_path: Path, blobs: Blobs) -> None:
    raw, entry = big(1)
    blobs.blobs[entry["sha256"]] = document.canonical(form(1, size=20_000))
    r = Rigged(tmp_path, server_url=blobs.url)
    msg = r.applier.handle(raw)
    assert msg["result"] == "ok", msg
    stored = r.applier.store.template(entry["sha256"])
    assert stored == blobs.blobs[entry["sha256"]]
    # Already on disk: not fetched again (the next version carries the same template).
    hits = blobs.hits
    assert r.applier.handle(seal(doc(2, templates=[entry]), KEY))["result"] == "ok"
    assert blobs.hits == hits


@pytest.mark.parametrize("problem", ["unavailable", "wrong content", "too long", "no server"])
def test_fetch_failure_switches_nothing_then_retry_succeeds(
    tmp_path: Path, blobs: Blobs, problem: str
) -> None:
    r = Rigged(tmp_path, server_url=None if problem == "no server" else blobs.url)
    r.applier.handle(seal(doc(1), KEY))
    before = r.files()
    raw, entry = big(2)
    good = document.canonical(form(2, size=20_000))
    if problem == "unavailable":
        blobs.fail = True
    elif problem == "wrong content":
        blobs.blobs[entry["sha256"]] = good.replace(b"x", b"y", 1)
    elif problem == "too long":
        blobs.blobs[entry["sha256"]] = good + b" "
    msg = r.applier.handle(raw)
    assert msg["result"] == "failed" and msg["version"] == 2, msg
    assert msg["error"].startswith("template gtgsh-setup: ") and msg["applied"]["version"] == 1
    assert r.files() == before and r.target.applied[-1].desired_version == 1
    # The server is fixed; the same delivery again (or the periodic retry) applies it.
    blobs.fail = False
    blobs.blobs[entry["sha256"]] = good
    r.applier.server_url = blobs.url
    assert r.applier.handle(raw)["result"] == "ok"


def test_worker_latest_wins_retries_and_reports_state(tmp_path: Path, blobs: Blobs) -> None:
    r = Rigged(tmp_path, server_url=blobs.url, retry_s=0.2)
    release = threading.Event()
    real_fetch = r.applier.fetch

    def slow_fetch(url: str, size: int) -> bytes:
        release.wait(5)
        return real_fetch(url, size)

    r.applier.fetch = slow_fetch
    raw2, entry = big(2)
    blobs.blobs[entry["sha256"]] = document.canonical(form(2, size=20_000))
    r.applier.start()
    try:
        r.applier.submit(raw2)  # blocks in the fetch
        time.sleep(0.2)
        for v in (3, 4, 5):
            r.applier.submit(seal(doc(v), KEY))  # while busy: only 5 is kept
        release.set()
        deadline = time.monotonic() + 5
        while len(r.published) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [m["version"] for m in r.published] == [2, 5]
        assert all(m["result"] == "ok" for m in r.published)
        r.applier.request_state_report()
        deadline = time.monotonic() + 5
        while len(r.published) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.published[2]["result"] == "ok" and r.published[2]["applied"]["version"] == 5

        # A failed fetch is retried by the worker without a new delivery.
        raw6, entry6 = big(6)
        blobs.fail = True
        r.applier.submit(raw6)
        deadline = time.monotonic() + 5
        while len(r.published) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.published[3]["result"] == "failed"
        blobs.fail = False
        blobs.blobs[entry6["sha256"]] = document.canonical(form(6, size=20_000))
        deadline = time.monotonic() + 5
        while len(r.published) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.published[4]["result"] == "ok" and r.published[4]["version"] == 6
    finally:
        release.set()
        r.applier.stop()


def test_start_up_fallback_is_reported(tmp_path: Path) -> None:
    r = Rigged(tmp_path)
    r.applier.handle(seal(doc(1), KEY))
    r.applier.handle(seal(doc(2), KEY))
    (r.root / CURRENT).write_bytes(b"{}")
    again = Rigged(tmp_path)
    state = again.applier.state()
    assert state is not None and state["result"] == "failed"
    assert state["applied"]["version"] == 1 and "fell back to version 1" in state["error"]
    # The retained version 2 comes again and is applied; the problem is gone.
    assert again.applier.handle(seal(doc(2), KEY))["result"] == "ok"
    state = again.applier.state()
    assert state is not None and state["result"] == "ok" and state["version"] == 2


def test_live_target_reconfigures_reporter_and_drivers(tmp_path: Path) -> None:
    rig = Rig(tmp_path, capacity=500)

    class Driver:
        name = "ipp"
        timeout_s = 5.0
        capacity: int | None = None

    driver = Driver()
    printer: BoundedDevice[Any] = BoundedDevice(driver)  # type: ignore[arg-type]
    target = LiveTarget(rig.reporter, printer)
    rig.reporter.tick(0.0)
    assert rig.statuses()[0]["desired"] is None
    eff = BASE.with_document(
        document.open_envelope(
            seal(
                doc(
                    7,
                    config={
                        "status_interval_s": 5,
                        "paper": {"low_pct": 60, "capacity": 800},
                        "printer": {"timeout_s": 2},
                    },
                ),
                KEY,
            ),
            VKEY,
            "T-0001",
        )
    )
    target.apply(eff)
    assert Driver.timeout_s == 5.0 and driver.timeout_s == 2.0
    assert printer.budget_s == 5.0 and driver.capacity == 800
    # The reporter takes them at its next tick; the new hash is a change, reported as soon as
    # the debounce allows (5 s after the first report), not at the 30 s interval.
    assert rig.reporter.tick(0.1) == 2.0  # the next poll
    assert rig.statuses() == [] and rig.paper.capacity == 800
    rig.reporter.tick(5.0)
    [s] = rig.statuses()
    assert s["desired"] == eff.desired_hash
    assert "media-low" in s["printer"]["reasons"]  # 50 % is under the new 60 %
    rig.reporter.tick(9.9)
    assert rig.statuses() == []
    rig.reporter.tick(10.0)
    assert len(rig.statuses()) == 1  # every 5 s now, not 30


def test_server_url_setting(tmp_path: Path) -> None:
    base = {
        "terminal_id": "T-0001",
        "data_dir": "d",
        "broker": {"url": "mqtt://h", "password": "p"},
    }
    assert agent_config.parse(base).server_url is None
    cfg = agent_config.parse({**base, "server": {"url": "https://fleet.example.org/"}})
    assert cfg.server_url == "https://fleet.example.org"
    with pytest.raises(agent_config.ConfigError, match=r"server\.url"):
        agent_config.parse({**base, "server": {"url": "ftp://x"}})
    with pytest.raises(agent_config.ConfigError, match=r"server\.bogus"):
        agent_config.parse({**base, "server": {"url": "http://x", "bogus": 1}})
