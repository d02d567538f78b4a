"""Issue 13, no false storms, with real processes: `fleet serve` (its own Mosquitto, SQLite)
killed with SIGKILL and started again on the same data dir, or its broker gone for longer than
the presence timeout, while terminals stay connected and report every second. The terminals
are paho clients that behave on the wire like the agent (client id and username = terminal id,
retained presence with a Last Will, QoS 1 status reports with their own seq), provisioned with
`fleet terminals add`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.server.broker_files import BrokerFiles, runs_config
from fleet.server.settings import INSECURE_DEFAULT
from tests.services import mosquitto
from tests.services.fleet_server import Server, fleet_serve, launch, wait_until

pytestmark = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")

#: Every terminal reports every second; the server calls one offline after 3 silent seconds.
STATUS_INTERVAL_S = 1
OFFLINE_AFTER_S = 3 * STATUS_INTERVAL_S  # heartbeat_intervals (3) x status_interval_s


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kiosk:
    """One terminal; `reporting` cleared makes it silent while it stays connected."""

    def __init__(self, terminal: str, port: int, password: str) -> None:
        self.id = terminal
        self.seq = 0
        self.connects = 0
        self.disconnects = 0
        self.reporting = threading.Event()
        self.reporting.set()
        self._closed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=terminal, protocol=mqtt.MQTTv5)
        c.username_pw_set(terminal, password)
        c.will_set(self._topic("presence"), self._presence(False), qos=1, retain=True)
        c.reconnect_delay_set(1, 2)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self.mqtt = c
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        wait_until(lambda: self.connects, 5, f"{terminal} to connect")
        self._thread = threading.Thread(target=self._report, daemon=True)
        self._thread.start()

    def _topic(self, kind: str) -> str:
        return f"fleet/v1/t/{self.id}/{kind}"

    def _presence(self, online: bool) -> str:
        return json.dumps({"v": 1, "online": online, "ts": _now(), "agent": "restart-test"})

    def _on_connect(self, c: mqtt.Client, *_: object) -> None:
        self.connects += 1
        c.publish(self._topic("presence"), self._presence(True), qos=1, retain=True)

    def _on_disconnect(self, *_: object) -> None:
        if not self._closed.is_set():
            self.disconnects += 1

    def _report(self) -> None:
        while not self._closed.wait(STATUS_INTERVAL_S):
            if not self.reporting.is_set():
                continue
            self.seq += 1
            report = {
                "v": 1, "seq": self.seq, "ts": _now(), "agent": "restart-test",
                "printer": {"driver": "sim", "state": "idle", "reasons": [],
                            "paper": {"level_pct": 80}},
                "reader": {"driver": "sim", "state": "ok"},
            }  # fmt: skip
            # QoS 1: paho keeps it while disconnected and sends it on reconnecting.
            self.mqtt.publish(self._topic("status"), json.dumps(report), qos=1)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.fixture
def server() -> Iterator[Server]:
    with fleet_serve("fleet-restart-", status_interval_s=STATUS_INTERVAL_S) as running:
        s = Server(running.proc, running.data, running.url, running.env)
        s.token = s.fleet("tokens", "create", "--role", "operator", "--name", "e2e").split()[0]
        try:
            yield s
        finally:
            # A test that restarted the server holds the new process: fleet_serve knows only
            # the first (it was left running after every run before this).
            if s.proc is not running.proc and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)
                try:
                    s.proc.wait(15)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()


def _kiosks(s: Server, ids: list[str]) -> list[Kiosk]:
    out = []
    for tid in ids:
        path = s.data / f"{tid}.toml"
        s.fleet("terminals", "add", tid, "--site", "WH-HALL", "--model", "sim",
                "--data-dir", str(s.data), "--out", str(path), "--no-config-key")  # fmt: skip
        text = path.read_text()
        port = re.search(r"mqtt://127.0.0.1:(\d+)", text)
        password = re.search(r'^password = "(.*)"$', text, flags=re.M)
        assert port is not None and password is not None
        out.append(Kiosk(tid, int(port.group(1)), password.group(1)))
    return out


def _broker_pid(data: Path) -> int:
    return int((data / "mosquitto" / "mosquitto.pid").read_text())


def _offline_alerts(s: Server) -> list[str]:
    items = s.get("/api/v1/alerts?state=all&rule=terminal_offline")["items"]
    return sorted(a["terminal"] for a in items)


def _kill_and_restart(s: Server) -> float:
    """SIGKILL `fleet serve`, let the terminals report for 2 s, start it again on the same data
    dir; returns when the second start began (time.time())."""
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    time.sleep(2)  # reports keep coming: the broker queues them in the server's session
    started = time.time()
    s.proc = launch(s.data, s.env, s.url)
    return started


def _watch_online(s: Server, ids: list[str], seconds: float) -> set[str]:
    """The terminals the API showed offline at any moment during `seconds`."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for t in s.get("/api/v1/terminals?limit=100")["items"]:
            if t["id"] in ids and not t["online"]:
                seen.add(t["id"])
        time.sleep(0.2)
    return seen


