"""Issue 13: two `fleet serve` replicas on one PostgreSQL and one Mosquitto, under faults.

Two real replicas (same keys, their own replica ids) on a real PostgreSQL 15 and a real external
Mosquitto 2 with persistence; a publisher sends status reports for 40 terminals at ~200 msg/s and
notes every (terminal, seq) the broker acknowledged. Meanwhile, one after the other:

1. the replica holding the lease is killed (SIGKILL), and started again 3 s later;
2. PostgreSQL crashes (`pg_ctl stop -m immediate`) for 3 s;
3. the broker is killed (SIGKILL) and started again 1 s later;
4. both replicas are stopped and started again at the same moment.

After each, the fleet view (the API of the replica that does *not* hold the lease) must show
every terminal online and reporting within 30 s. At the end: every acknowledged report stored
exactly once, no terminal_offline alert ever opened, no duplicate desired-state document, one
lease holder, and the event stream of the non-holder carried the holder's status events.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.faults.publisher import Publisher, stored
from tests.services import mosquitto, postgres
from tests.services.fleet_server import BIN, launch, wait_until
from tests.services.ports import free_port

pytestmark = pytest.mark.skipif(
    not (mosquitto.available() and postgres.available()), reason="needs mosquitto and postgresql"
)

TERMINALS = [f"R-{i:03d}" for i in range(40)]
RATE = 200.0
PASSWORD = "replica-test-password-0123456789"
STATUS_INTERVAL_S = 5  # offline after 15 s of silence


class Replica:
    def __init__(self, name: str, shared: Path, db_url: str, broker_url: str) -> None:
        self.name = name
        self.data = Path(tempfile.mkdtemp(prefix=f"fleet-{name}-"))
        os.chmod(self.data, 0o755)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
            "FLEET_DEV_MODE": "1",
            "FLEET_DATA_DIR": str(self.data),
            "FLEET_API_PORT": str(port),
            "FLEET_STATUS_INTERVAL_S": str(STATUS_INTERVAL_S),
            "FLEET_DATABASE_URL": db_url,
            "FLEET_BROKER_URL": broker_url,
            "FLEET_BROKER_ADMIN_PASSWORD": PASSWORD,
            "FLEET_REPLICA_ID": name,
            # The same keys on every replica, as an operator deploys them.
            "FLEET_CONFIG_KEY_FILE": str(shared / "config-key.pem"),
            "FLEET_ISSUER_KEY_FILE": str(shared / "issuer-key.pem"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Replica:
        if wait:
            self.proc = launch(self.data, self.env, self.url, 30)
        else:
            with (self.data / "serve.log").open("ab") as log:
                self.proc = subprocess.Popen(
                    [str(BIN / "fleet"), "serve", "--log-level", "warning"],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        return self

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def fleet(self, *args: str) -> str:
        out = subprocess.run(
            [str(BIN / "fleet"), *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def close(self) -> None:
        self.signal(signal.SIGTERM)
        shutil.rmtree(self.data, ignore_errors=True)


def healthy(r: Replica) -> bool:
    try:
        return httpx.get(r.url + "/healthz", timeout=3, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def fleet_view(r: Replica, token: str) -> dict[str, dict[str, object]]:
    got = httpx.get(
        r.url + "/api/v1/terminals?limit=500",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
        trust_env=False,
    )
    got.raise_for_status()
    return {t["id"]: t for t in got.json()["items"]}


def view_is_right(r: Replica, token: str, since: datetime) -> bool:
    """Every terminal online, and heard since `since` (the end of the fault)."""
    try:
        view = fleet_view(r, token)
    except httpx.HTTPError:
        return False
    if set(view) != set(TERMINALS):
        return False
    return all(
        t["online"] and t["last_seen"] and datetime.fromisoformat(str(t["last_seen"])) > since
        for t in view.values()
    )


def holder(pg: postgres.Postgres, database: str, *, term: bool = False) -> str:
    """The replica holding the lease now ("" when nobody does); `term`: its whole holder id
    (replica:pid:random), new at every start of a process."""
    out = pg.psql("SELECT holder FROM lease WHERE name = 'leader' AND expires_at > now()", database)
    return out.strip() if term else out.strip().split(":", 1)[0]


#: Terminals with two documents of the same content (the hash covers `version` and `issued_at`,
#: so content is compared without them).
SAME_CONTENT = """
SELECT terminal_id FROM desired_doc
 GROUP BY terminal_id, (payload::jsonb - 'version' - 'issued_at')
