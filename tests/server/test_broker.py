"""The fleet server's own Mosquitto, against the real thing: ACL, users, supervision, no loss."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.server.broker import BrokerError, EmbeddedBroker, free_port
from fleet.server.broker_config import (
    EXTERNAL_BROKER_SETTINGS,
    MESSAGE_SIZE_LIMIT,
    MOSQUITTO_DEFAULT_LIMITS,
    QueueLimits,
    render_acl,
    render_server_acl,
)
from fleet.server.broker_files import mqtt_login
from tests.server.mqtt_helpers import Client, broker_dir, connect

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"),
    reason="mosquitto is not installed (apt-get install mosquitto mosquitto-clients)",
)

SERVER = ("fleet-server", "server-secret-0123456789")


def _start(limits: QueueLimits | None = None) -> EmbeddedBroker:
    return EmbeddedBroker(
        broker_dir(), server_user=SERVER[0], server_password=SERVER[1], limits=limits
    ).start()


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    b = _start()
    yield b
    b.stop()
    shutil.rmtree(b.dir.parent, ignore_errors=True)


def _server(b: EmbeddedBroker, **kw: object) -> Client:
    return connect(b.server_port, *SERVER, **kw)  # type: ignore[arg-type]


def _login(b: EmbeddedBroker, user: str, password: str, port: int | None = None) -> bool:
    """A login on the listener the user belongs to (the server's user: the server's listener)."""
    if port is None:
        port = b.server_port if user == SERVER[0] else b.port
    try:
        return mqtt_login(b.host, port, user, password)
    except OSError:
        return False


def test_generated_files(broker: EmbeddedBroker) -> None:
    conf = broker.files.conf_file.read_text()
    for line in (
        f"listener {broker.port} 127.0.0.1",
        f"listener {broker.server_port} 127.0.0.1",
        "per_listener_settings true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        "persistence true",
        "max_queued_messages 0",
        "max_inflight_messages 100",
    ):
        assert line in conf.splitlines()
    assert broker.files.acl_file.read_text() == render_acl()
    assert "pattern write fleet/v1/t/%u/cmd/result" in render_acl()
    assert broker.files.server_acl_file.read_text() == render_server_acl(SERVER[0])
    assert "max_queued_messages 0" in EXTERNAL_BROKER_SETTINGS
    assert "use_username_as_clientid true" in EXTERNAL_BROKER_SETTINGS
    # The password files hold hashes, and only we and the broker's group may read them.
    for f in (broker.files.passwd_file, broker.files.server_passwd_file):
        assert SERVER[1] not in f.read_text()
        assert f.stat().st_mode & 0o777 == 0o640
    # The server's user lives on the server's listener alone.
    assert broker.users() == set()
    assert broker.files.server_passwd_file.read_text().startswith(f"{SERVER[0]}:")


def test_server_user_publishes_and_subscribes(broker: EmbeddedBroker) -> None:
    sub = _server(broker)
    pub = _server(broker)
    try:
        sub.subscribe("fleet/#")
        assert pub.publish("fleet/v1/t/T-1/desired", b'{"v":1}') == 0
        assert sub.wait_for(lambda r: r == [("fleet/v1/t/T-1/desired", b'{"v":1}')], 5)
    finally:
        sub.close()
        pub.close()


def test_refuses_anonymous_and_wrong_passwords(broker: EmbeddedBroker) -> None:
    assert _login(broker, *SERVER)
    assert not _login(broker, SERVER[0], "wrong")
    assert not _login(broker, "nobody-known", "x")


def test_each_listener_knows_only_its_own_users(broker: EmbeddedBroker) -> None:
    broker.add_user("T-A", "a-secret")
    assert _login(broker, "T-A", "a-secret")
    assert not _login(broker, "T-A", "a-secret", port=broker.server_port)
    assert not _login(broker, *SERVER, port=broker.port)
    # Counted from the broker's log: two refused logins.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and broker.log.counts["login_refused"] < 2:
        time.sleep(0.02)
    assert broker.log.counts["login_refused"] == 2


def test_supervisor_restarts_a_killed_broker_on_the_same_port(broker: EmbeddedBroker) -> None:
    first = broker.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (
        broker.pid not in (None, first) and _login(broker, *SERVER)
    ):
        time.sleep(0.05)
    assert broker.pid not in (None, first), "mosquitto was not restarted within 5 s"
    assert _login(broker, *SERVER)
    assert broker.restarts == 1


def test_a_crash_loop_backs_off_and_stop_ends_it(broker: EmbeddedBroker) -> None:
    # Kill it three times as soon as it is back: the delays grow (0.2, 0.4, 0.8 s).
    for _ in range(3):
        pid = broker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and broker.pid in (None, pid):
            time.sleep(0.02)
    assert broker.restarts == 3
    broker.stop()
    assert broker.pid is None
    assert not _login(broker, *SERVER)


def test_terminal_cannot_publish_as_another(broker: EmbeddedBroker) -> None:
    broker.add_user("T-A", "a-secret")
    broker.add_user("T-B", "b-secret")
    server = _server(broker)
    try:
        server.subscribe("fleet/#")
        forged = [f"fleet/v1/t/T-B/{kind}" for kind in ("status", "presence", "event", "reported")]
        forged += ["fleet/v1/t/T-B/cmd/result", "fleet/v1/t/T-A/desired", "fleet/v1/t/T-A/cmd"]
        reasons = []
        for topic in forged:
            # Mosquitto closes the connection after a denied QoS 1 publish: one client each.
            a = connect(broker.port, "T-A", "a-secret", client_id="T-A")
            reasons.append(a.publish(topic, b'{"v":1,"forged":true}'))
            a.close()
        # Its own topics go through. One publisher, one subscriber: delivery keeps order, so
        # once this is here every forged message before it would have been too.
        a = connect(broker.port, "T-A", "a-secret", client_id="T-A")
        a.publish("fleet/v1/t/T-A/status", b'{"v":1}')
        a.close()
        assert server.wait_for(lambda r: ("fleet/v1/t/T-A/status", b'{"v":1}') in r, 5)
        assert server.received == [("fleet/v1/t/T-A/status", b'{"v":1}')]
        # What Mosquitto answers to a denied v5 QoS 1 publish: "not authorized" (135).
        assert reasons == [135] * len(forged)
    finally:
        server.close()


def test_terminal_cannot_read_another_terminals_topics(broker: EmbeddedBroker) -> None:
    broker.add_user("T-A", "a-secret")
    server = _server(broker)
    a = connect(broker.port, "T-A", "a-secret", client_id="T-A")
    try:
        # The broker grants these subscriptions and filters each message by the read ACL.
        a.subscribe("fleet/v1/t/T-B/desired", "fleet/v1/t/T-B/cmd", "fleet/v1/t/T-B/status")
        a.subscribe("fleet/#")
        a.subscribe("fleet/v1/t/T-A/desired")
        for topic in ("T-B/desired", "T-B/cmd", "T-B/status", "T-A/status", "T-A/desired"):
            server.publish(f"fleet/v1/t/{topic}", topic.encode())
        assert a.wait_for(lambda r: ("fleet/v1/t/T-A/desired", b"T-A/desired") in r, 5)
        time.sleep(0.2)
        # Only its own desired (through both matching subscriptions: MQTT delivers one copy
        # per matching subscription in Mosquitto's default configuration).
        assert {t for t, _ in a.received} == {"fleet/v1/t/T-A/desired"}
    finally:
        a.close()
        server.close()


def test_user_added_while_running_connects_without_a_restart(broker: EmbeddedBroker) -> None:
    pid = broker.pid
    server = _server(broker)
    server_drops: list[object] = []
    server.mqtt.on_disconnect = lambda *a: server_drops.append(a[3])
    server.subscribe("fleet/v1/t/+/status")
    assert not _login(broker, "T-NEW", "new-secret")
    broker.add_user("T-NEW", "new-secret")
    # add_user returns once the reload (SIGHUP) is live: no retry needed.
    assert _login(broker, "T-NEW", "new-secret")
    t = connect(broker.port, "T-NEW", "new-secret", client_id="T-NEW")
    t.publish("fleet/v1/t/T-NEW/status", b"hello")
    assert server.wait_for(lambda r: r == [("fleet/v1/t/T-NEW/status", b"hello")], 5)
    t.mqtt.reconnect_delay_set(60, 60)
    t_drops: list[object] = []
    t.mqtt.on_disconnect = lambda *a: t_drops.append(a[3])
    assert broker.pid == pid
    assert broker.users() == {"T-NEW"}
    # A changed password replaces the old one, and the reload re-authenticates connected
    # clients: the terminal logged in with the old password is dropped, the server is not.
    broker.add_user("T-NEW", "newer-secret")
    assert not _login(broker, "T-NEW", "new-secret")
    assert _login(broker, "T-NEW", "newer-secret")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not t_drops:
        time.sleep(0.02)
    assert t_drops, "a client with a revoked password stayed connected"
    t.mqtt.loop_stop()
    assert server_drops == []
    server.close()


def test_removed_user_is_refused_and_disconnected(broker: EmbeddedBroker) -> None:
    broker.add_user("T-GONE", "gone-secret")
    t = connect(broker.port, "T-GONE", "gone-secret", client_id="T-GONE")
    disconnected: list[object] = []
    t.mqtt.on_disconnect = lambda *a: disconnected.append(a[3])
    t.mqtt.reconnect_delay_set(60, 60)  # so we see it stay out
    assert broker.remove_user("T-GONE")
    assert not broker.remove_user("T-GONE")
    assert not _login(broker, "T-GONE", "gone-secret")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not disconnected:
        time.sleep(0.02)
    assert disconnected, "the removed terminal's connection was left open"
    t.mqtt.loop_stop()
    with pytest.raises(BrokerError):
        broker.remove_user(SERVER[0])


def test_persistent_session_keeps_queued_messages_across_a_broker_restart(
    broker: EmbeddedBroker,
) -> None:
    ingest = _server(broker, client_id="ingest", clean_start=False, session_expiry_s=3600)
    ingest.subscribe("fleet/v1/t/+/status")
    ingest.close()
    pub = _server(broker)
    for i in range(50):
        pub.publish("fleet/v1/t/T-1/status", str(i))
    pub.close()
    broker.stop()  # SIGTERM: Mosquitto saves the session and its queue
    broker.start()
    ingest = _server(broker, client_id="ingest", clean_start=False, session_expiry_s=3600)
    try:
        assert ingest.count_until_quiet(50) == 50
        assert [p for _, p in ingest.received] == [str(i).encode() for i in range(50)]
    finally:
        ingest.close()


def test_runs_as_the_mosquitto_user_when_started_by_root(broker: EmbeddedBroker) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root drops privileges")
    status = Path(f"/proc/{broker.pid}/status").read_text()
    uid = int(status.split("Uid:")[1].split()[0])
    assert uid == pwd.getpwnam("mosquitto").pw_uid


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _orphan(d: Path, password: str = "x" * 20) -> tuple[int, int]:
    """(port, pid) of a broker left running by a server process killed with SIGKILL (or OOM);
    terminal T-1 (password "t1-secret") was added while it ran."""
    script = (
        "import os\n"
        "from fleet.server.broker import EmbeddedBroker\n"
        f"b = EmbeddedBroker({str(d)!r}, server_password={password!r}).start()\n"
        "b.add_user('T-1', 't1-secret')\n"
        "print(b.port, b.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    port, pid = (int(x) for x in done.stdout.split())
    assert _alive(pid)
    return port, pid


@contextlib.contextmanager
def _terminal_on(port: int) -> Iterator[tuple[Client, list[object]]]:
    """T-1 connected to the orphan, with the reason codes of its disconnects (none expected)."""
    t = connect(port, "T-1", "t1-secret", client_id="T-1")
    drops: list[object] = []
    t.mqtt.on_disconnect = lambda *a: drops.append(a[3])
    try:
        yield t, drops
    finally:
        t.close()


def _cleanup(d: Path, orphan: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(orphan, signal.SIGKILL)
    shutil.rmtree(d.parent, ignore_errors=True)


def test_a_restarted_server_adopts_the_broker_a_killed_one_left_running() -> None:
    """Issue 13: stopping it would disconnect every terminal (and fire every Last Will)."""
    d = broker_dir()
    port, orphan = _orphan(d)
    files = [d / n for n in ("mosquitto.conf", "passwd", "server-passwd", "acl", "server-acl")]
    before = [f.read_bytes() for f in files]
    try:
        with _terminal_on(port) as (t, drops):
            b = EmbeddedBroker(d, server_password="x" * 20).start()
            try:
                assert (b.port, b.pid) == (port, orphan)
                # Nothing rewritten (a new salt in a password file would need a reload).
                assert [f.read_bytes() for f in files] == before
                assert _login(b, "fleet-server", "x" * 20)
                # 0x10 "no matching subscribers" is a success; >= 0x80 a refusal.
                assert t.publish("fleet/v1/t/T-1/status", b"still here") < 0x80
                assert drops == []
                # Its log is read again (the FIFO): a refused login is counted.
                assert not _login(b, "T-1", "wrong")
                assert _wait_count(b, "login_refused", 1) == 1
                # Supervised although not our child: when it dies, ours replaces it.
                os.kill(orphan, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not (
                    b.pid not in (None, orphan) and _login(b, "fleet-server", "x" * 20)
                ):
                    time.sleep(0.05)
                assert b.pid not in (None, orphan) and b.restarts == 1
                assert b.port == port
            finally:
                b.stop()
            assert b.pid is None and not _login(b, "fleet-server", "x" * 20)
    finally:
        _cleanup(d, orphan)


def test_an_adopted_broker_stops_with_the_server() -> None:
    d = broker_dir()
    _, orphan = _orphan(d)
    try:
        b = EmbeddedBroker(d, server_password="x" * 20).start()
        assert b.pid == orphan
        b.stop()
        assert not _alive(orphan)
        assert not b.files.pid_file.exists()
    finally:
        _cleanup(d, orphan)


def test_an_adopted_broker_reloads_a_changed_server_password() -> None:
    d = broker_dir()
    port, orphan = _orphan(d)
    try:
        with _terminal_on(port) as (t, drops):
            b = EmbeddedBroker(d, server_password="y" * 20).start()
            try:
                assert b.pid == orphan
                assert _login(b, "fleet-server", "y" * 20)
                assert not _login(b, "fleet-server", "x" * 20)
                # The reload re-checks every client: the terminal's password did not change.
                # 0x10 "no matching subscribers" is a success; >= 0x80 a refusal.
                assert t.publish("fleet/v1/t/T-1/status", b"still here") < 0x80
                assert drops == []
            finally:
                b.stop()
    finally:
        _cleanup(d, orphan)


def test_a_broker_whose_config_changed_is_restarted_and_the_log_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A new release with other limits: the running broker cannot take them without a restart.
    d = broker_dir()
    port, orphan = _orphan(d)
    try:
        b = EmbeddedBroker(
            d, server_password="x" * 20, limits=QueueLimits(max_inflight_messages=50)
        ).start()
        try:
            assert b.port == port  # kiosk configs name this port
            assert b.pid != orphan
            assert not _alive(orphan)
            assert _login(b, "fleet-server", "x" * 20)
            assert "max_inflight_messages 50" in b.files.conf_file.read_text()
        finally:
            b.stop()
        why = [r.getMessage() for r in caplog.records if str(orphan) in r.getMessage()]
        assert any("config changed" in m and "max_inflight_messages 50" in m for m in why), why
    finally:
        _cleanup(d, orphan)


def test_refuses_a_data_dir_the_broker_user_cannot_reach(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root drops to the mosquitto user")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(BrokerError, match="cannot enter"):
        EmbeddedBroker(closed / "mosquitto", server_password="x" * 20).start()


def test_a_broken_config_is_reported_with_mosquittos_words() -> None:
    # An address this machine does not have (TEST-NET-1): Mosquitto cannot listen there.
    b = EmbeddedBroker(
        broker_dir(), port=free_port(), server_password="x" * 20, bind_address="192.0.2.1"
    )
    try:
        with pytest.raises(BrokerError, match="mosquitto did not start"):
            b.start()
        assert b.pid is None
    finally:
        shutil.rmtree(b.dir.parent, ignore_errors=True)


# ------------------------------------------------------------------ nothing lost when slow

N_MESSAGES = 20_000


def _publish_burst(b: EmbeddedBroker, user: str, password: str) -> None:
    """N QoS 1 status messages from one terminal, as fast as mosquitto_pub goes (< 2 s)."""
    lines = "".join(f'{{"v":1,"seq":{i}}}\n' for i in range(N_MESSAGES))
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(b.port), "-u", user, "-P", password,
         "-i", user, "-q", "1", "-t", f"fleet/v1/t/{user}/status", "-l"],
        input=lines.encode(), check=True, timeout=60,
    )  # fmt: skip


def _lost_by_slow_ingest(limits: QueueLimits | None, mode: str) -> int:
    """Messages the server's persistent subscriber never gets while offline or stalled."""
    b = _start(limits)
    try:
        b.add_user("T-0001", "t1-secret")
        session = {"client_id": "fleet-ingest", "clean_start": False, "session_expiry_s": 600}
        ingest = _server(b, **session)
        ingest.subscribe("fleet/v1/t/+/status")
        if mode == "offline":
            ingest.close()  # the server restarts, say
            _publish_burst(b, "T-0001", "t1-secret")
            ingest = _server(b, **session)
        else:
            # A stall (a long DB write) on the first message: the broker must hold the rest.
            stalled = [False]

            def stall_once() -> None:
                if not stalled[0]:
                    stalled[0] = True
                    time.sleep(2.5)

            ingest.on_each = stall_once
            _publish_burst(b, "T-0001", "t1-secret")
        try:
            # A stalled reader is silent for 2.5 s before the flood: wait longer for quiet.
            got = ingest.count_until_quiet(N_MESSAGES, quiet_s=1.0 if mode == "offline" else 4.0)
            seqs = {p for _, p in ingest.received}
        finally:
            ingest.close()
        assert len(seqs) == got  # no duplicates hiding losses
        return N_MESSAGES - got
    finally:
        b.stop()
        shutil.rmtree(b.dir.parent, ignore_errors=True)