def test_a_killed_server_adopts_its_broker_and_nobody_is_disconnected(server: Server) -> None:
    s = server
    ids = ["K-1", "K-2", "K-3", "K-4"]
    kiosks = _kiosks(s, ids)
    try:
        wait_until(
            lambda: all((d := s.get(f"/api/v1/terminals/{t}"))["online"] and d["last_seq"]
                        for t in ids),
            10, "the terminals online in the API",
        )  # fmt: skip
        pid = _broker_pid(s.data)
        conf = BrokerFiles(s.data / "mosquitto").conf_file
        killed_at_seq = {k.id: k.seq for k in kiosks}

        started = _kill_and_restart(s)
        ready_s = time.time() - started

        assert _broker_pid(s.data) == pid and runs_config(pid, conf), "the broker was restarted"
        # Online in the API with reports newer than the restart, within a few seconds.
        t0 = time.monotonic()
        wait_until(
            lambda: all(
                (d := s.get(f"/api/v1/terminals/{k.id}"))["online"]
                and d["last_seq"] > killed_at_seq[k.id] + 2
                for k in kiosks
            ),
            5, "fresh reports in the API after the restart",
        )  # fmt: skip
        fresh_s = time.monotonic() - t0
        # Long enough for a presence timeout to fire if anything had gone wrong.
        assert _watch_online(s, ids, OFFLINE_AFTER_S + 1) == set()
        assert [(k.connects, k.disconnects) for k in kiosks] == [(1, 0)] * len(kiosks)

        # Everything published while the server was down was stored: no seq missing.
        for k in kiosks:
            k.reporting.clear()
        last = {k.id: k.seq for k in kiosks}
        wait_until(
            lambda: all(s.get(f"/api/v1/terminals/{t}")["last_seq"] == n
                        for t, n in last.items()),
            5, "the last reports",
        )  # fmt: skip
        for k in kiosks:
            seqs = [i["seq"] for i in s.get(f"/api/v1/terminals/{k.id}/history")["items"]]
            assert seqs == list(range(1, last[k.id] + 1)), k.id
        assert _offline_alerts(s) == []
        print(f"restart ready in {ready_s:.1f} s, fresh reports in the API {fresh_s:.1f} s later")

        # A clean stop ends the adopted broker as it ends one of its own.
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(15) == 0
        assert not runs_config(pid, conf), "the adopted broker outlived a clean stop"
    finally:
        for k in kiosks:
            k.close()


def test_after_a_server_restart_a_silent_terminal_is_offline_only_after_the_grace(
    server: Server,
) -> None:
    s = server
    talker, silent = _kiosks(s, ["T-TALK", "T-SILENT"])
    try:
        wait_until(
            lambda: all(s.get(f"/api/v1/terminals/{t}")["last_seq"]
                        for t in ("T-TALK", "T-SILENT")),
            10, "both terminals reporting",
        )  # fmt: skip
        # Still connected (no Last Will), but it stops reporting just before the server dies.
        silent.reporting.clear()
        started = _kill_and_restart(s)

        gone = wait_until(
            lambda: not (d := s.get("/api/v1/terminals/T-SILENT"))["online"] and d,
            OFFLINE_AFTER_S + 10, "the silent terminal offline",
        )  # fmt: skip
        assert gone["presence"]["reason"] == "timeout"
        after_s = datetime.fromisoformat(gone["presence"]["changed_at"]).timestamp() - started
        # Its last report was seconds old at the restart: only the grace kept it online.
        assert after_s >= OFFLINE_AFTER_S, f"offline {after_s:.1f} s after the restart"
        assert _watch_online(s, ["T-TALK"], 2) == set()
        assert s.get("/api/v1/terminals/T-TALK")["online"]
        assert _offline_alerts(s) == ["T-SILENT"]
        assert (talker.connects, talker.disconnects) == (1, 0)
        print(f"silent terminal offline {after_s:.1f} s after the restart began")
    finally:
        talker.close()
        silent.close()


