"""fleet-sim and desired-state documents and commands: one terminal's logic without a broker,
then many terminals against a real Mosquitto (retained documents, a tampered one, a new
version while online, commands)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import rust_core
from agent.desired import document
from agent.sim import credentials
from agent.sim.cli import UsageError, load_config_key
from agent.sim.desired import NO_KEY
from agent.sim.sites import layout
from agent.sim.terminal import Behaviour, Message, SimTerminal
from tests.agent.test_fleet_sim import Subscriber, wait_for
from tests.services import mosquitto

ROOT = Path(__file__).resolve().parents[2]
KEY = rust_core.SigningKey.generate("EdDSA")
PUBLIC = KEY.verifying_key()


class FakeClock:
    def __init__(self, t: float = 5000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def doc(terminal: str, version: int, **config: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "terminal": terminal,
        "version": version,
        "issued_at": "2026-11-27T09:30:00Z",
        "config": config or {"status_interval_s": 30},
        "templates": [],
    }


def sealed(terminal: str, version: int, key: rust_core.SigningKey = KEY, **config: Any) -> bytes:
    return document.seal(doc(terminal, version, **config), key)[0]


def tampered(envelope: bytes) -> bytes:
    """The same envelope with one bit of the signature flipped."""
    env = json.loads(envelope)
    cose = bytearray(base64.b64decode(env["cose"]))
    cose[-1] ^= 0x01
    env["cose"] = base64.b64encode(bytes(cose)).decode()
    return json.dumps(env).encode()


def cmd(name: str, cid: str | None = None, expires_in_s: float = 60.0) -> bytes:
    now = datetime.now(UTC)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return json.dumps(
        {
            "v": 1,
            "id": cid or str(uuid.uuid4()),
            "name": name,
            "args": {},
            "issued_at": (now - timedelta(seconds=5)).strftime(fmt),
            "expires_at": (now + timedelta(seconds=expires_in_s)).strftime(fmt),
        }
    ).encode()


def bodies(messages: list[Message], kind: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic.endswith("/" + kind)]


# -- one terminal, no broker ---------------------------------------------------------------------


def terminal(key: rust_core.VerifyingKey | None = PUBLIC) -> SimTerminal:
    spec = layout(1)[0]
    return SimTerminal(
        spec, Behaviour(status_interval_s=10.0), seed=3, clock=FakeClock(), config_key=key
    )


def test_a_good_document_is_applied_and_reported() -> None:
    t = terminal()
    t.on_connect(100.0)
    envelope, hash_ = document.seal(doc(t.id, 4, status_interval_s=5), KEY)
    out = t.on_message("desired", envelope, now=100.0)
    assert [m.topic for m in out] == [f"fleet/v1/t/{t.id}/reported"]
    [rep] = bodies(out, "reported")
    document.check_reported(rep)
    assert (rep["result"], rep["version"], rep["hash"], rep["error"]) == ("ok", 4, hash_, None)
    assert rep["applied"] == {"version": 4, "hash": hash_}
    due = t.next_report
    assert t.status_interval_s == 5.0 and due is not None and due <= 105.0
    # The hash rides on every status report from now on.
    status = bodies(t.tick(due), "status")
    assert status and status[0]["desired"] == hash_


def test_redelivery_older_and_conflicting_versions() -> None:
    t = terminal()
    envelope, hash_ = document.seal(doc(t.id, 4), KEY)
    t.on_message("desired", envelope, 0.0)
    # The retained document again (a reconnect): ok again, nothing applied anew.
    [again] = bodies(t.on_message("desired", envelope, 0.0), "reported")
    assert (again["result"], again["version"], again["hash"]) == ("ok", 4, hash_)
    [old] = bodies(t.on_message("desired", sealed(t.id, 3), 0.0), "reported")
    assert (old["result"], old["version"]) == ("refused", 3)
    assert old["error"] == "version 3 is not newer than applied 4"
    assert old["applied"] == {"version": 4, "hash": hash_}
    other = sealed(t.id, 4, status_interval_s=60)
    [conflict] = bodies(t.on_message("desired", other, 0.0), "reported")
    assert conflict["result"] == "refused"
    assert conflict["error"] == "version 4 is not newer than applied 4"
    assert t.desired.hash == hash_ and t.status_interval_s == 30.0


def test_tampered_foreign_and_unkeyed_documents_are_refused() -> None:
    t = terminal()
    cases = {
        "tampered": tampered(sealed(t.id, 2)),
        "other key": sealed(t.id, 2, key=rust_core.SigningKey.generate("EdDSA")),
        "other terminal": sealed("T-OTHER", 2),
        "not json": b"\x00garbage",
    }
    for what, payload in cases.items():
        [rep] = bodies(t.on_message("desired", payload, 0.0), "reported")
        document.check_reported(rep)
        assert rep["result"] == "refused", what
        assert rep["version"] is None and rep["applied"] is None, what
    assert t.desired.applied is None
    [rep] = bodies(terminal(key=None).on_message("desired", sealed(t.id, 2), 0.0), "reported")
    assert (rep["result"], rep["error"]) == ("refused", NO_KEY)
    # A cleared retained topic: refused as not JSON, as the agent does.
    [rep] = bodies(t.on_message("desired", b"", 0.0), "reported")
    assert rep["result"] == "refused" and "not JSON" in rep["error"]


def test_commands() -> None:
    t = terminal()
    t.on_connect(0.0)
    out = t.on_message("cmd", cmd("refresh_status", "refresh-0001"), 0.0)
    [result] = bodies(out, "result")
    assert (result["id"], result["status"]) == ("refresh-0001", "ok")
    assert len(bodies(out, "status")) == 1  # at once, not at the next interval
    sheets = t.printer.sheets_left
    [result] = bodies(t.on_message("cmd", cmd("print_test_page"), 0.0), "result")
    assert result["status"] == "ok" and t.printer.sheets_left == sheets - 1
    restart = cmd("restart_agent", "restart-0001")
    [result] = bodies(t.on_message("cmd", restart, 0.0), "result")
    assert (result["status"], result["detail"]) == ("ok", "restarting")
    assert t.restart_requested
    t.restart_requested = False
    # Delivered again: the same answer, no second restart.
    [again] = bodies(t.on_message("cmd", restart, 0.0), "result")
    assert again == result and not t.restart_requested
    [expired] = bodies(t.on_message("cmd", cmd("restart_agent", expires_in_s=-1), 0.0), "result")
    assert expired["status"] == "expired" and not t.restart_requested
    assert t.on_message("cmd", b"{not json", 0.0) == []


def test_config_key_file(tmp_path: Path) -> None:
    pem, der, bad, p256 = (tmp_path / n for n in ("k.pem", "k.der", "bad", "p256.pem"))
    pem.write_text(KEY.public_pem())
    der.write_bytes(KEY.public_spki())
    bad.write_bytes(b"not a key")
    p256.write_text(rust_core.SigningKey.generate("ES256").public_pem())
    assert load_config_key(pem).spki() == load_config_key(der).spki() == KEY.public_spki()
    with pytest.raises(UsageError, match="--config-public-key"):
        load_config_key(bad)
    with pytest.raises(UsageError, match="not EdDSA"):
        load_config_key(p256)


# -- many terminals, a real broker -------------------------------------------------------------

N = 20
IDS = [s.terminal_id for s in layout(N)]
SERVER_PASSWORD = "server-secret"


@pytest.fixture
def broker() -> Iterator[mosquitto.Broker]:
    if not mosquitto.available():
        pytest.skip("mosquitto is not installed (make test installs it: apt-get install mosquitto)")
    b = mosquitto.Broker(users={})
    users = credentials.from_template("pw-{id}", IDS)
    users["fleet-server"] = SERVER_PASSWORD
    credentials.write_passwd(b.dir / "passwd", users)
    (b.dir / "passwd").chmod(0o644)
    b.start()
    yield b
    b.close()


class Server:
    """Publishes as the fleet server: retained documents and commands."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set("fleet-server", SERVER_PASSWORD)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "the server's connection")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_sim(broker: mosquitto.Broker, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "agent.sim", "--terminals", str(N), "--broker", broker.url),
            *("--password-template", "pw-{id}", "--status-interval", "2"),
            *("--duration", "60", "--stats-interval", "5", *args),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return summary