@pytest.mark.parametrize("mode", ["offline", "stalled"])
def test_generated_config_loses_nothing_to_a_slow_server(mode: str) -> None:
    assert _lost_by_slow_ingest(None, mode) == 0


def test_mosquitto_default_queue_limit_would_lose_messages() -> None:
    # The control: the same run with Mosquitto's defaults drops all but ~1,000 queued messages.
    lost = _lost_by_slow_ingest(MOSQUITTO_DEFAULT_LIMITS, "offline")
    assert lost >= N_MESSAGES - 1100


def _wait_count(b: EmbeddedBroker, kind: str, n: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and b.log.counts[kind] < n:
        time.sleep(0.02)
    return b.log.counts[kind]


def test_a_borrowed_client_id_takes_over_nobody(broker: EmbeddedBroker) -> None:
    """Issue 12: with T-A's password and the client id of T-H or of the server, nobody but T-A
    itself is pushed off; a second login as T-A is counted as a takeover."""
    broker.add_user("T-A", "a-secret")
    broker.add_user("T-H", "h-secret")
    server = _server(broker, client_id="fleet-server.ingest")
    honest = connect(broker.port, "T-H", "h-secret", client_id="T-H")
    drops: list[object] = []
    honest.mqtt.on_disconnect = lambda *a: drops.append(a[3])
    server.mqtt.on_disconnect = lambda *a: drops.append(a[3])
    server.subscribe("fleet/v1/t/+/status")
    attackers = [
        connect(broker.port, "T-A", "a-secret", client_id=cid)
        for cid in ("T-H", "fleet-server.ingest", "fleet-server.pub")
    ]
    try:
        # Each attacker's session is named T-A: each new one pushed the previous T-A off.
        assert _wait_count(broker, "takeover", 2) == 2
        time.sleep(0.3)
        assert drops == [], "an honest client was disconnected"
        assert honest.publish("fleet/v1/t/T-H/status", b"still here") == 0
        assert server.wait_for(lambda r: ("fleet/v1/t/T-H/status", b"still here") in r, 5)
    finally:
        for c in (*attackers, honest, server):
            c.close()


def test_an_oversized_publish_never_reaches_the_server(broker: EmbeddedBroker) -> None:
    broker.add_user("T-A", "a-secret")
    server = _server(broker)
    server.subscribe("fleet/v1/t/+/status")
    t = connect(broker.port, "T-A", "a-secret", client_id="T-A")
    try:
        big = b"x" * (MESSAGE_SIZE_LIMIT + 1)
        # Mosquitto answers PUBACK 0x95 (paho 2.2 takes that for a protocol error and closes);
        # it logs the drop at debug level only, so the broker log cannot count it.
        t.mqtt.publish("fleet/v1/t/T-A/status", big, qos=1)
        # The broker did not take it, so the server never sees it; what follows flows.
        t2 = connect(broker.port, "T-A", "a-secret", client_id="T-A")  # paho closed the first
        assert t2.publish("fleet/v1/t/T-A/status", b"small") == 0
        assert server.wait_for(lambda r: r == [("fleet/v1/t/T-A/status", b"small")], 5)
        t2.close()
    finally:
        t.close()
        server.close()
