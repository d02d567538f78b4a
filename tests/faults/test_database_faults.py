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

import random
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from fleet.server.broker_files import BROKER_SUBDIR, BrokerFiles
from fleet.server.settings import Settings
from tests.faults.publisher import Publisher, stored
from tests.services import mosquitto, postgres
from tests.services.fleet_server import BIN, fleet_serve, stop_broker, wait_until

pytestmark = pytest.mark.skipif(
    not (mosquitto.available() and postgres.available()), reason="needs mosquitto and postgresql"
)


@pytest.fixture
def pg() -> Iterator[postgres.Postgres]:
    server = postgres.Postgres(durable_commits=True).start()
    try:
        yield server
    finally:
        server.close()


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
