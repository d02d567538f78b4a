"""Issue 13, hostile: replicas under the faults the fault test does not try.

Each test starts real processes as tests/faults/test_replicas.py does (PostgreSQL 15, an external
Mosquitto with persistence, `fleet serve` replicas) and breaks one claim of README "Replicas".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.faults.publisher import Publisher, stored
from tests.faults.test_replicas import PASSWORD, TERMINALS, Replica, holder, view_is_right
from tests.services import mosquitto, postgres
from tests.services.fleet_server import wait_until

pytestmark = pytest.mark.skipif(
    not (mosquitto.available() and postgres.available()), reason="needs mosquitto and postgresql"
)


@dataclass
class Cluster:
    pg: postgres.Postgres
    database: str
    broker: mosquitto.Broker
    shared: Path
    replicas: dict[str, Replica] = field(default_factory=dict)

    def add(self, name: str, url: str) -> Replica:
        r = Replica(name, self.shared, url, self.broker.url)
        self.replicas[name] = r
        return r

    def sql(self, query: str) -> str:
        return self.pg.psql(query, self.database).strip()

    def holder(self) -> Replica | None:
        return self.replicas.get(holder(self.pg, self.database))

    def logs(self) -> str:
        return "\n".join(
            f"--- {r.name}\n" + (r.data / "serve.log").read_text(errors="replace")[-3000:]
            for r in self.replicas.values()
            if (r.data / "serve.log").exists()
        )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    pg = postgres.Postgres(durable_commits=True).start()
    broker = mosquitto.Broker(users={"fleet-server": PASSWORD}, persistence=True).start()
    shared = Path(tempfile.mkdtemp(prefix="fleet-keys-"))
    url = pg.new_database()
    c = Cluster(pg, url.rsplit("/", 1)[1], broker, shared)
    c.url = url  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        for r in c.replicas.values():
            if r.proc is not None and r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGCONT)
            r.close()
        broker.close()
        pg.close()
        shutil.rmtree(shared, ignore_errors=True)


def _two(c: Cluster) -> tuple[Replica, Replica, str]:
    url: str = c.url  # type: ignore[attr-defined]
    a = c.add("r1", url).start()  # first alone: it makes the dev-mode keys the second reads
    b = c.add("r2", url).start()
    token = a.fleet("tokens", "create", "--role", "operator", "--name", "attack").split()[0]
    return a, b, token


def test_a_stalled_lease_holder_calls_reporting_terminals_offline(cluster: Cluster) -> None:
    """A lease holder paused for 17 s (a VM stall, a GC pause; SIGSTOP) while every terminal
    keeps reporting: the other replica takes the lease after ~11 s and handles the inbox. When
    the old holder resumes, its timers run on the state it had before the pause before its lease
    task notices the lease is gone: every terminal silent for 17 s by its clock, so it stores
    each one offline and opens a terminal_offline alert, under the new holder's feet (whose
    in-memory presence still says online, so nothing ever puts them back)."""
    c = cluster
    a, b, token = _two(c)
    pub = Publisher(c.broker.port, "fleet-server", PASSWORD, terminals=TERMINALS, rate=100)
    acked: set[tuple[str, int]] = set()
    try:
        pub.start()
        since = datetime.now(UTC).replace(year=2000)
        wait_until(lambda: view_is_right(b, token, since), 30, "all terminals seen")
        first = wait_until(c.holder, 15, "a lease holder")
        other = b if first is a else a
        assert first.proc is not None
        first.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: c.holder() is other, 15, "the other replica to take over")
        time.sleep(17 - 11)
        first.proc.send_signal(signal.SIGCONT)
        resumed = datetime.now(UTC)
        time.sleep(8)
        acked = pub.finish()
        pub = None  # type: ignore[assignment]
        wait_until(lambda: acked <= set(stored(c.pg, c.database)), 30, "every report stored")
        offline = c.sql(
            "SELECT count(DISTINCT terminal_id) FROM alert WHERE rule = 'terminal_offline'"
        )
        still_open = c.sql(
            "SELECT count(*) FROM alert WHERE rule = 'terminal_offline' AND active_key = 1"
        )
        offline_now = c.sql("SELECT count(*) FROM terminal WHERE NOT online")
        print(
            f"after the stall: {offline} terminals got a terminal_offline alert, {still_open} "
            f"still open, {offline_now} terminals stored offline; resumed {resumed:%T}"
        )
        assert offline == "0", f"{offline} reporting terminals called offline"
        assert offline_now == "0", f"{offline_now} reporting terminals shown offline"
    finally:
        if pub is not None:
            pub.finish()