HAVING count(*) > 1
"""


class StreamWatch:
    """Reads one replica's SSE stream on a thread; counts status events."""

    def __init__(self, r: Replica, token: str) -> None:
        self.status_events = 0
        self.stop = threading.Event()
        self.url, self.token = r.url, token
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream(
                "GET", self.url + "/api/v1/events", headers=headers, timeout=10, trust_env=False
            ) as stream,
        ):
            for line in stream.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("event: status"):
                    self.status_events += 1


@pytest.fixture
def pg() -> Iterator[postgres.Postgres]:
    server = postgres.Postgres(durable_commits=True).start()
    try:
        yield server
    finally:
        server.close()


def test_two_replicas_lose_and_duplicate_nothing_across_faults(pg: postgres.Postgres) -> None:
    url = pg.new_database()
    database = url.rsplit("/", 1)[1]
    broker = mosquitto.Broker(users={"fleet-server": PASSWORD}, persistence=True).start()
    shared = Path(tempfile.mkdtemp(prefix="fleet-keys-"))
    a = Replica("r1", shared, url, broker.url)
    b = Replica("r2", shared, url, broker.url)
    timings: dict[str, float] = {}
    pub: Publisher | None = None
    watch: StreamWatch | None = None
    from_holder = 0
    try:
        a.start()  # first alone: it makes the keys (dev mode) that the second then reads
        b.start()
        token = a.fleet("tokens", "create", "--role", "operator", "--name", "faults").split()[0]
        pub = Publisher(broker.port, "fleet-server", PASSWORD, terminals=TERMINALS, rate=RATE)
        pub.start()
        wait_until(lambda: view_is_right(b, token, datetime.now(UTC).replace(year=2000)), 30,
                   "all terminals seen")  # fmt: skip
        replicas = {"r1": a, "r2": b}

        def recovered(what: str) -> None:
            since = datetime.now(UTC)
            lead = holder(pg, database) or "r1"
            other = replicas["r2" if lead == "r1" else "r1"]
            started = time.monotonic()
            wait_until(lambda: view_is_right(other, token, since), 30, f"fleet view after {what}")
            timings[what] = time.monotonic() - started

        # 1. The lease holder killed; started again 3 s later.
        wait_until(lambda: holder(pg, database) in replicas, 15, "a lease holder")
        first = replicas[holder(pg, database)]
        killed_term = holder(pg, database, term=True)
        watch = StreamWatch(replicas["r2" if first is a else "r1"], token)
        time.sleep(3)
        from_holder = watch.status_events  # all made by the holder, streamed by the other
        first.signal(signal.SIGKILL)
        time.sleep(3)
        first.start(wait=False)
        recovered("replica killed")
        # A new term, of either replica (the one started again may win the expired lease).
        wait_until(lambda: holder(pg, database, term=True) not in ("", killed_term), 15,
                   "a new lease term")  # fmt: skip
        wait_until(lambda: healthy(first), 30, "the killed replica back")

        # 2. PostgreSQL crashes for 3 s.
        pg.stop("immediate")
        time.sleep(3)
        pg.launch()
        recovered("database crash")

        # 3. The broker killed; started again 1 s later.
        assert broker.proc is not None
        broker.proc.kill()
        broker.proc.wait()
        time.sleep(1)
        broker.start()
        recovered("broker killed")

        # 4. Everything restarted at once.
        for r in (a, b):
            assert r.proc is not None
            r.proc.send_signal(signal.SIGTERM)
        for r in (a, b):
            assert r.proc is not None
            r.proc.wait(15)
        for r in (a, b):
            r.start(wait=False)
        recovered("both restarted")
        time.sleep(2)
    finally:
        acked = pub.finish() if pub is not None else set()
    try:
        assert len(acked) > 5000
        wait_until(lambda: len(stored(pg, database)) >= len(acked), 60, "every report stored")
        rows = stored(pg, database)
        assert len(rows) == len(set(rows)), "a report was stored twice"
        assert acked <= set(rows), f"lost: {sorted(acked - set(rows))[:10]}…"
        offline = pg.psql("SELECT terminal_id FROM alert WHERE rule = 'terminal_offline'", database)
        assert offline.strip() == "", f"false offline alerts: {offline.split()}"
        twice = pg.psql(SAME_CONTENT, database)
        assert twice.strip() == "", f"duplicate desired documents: {twice}"
        dead = pg.psql("SELECT reason FROM dead_letter", database)
        assert dead.strip() == "", dead
        assert from_holder > 50, f"the non-holder streamed {from_holder} of the holder's events"
        inbox = pg.psql("SELECT count(*) FROM ingest_inbox", database)
        wait_until(
            lambda: pg.psql("SELECT count(*) FROM ingest_inbox", database).strip() == "0",
            10,
            f"the inbox emptied ({inbox.strip()} left)",
        )
        print(json.dumps({"acked": len(acked), "recovery_s": timings}))
        for what, took in timings.items():
            assert took < 30, (what, took)
    except AssertionError:
        for r in (a, b):
            print(f"--- {r.name}\n" + (r.data / "serve.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        if watch is not None:
            watch.stop.set()
        for r in (a, b):
            r.close()
        broker.close()
        shutil.rmtree(shared, ignore_errors=True)


def test_a_replica_gone_for_good_takes_nothing_with_it(pg: postgres.Postgres) -> None:
    """A replica killed and not coming back: the broker goes on queuing its share for its
    session. The lease holder sees its heartbeat go stale, retires the session (its queued
    reports to the inbox) and the share goes to the replica that is left: every report stored
    once, no terminal called offline, and `fleet replicas retire` refuses a replica whose
    heartbeat is fresh."""
    url = pg.new_database()
    database = url.rsplit("/", 1)[1]
    broker = mosquitto.Broker(users={"fleet-server": PASSWORD}, persistence=True).start()
    shared = Path(tempfile.mkdtemp(prefix="fleet-keys-"))
    a = Replica("r1", shared, url, broker.url)
    b = Replica("r2", shared, url, broker.url)
    pub: Publisher | None = None
    try:
        a.start()
        b.start()
        out = subprocess.run([str(BIN / "fleet"), "replicas", "retire"], env=b.env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode != 0 and "stop it first" in out.stderr, out
        wait_until(lambda: holder(pg, database) == "r1", 20, "r1 holding the lease")
        pub = Publisher(broker.port, "fleet-server", PASSWORD, terminals=TERMINALS, rate=100)
        pub.start()
        time.sleep(3)
        b.signal(signal.SIGKILL)  # gone for good
        killed = datetime.now(UTC)
        token = a.fleet("tokens", "create", "--role", "operator", "--name", "gone").split()[0]
        took = time.monotonic()
        wait_until(lambda: view_is_right(a, token, killed), 30, "every terminal heard again")
        took = time.monotonic() - took
        time.sleep(3)
        acked = pub.finish()
        pub = None
        wait_until(lambda: acked <= set(stored(pg, database)), 30, "every report stored")
        rows = stored(pg, database)
        assert len(rows) == len(set(rows))
        offline = pg.psql("SELECT terminal_id FROM alert WHERE rule = 'terminal_offline'", database)
        assert offline.strip() == "", f"false offline alerts: {offline.split()}"
        sessions = broker_sessions(broker)
        assert "fleet-server.ingest.r1" in sessions  # the file does name sessions...
        assert "fleet-server.ingest.r2" not in sessions  # ...and r2's is gone
        print(f"r2 gone: every terminal heard again {took:.1f} s later; {len(acked)} reports, "
              "all stored once")  # fmt: skip
    except AssertionError:
        for r in (a, b):
            print(f"--- {r.name}\n" + (r.data / "serve.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        if pub is not None:
            pub.finish()
        for r in (a, b):
            r.close()
        broker.close()
        shutil.rmtree(shared, ignore_errors=True)


def broker_sessions(broker: mosquitto.Broker) -> str:
    """The client ids in the broker's saved state (persistence): a session that ended is gone."""
    assert broker.proc is not None
    broker.stop()  # saves its state
    db = broker.dir / "mosquitto.db"
    text = db.read_bytes().decode("latin-1") if db.exists() else ""
    broker.start()
    return text