def test_after_a_broker_outage_nobody_is_offline_before_the_grace() -> None:
    """An external broker (FLEET_BROKER_URL) dies and is back after twice the presence timeout.
    While the server cannot hear anyone, silence says nothing: no terminal is timed out; once
    the link is back, a terminal that reports is never offline, a silent one is after the
    grace."""
    users = {"fleet-server": INSECURE_DEFAULT, "B-TALK": "talk-secret", "B-SILENT": "sil-secret"}
    broker = mosquitto.Broker(users=users).start()
    try:
        with fleet_serve(
            "fleet-outage-",
            status_interval_s=STATUS_INTERVAL_S,
            extra_env={"FLEET_BROKER_URL": broker.url},
        ) as running:
            s = Server(running.proc, running.data, running.url, running.env)
            s.token = s.fleet("tokens", "create", "--role", "operator", "--name", "e2e").split()[0]
            # Unknown to the database: registered on their first message (site `unassigned`).
            talker = Kiosk("B-TALK", broker.port, "talk-secret")
            silent = Kiosk("B-SILENT", broker.port, "sil-secret")
            try:
                ids = ["B-TALK", "B-SILENT"]
                wait_until(
                    lambda: all((d := s.get(f"/api/v1/terminals/{t}"))["online"]
                                and d["last_seq"] for t in ids),
                    10, "both terminals online",
                )  # fmt: skip
                silent.reporting.clear()
                broker.stop(signal.SIGKILL)  # a crash: no Last Will is published
                assert _watch_online(s, ids, 2 * OFFLINE_AFTER_S) == set()
                broker.start()
                back = time.time()

                gone = wait_until(
                    lambda: not (d := s.get("/api/v1/terminals/B-SILENT"))["online"] and d,
                    OFFLINE_AFTER_S + 15, "the silent terminal offline",
                )  # fmt: skip
                assert gone["presence"]["reason"] == "timeout"
                after_s = datetime.fromisoformat(gone["presence"]["changed_at"]).timestamp()
                assert after_s - back >= OFFLINE_AFTER_S, f"{after_s - back:.1f} s after"
                assert _watch_online(s, ["B-TALK"], 2) == set()
                assert s.get("/api/v1/terminals/B-TALK")["online"]
                assert _offline_alerts(s) == ["B-SILENT"]
                print(f"silent terminal offline {after_s - back:.1f} s after the broker was back")
            finally:
                talker.close()
                silent.close()
    finally:
        broker.close()


def test_a_clean_restart_raises_no_offline_alerts(server: Server) -> None:
    """SIGTERM stops the server and its broker: Mosquitto then publishes every connected
    terminal's Last Will (retained "offline"), and the server, started again, reads them from
    its session. Terminals that reconnect and report at once must not be called offline."""
    s = server
    ids = ["C-1", "C-2", "C-3"]
    kiosks = _kiosks(s, ids)
    try:
        wait_until(
            lambda: all((d := s.get(f"/api/v1/terminals/{t}"))["online"] and d["last_seq"]
                        for t in ids),
            10, "the terminals online in the API",
        )  # fmt: skip
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(15) == 0
        s.proc = launch(s.data, s.env, s.url)
        wait_until(lambda: all(k.connects == 2 for k in kiosks), 10, "the terminals back")
        seen = _watch_online(s, ids, OFFLINE_AFTER_S + 2)
        assert _offline_alerts(s) == [], "offline alerts after a clean restart"
        assert seen == set(), f"shown offline after a clean restart: {sorted(seen)}"
    finally:
        for k in kiosks:
            k.close()