def latest(sub: Subscriber, kind: str) -> dict[str, dict[str, Any]]:
    return {t: body for t, body, _ in sub.received.of(kind)}


def test_sim_terminals_apply_their_documents(broker: mosquitto.Broker, tmp_path: Path) -> None:
    pub = tmp_path / "config.pub"
    pub.write_text(KEY.public_pem())
    server = Server(broker.port)
    sub = Subscriber(broker.port)
    victim = IDS[3]
    hashes: dict[str, str] = {}
    for t in IDS:
        envelope, hashes[t] = document.seal(doc(t, 1, status_interval_s=5), KEY)
        if t == victim:
            envelope = tampered(envelope)
        server.publish(f"fleet/v1/t/{t}/desired", envelope, retain=True)
    proc = start_sim(broker, "--config-public-key", str(pub))
    try:
        # Offline when published: each gets its retained document on connecting.
        wait_for(lambda: len(latest(sub, "reported")) == N, 30, "a reported from every terminal")
        reported = latest(sub, "reported")
        for t in IDS:
            document.check_reported(reported[t])
            if t == victim:
                assert reported[t]["result"] == "refused"
                assert "bad_signature" in reported[t]["error"]
                assert reported[t]["applied"] is None
            else:
                assert reported[t]["result"] == "ok", reported[t]
                assert (reported[t]["version"], reported[t]["hash"]) == (1, hashes[t])

        # A new version for every terminal while they are online.
        started = time.monotonic()
        for t in IDS:
            envelope, hashes[t] = document.seal(doc(t, 2, status_interval_s=5), KEY)
            server.publish(f"fleet/v1/t/{t}/desired", envelope, retain=True)

        def all_at_2() -> bool:
            r = latest(sub, "reported")
            return all(r[t]["version"] == 2 and r[t]["result"] == "ok" for t in IDS)

        wait_for(all_at_2, 10, "version 2 reported by every terminal")
        assert time.monotonic() - started < 5
        assert all(latest(sub, "reported")[t]["hash"] == hashes[t] for t in IDS)
        # And status reports carry the applied hash.
        wait_for(
            lambda: all(latest(sub, "status").get(t, {}).get("desired") == hashes[t] for t in IDS),
            15,
            "statuses carrying the new hash",
        )

        # Commands: refresh at once; restart reconnects, and the retained document comes again.
        target = IDS[0]
        before = len([1 for t, _, _ in sub.received.of("status") if t == target])
        server.publish(f"fleet/v1/t/{target}/cmd", cmd("refresh_status", "refresh-0001"))
        wait_for(lambda: "refresh-0001" in results(sub), 10, "the refresh result")
        assert results(sub)["refresh-0001"]["status"] == "ok"
        wait_for(
            lambda: len([1 for t, _, _ in sub.received.of("status") if t == target]) > before,
            2,
            "the status report right after the refresh result",
        )
        reported_before = len([1 for t, _, _ in sub.received.of("reported") if t == target])
        server.publish(f"fleet/v1/t/{target}/cmd", cmd("restart_agent", "restart-0001"))
        wait_for(
            lambda: (
                len([1 for t, _, _ in sub.received.of("reported") if t == target]) > reported_before
            ),
            15,
            "the document reported again after the restart",
        )
        assert results(sub)["restart-0001"]["status"] == "ok"
        assert latest(sub, "reported")[target]["version"] == 2
        # A clean restart: presence offline "clean" then online, never the Last Will.
        reasons = [b.get("reason") for t, b, _ in sub.received.of("presence") if t == target]
        assert reasons[-2:] == ["clean", None] and "will" not in reasons
        assert latest(sub, "presence")[target]["online"] is True
        summary = stop(proc)
        assert summary["restarts"] == 1 and summary["denied"] == 0
        assert summary["desired_ok"] >= 2 * N - 1 and summary["desired_refused"] >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
        server.close()


def results(sub: Subscriber) -> dict[str, dict[str, Any]]:
    """cmd/result bodies by id (the subscriber sees the commands too: they carry no status)."""
    with sub.received.lock:
        messages = list(sub.received.messages)
    return {body["id"]: body for _, k, body, _ in messages if k == "cmd" and "status" in body}


def test_without_a_key_documents_are_refused(broker: mosquitto.Broker) -> None:
    server = Server(broker.port)
    sub = Subscriber(broker.port)
    for t in IDS:
        server.publish(f"fleet/v1/t/{t}/desired", sealed(t, 1), retain=True)
    proc = start_sim(broker)
    try:
        wait_for(lambda: len(latest(sub, "reported")) == N, 30, "a reported from every terminal")
        assert all(
            (r["result"], r["error"]) == ("refused", NO_KEY)
            for r in latest(sub, "reported").values()
        )
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
        server.close()
