"""Issue 13: nothing lost when the database blinks.

A real `fleet serve` on a real PostgreSQL 15 (its own instance: this test crashes it) with its
embedded Mosquitto. A publisher sends status reports for 40 terminals at ~250 msg/s and notes
every (terminal, seq) the broker acknowledged. Meanwhile PostgreSQL is crashed
(`pg_ctl stop -m immediate`, every connection cut in the middle of whatever it ran) and its
backends are killed (`pg_terminate_backend`) at random moments, several times. Then:

- every acknowledged report is stored exactly once (0 lost, 0 duplicated), no batch was
  dead-lettered for the outage, and /healthz said 503 while the database was away;
- with PostgreSQL down again, SIGTERM ends the server within 10 s, the reports it could not store
  stay with the broker, and a new server stores them once the database is back.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.server.broker_files import BROKER_SUBDIR, BrokerFiles
from fleet.server.settings import Settings
from tests.services import mosquitto, postgres
from tests.services.fleet_server import BIN, fleet_serve, stop_broker, wait_until

pytestmark = pytest.mark.skipif(
    not (mosquitto.available() and postgres.available()), reason="needs mosquitto and postgresql"
)

TERMINALS = [f"F-{i:03d}" for i in range(40)]
RATE = 250.0


@pytest.fixture
def pg() -> Iterator[postgres.Postgres]:
    server = postgres.Postgres(durable_commits=True).start()
    try:
        yield server
    finally:
        server.close()


class Publisher:
    """Reports round-robin over TERMINALS as the server's user; records what the broker took."""

    def __init__(self, port: int, user: str, password: str, first: int = 0) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="fault-publisher", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(user, password)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        # No lock of ours around publish(): paho calls on_publish holding its own, so one would
        # deadlock the two threads. Mids do not wrap in this test's few thousand messages.
        self.sent: dict[int, tuple[str, int]] = {}
        self.acked_mids: list[int] = []
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        #: Where the numbering starts: a second publisher goes on from the first's last message
        #: (a terminal starting again at seq 1 would be a new sequence, archived by the ingest).
        self.next = first
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, _c: object, _u: object, mid: int, rc: object, _p: object) -> None:
        if not getattr(rc, "is_failure", False):
            self.acked_mids.append(mid)

    def _run(self) -> None:
        started = time.monotonic()
        first = n = self.next
        while not self.stop.is_set():
            ahead = (n - first) / RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            tid = TERMINALS[n % len(TERMINALS)]
            seq = n // len(TERMINALS) + 1
            ts = datetime.now(UTC).isoformat(timespec="milliseconds")
            doc = {"v": 1, "seq": seq, "ts": ts, "agent": "1.0.0",
                   "printer": {"driver": "sim", "state": "idle", "reasons": []}}  # fmt: skip
            info = self.client.publish(f"fleet/v1/t/{tid}/status", json.dumps(doc), qos=1)
            self.sent[info.mid] = (tid, seq)
            n += 1
            self.next = n

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> set[tuple[str, int]]:
        self.stop.set()
        self.thread.join(10)
        deadline = time.monotonic() + 20
        while len(self.acked_mids) < len(self.sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
        return {self.sent[m] for m in self.acked_mids if m in self.sent}


def stored(pg: postgres.Postgres, database: str) -> list[tuple[str, int]]:
    out = pg.psql("SELECT terminal_id, seq FROM status_sample WHERE seq >= 0", database)
    rows = [line.split("|") for line in out.splitlines() if line]
    return [(t, int(s)) for t, s in rows]


def healthz(url: str) -> int:
    try:
        return httpx.get(url + "/healthz", timeout=3, trust_env=False).status_code
    except httpx.HTTPError:
        return 0


def test_postgres_crashes_mid_batch_lose_and_duplicate_nothing(pg: postgres.Postgres) -> None:
    url = pg.new_database()
    database = url.rsplit("/", 1)[1]
    rng = random.Random(13)
    with fleet_serve(
        "fleet-dbfault-", status_interval_s=5, extra_env={"FLEET_DATABASE_URL": url}
    ) as s:
        _, port = BrokerFiles(s.data / BROKER_SUBDIR).server_listener()
        settings = Settings(dev_mode=True, data_dir=s.data)
        login = (settings.broker_admin_user, settings.broker_admin_password.get_secret_value())
        pub = Publisher(port, *login)
        pub.start()
        health_seen: set[int] = set()
        try:
            for i in range(6):
                time.sleep(rng.uniform(1.5, 3.0))
                if i % 2 == 0:
                    pg.stop("immediate")  # a crash: connections cut in mid-query
                    down_until = time.monotonic() + rng.uniform(2.0, 5.0)
                    while time.monotonic() < down_until:
                        health_seen.add(healthz(s.url))
                        time.sleep(0.3)
                    pg.launch()
                else:
                    pg.psql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                    )
        finally:
            acked = pub.finish()
        assert len(acked) > 2000
        try:
            wait_until(lambda: len(stored(pg, database)) >= len(acked), 60, "every report stored")
        except AssertionError:
            print((s.data / "serve.log").read_text(errors="replace")[-4000:])
            rows_now = set(stored(pg, database))
            print(
                f"acked {len(acked)}, stored {len(rows_now)}, lost {sorted(acked - rows_now)[:20]}"
            )
            raise
        rows = stored(pg, database)
        assert len(rows) == len(set(rows)), "a report was stored twice"
        assert acked <= set(rows), f"lost: {sorted(acked - set(rows))[:10]}…"
        assert 503 in health_seen, f"/healthz never said the database was away: {health_seen}"
        assert wait_until(lambda: healthz(s.url) == 200, 30, "healthy again")
        dead = pg.psql("SELECT reason FROM dead_letter", database)
        assert "internal_error" not in dead and "store_failed" not in dead, dead

        # The database away again: SIGTERM must end the server anyway, quickly, without acking.
        pub = Publisher(port, *login, first=pub.next)
        pub.start()
        time.sleep(1.0)
        pg.stop("immediate")
        time.sleep(2.0)
        acked_late = pub.finish()
        started = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(15)
        took = time.monotonic() - started
        assert took < 10, f"SIGTERM took {took:.1f} s with the database down"
        stop_broker(s.data)  # the server stopped it; make sure before the next one starts
        pg.launch()
        again = subprocess.Popen(
            [str(BIN / "fleet"), "serve", "--log-level", "warning"],
            env=s.env,
            stdout=(s.data / "serve2.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: acked_late <= set(stored(pg, database)), 60, "the held reports stored"
            )
        finally:
            again.send_signal(signal.SIGTERM)
            again.wait(15)
        rows = stored(pg, database)
        assert len(rows) == len(set(rows))
        assert (acked | acked_late) <= set(rows)
        print(
            f"{len(acked)} + {len(acked_late)} acknowledged reports, all stored once; "
            f"SIGTERM with the database down took {took:.1f} s"
        )
