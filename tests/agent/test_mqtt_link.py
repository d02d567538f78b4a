"""The MQTT link in-process against a real Mosquitto: presence, order, PUBACK, ACL, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.publish
import pytest

from agent.backoff import Backoff
from agent.config import BrokerConfig
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from tests.agent.agent_harness import PASSWORDS, Subscriber, wait_until
from tests.services.mosquitto import Broker
from tests.services.ports import free_port, wait_listening

if TYPE_CHECKING:
    from paho.mqtt.publish import AuthParameter  # defined for type checkers only


def broker_config(b: Broker, user: str = "T-0001", **kw: object) -> BrokerConfig:
    settings: dict[str, object] = {
        "url": b.url,
        "host": "127.0.0.1",
        "port": b.port,
        "tls": False,
        "username": user,
        "password": PASSWORDS[user],
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        **kw,
    }
    return BrokerConfig(**settings)  # type: ignore[arg-type]


class Link:
    """An outbox plus a link, torn down after the test."""

    def __init__(self, tmp_path: Path, cfg: BrokerConfig, terminal_id: str = "T-0001") -> None:
        self.outbox = Outbox(tmp_path / f"{terminal_id}.db", 10_000_000)
        self.terminal_id = terminal_id
        self.received: list[tuple[str, bytes]] = []
        self.link = MqttLink(
            terminal_id=terminal_id,
            broker=cfg,
            outbox=self.outbox,
            agent_version="9.9.9",
            handlers={"cmd": lambda topic, data: self.received.append((topic, data))},
        )

    def add(self, n: int, kind: str = "status") -> None:
        topic = f"fleet/v1/t/{self.terminal_id}/{kind}"
        for _ in range(n):
            self.outbox.enqueue(kind, topic, lambda seq: json.dumps({"v": 1, "seq": seq}).encode())
        self.link.wake()

    def close(self, flush_s: float = 2.0) -> None:
        self.link.stop(flush_s)
        self.outbox.close()


@pytest.fixture
def links(tmp_path: Path) -> Iterator[list[Link]]:
    made: list[Link] = []
    yield made
    for link in made:
        link.close(0.5)


def test_presence_order_and_acks(broker: Broker, tmp_path: Path, links: list[Link]) -> None:
    sub = Subscriber(broker, "fleet/v1/t/T-0001/#")
    link = Link(tmp_path, broker_config(broker))
    links.append(link)
    link.add(5)  # queued before the link even starts: the outbox holds them
    link.link.start()
    assert sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/status")]) == 5)
    link.add(45)
    assert sub.wait_for(lambda ms: len(sub.seqs()) == 50)
    assert sub.seqs() == list(range(1, 51))
    assert wait_until(lambda: link.outbox.stats().queued == 0, 5), "PUBACKed rows are deleted"
    [presence] = sub.on("presence")
    assert presence.retain is False  # a live subscriber gets it as a normal publish
    assert presence.json()["online"] is True and presence.json()["agent"] == "9.9.9"
    # A subscriber arriving later gets the retained presence.
    late = Subscriber(broker, "fleet/v1/t/T-0001/presence")
    assert late.wait_for(lambda ms: len(ms) == 1)
    assert late.messages[0].retain and late.messages[0].json()["online"] is True
    links.remove(link)
    link.close()
    # A clean stop says goodbye itself (the Will is discarded on a normal DISCONNECT).
    assert sub.wait_for(lambda ms: len(sub.on("presence")) == 2)
    assert sub.on("presence")[-1].json()["online"] is False
    sub.close()
    late.close()


def test_commands_reach_the_handler_after_a_broker_restart(
    broker: Broker, tmp_path: Path, links: list[Link]
) -> None:
    link = Link(tmp_path, broker_config(broker))
    links.append(link)
    link.link.start()
    assert wait_until(lambda: link.link.connected, 5)
    time.sleep(0.2)  # the SUBACK
    auth: AuthParameter = {"username": "fleet-server", "password": PASSWORDS["fleet-server"]}
    cmd = "fleet/v1/t/T-0001/cmd"
    paho.mqtt.publish.single(cmd, b'{"id":1}', qos=1, port=broker.port, auth=auth)
    assert wait_until(lambda: len(link.received) == 1, 5)
    # This broker keeps no sessions: only re-subscribing in on_connect restores the command path.
    broker.stop()
    broker.start()
    assert wait_until(lambda: link.link.connected, 10)
    time.sleep(0.3)
    paho.mqtt.publish.single(cmd, b'{"id":2}', qos=1, port=broker.port, auth=auth)
    assert wait_until(lambda: len(link.received) == 2, 5)
    assert link.received[1] == (cmd, b'{"id":2}')


def test_backlog_after_an_outage_goes_out_in_order(
    broker: Broker, tmp_path: Path, links: list[Link]
) -> None:
    link = Link(tmp_path, broker_config(broker, inflight_max=4))
    links.append(link)
    link.link.start()
    link.add(3)
    assert wait_until(lambda: link.outbox.stats().queued == 0, 5)
    broker.stop()
    link.add(40)  # while the broker is down
    assert link.outbox.stats().queued == 40
    broker.start()
    sub = Subscriber(broker, "fleet/v1/t/T-0001/status")
    assert sub.wait_for(lambda ms: len(sub.seqs()) >= 40, 15)
    assert sorted(set(sub.seqs())) == list(range(4, 44))
    first = [s for i, s in enumerate(sub.seqs()) if s not in sub.seqs()[:i]]
    assert first == sorted(first)
    assert wait_until(lambda: link.outbox.stats().queued == 0, 5)
    sub.close()


def test_acl_denied_publishes_are_counted_not_retried(
    broker: Broker, tmp_path: Path, links: list[Link]
) -> None:
    """T-0001's credentials with T-0002's topics: every PUBACK says 135, nothing gets through."""
    sub = Subscriber(broker, "fleet/#")
    link = Link(tmp_path, broker_config(broker, user="T-0001"), terminal_id="T-0002")
    links.append(link)
    link.link.start()
    link.add(5)
    link.add(2, kind="event")
    assert wait_until(lambda: link.outbox.stats().rejected == 7, 5), link.outbox.stats()
    assert link.outbox.stats().queued == 0, "a refused message must not block the queue"
    time.sleep(0.3)
    assert sub.messages == [], "nothing may be published under another terminal's id"
    assert link.link.connected  # refused publishes do not cost the connection
    sub.close()


def test_wrong_password_backs_off_and_never_sends(
    broker: Broker, tmp_path: Path, links: list[Link]
) -> None:
    cfg = broker_config(broker)
    bad = BrokerConfig(**{**cfg.__dict__, "password": "wrong"})
    link = Link(tmp_path, bad)
    links.append(link)
    link.link.start()
    link.add(2)
    assert wait_until(lambda: link.link.backoff.attempt >= 3, 10)
    assert not link.link.connected and link.outbox.stats().queued == 2


def test_backoff_is_capped_exponential_with_jitter() -> None:
    draws = iter([0.0, 1.0, 0.5, 0.0, 1.0, 1.0, 0.0])
    b = Backoff(1.0, 8.0, rand=lambda: next(draws))
    delays = [b.next() for _ in range(6)]
    assert delays == [0.5, 2.0, 3.0, 4.0, 8.0, 8.0]  # ceilings 1, 2, 4, 8, 8, 8; from [d/2, d]
    b.reset()
    assert b.next() == 0.5
    # Twenty kiosks losing the broker at once do not come back at the same instant.
    first_retries = {round(Backoff(1.0, 60.0).next(), 6) for _ in range(20)}
    assert len(first_retries) > 10, "kiosks must not reconnect in lock-step"


def test_tls_with_a_private_ca(broker: Broker, tmp_path: Path, links: list[Link]) -> None:
    ca_pem, cert_pem, key_pem = make_certs()
    certs = broker.dir / "tls"
    certs.mkdir()
    for name, data in (("ca.pem", ca_pem), ("server.pem", cert_pem), ("server.key", key_pem)):
        (certs / name).write_bytes(data)
        os.chmod(certs / name, 0o644)  # Mosquitto drops to its own user
    os.chmod(certs, 0o755)
    if os.geteuid() == 0:
        shutil.chown(certs, user="mosquitto")
    tls_port = add_tls_listener(broker, certs)
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    cfg = broker_config(broker, url=f"mqtts://localhost:{tls_port}", host="localhost")
    cfg = BrokerConfig(
        **{**cfg.__dict__, "port": tls_port, "tls": True, "ca_file": tmp_path / "ca.pem"}
    )
    sub = Subscriber(broker, "fleet/v1/t/T-0001/status")
    link = Link(tmp_path, cfg)
    links.append(link)
    link.link.start()
    link.add(3)
    assert sub.wait_for(lambda ms: len(ms) == 3, 10)
    assert sub.seqs() == [1, 2, 3]
    sub.close()

    # Without the fleet CA the server certificate is not trusted: nothing is sent.
    other = tmp_path / "other"
    other.mkdir()
    untrusting = Link(other, BrokerConfig(**{**cfg.__dict__, "ca_file": None}))
    links.append(untrusting)
    untrusting.link.start()
    untrusting.add(1)
    assert wait_until(lambda: untrusting.link.backoff.attempt >= 2, 10)
    assert not untrusting.link.connected and untrusting.outbox.stats().queued == 1


def add_tls_listener(broker: Broker, certs: Path) -> int:
    """A second, TLS listener on the same broker; returns its port."""
    conf = broker.dir / "mosquitto.conf"
    plain = conf.read_text()
    for _ in range(3):
        # Another test on this machine may take the free port before Mosquitto binds it, and
        # Mosquitto then exits: try another port.
        port = free_port()
        conf.write_text(
            plain
            + f"listener {port} 127.0.0.1\ncafile {certs}/ca.pem\n"
            + f"certfile {certs}/server.pem\nkeyfile {certs}/server.key\n"
        )
        broker.stop()
        try:
            broker.start()
            wait_listening(port, timeout_s=5.0)
            return port
        except TimeoutError:
            continue
    log = (broker.dir / "mosquitto.log").read_text(errors="replace")
    raise AssertionError(f"the TLS listener never came up:\n{log[-2000:]}")


def make_certs() -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem
