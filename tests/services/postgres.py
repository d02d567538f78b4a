"""A real PostgreSQL 15 (Debian package) in a temp dir on a free loopback port.

Set up as REAL-SERVICES.md found to work: initdb refuses to run as root, so when we are root
every server command runs as the `postgres` user through runuser. Durability is switched off
(fsync, synchronous_commit, full_page_writes): a test database that dies with the machine costs
nothing, and CREATE DATABASE per test becomes cheap.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.ports import free_port, wait_listening

BIN = Path(os.environ.get("FLEET_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"
# Trust auth is fine on a loopback server that lives as long as the test session.
INITDB_OPTIONS = ("-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8", "--locale", "C")


def available() -> bool:
    return all((BIN / tool).exists() for tool in ("initdb", "pg_ctl", "psql"))


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class Postgres:
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pg-")))
    _names: itertools.count[int] = field(default_factory=itertools.count)
    #: Commits acknowledged only once in the WAL (synchronous_commit on). Off, a crash of the
    #: server (`stop("immediate")`) loses the last commits it had acknowledged: fine for tests
    #: that never crash it, wrong for the fault tests that count every row.
    durable_commits: bool = False

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            _as_postgres([str(BIN / "initdb"), "-D", str(self.data), *INITDB_OPTIONS]),
            check=True,
            capture_output=True,
        )
        return self.launch()

    def launch(self) -> Postgres:
        """Start the server on the existing data folder (after `start`, and after `stop`)."""
        # fsync off is safe against a crash of the server process (the OS keeps its writes);
        # synchronous_commit off is not (the WAL still in the server's memory is lost).
        sync = "on" if self.durable_commits else "off"
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit={sync} -c full_page_writes=off -c max_connections=200"
        )
        log = str(self.dir / "log")
        subprocess.run(
            _as_postgres(
                [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        wait_listening(self.port)
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(BIN / "psql"),
                *self._connect_args(database),
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout

    def _connect_args(self, database: str) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database]

    def url(self, database: str) -> str:
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; its Tortoise URL."""
        name = f"fleet_test_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop`; mode "immediate" is a crash: every connection cut mid-query."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop"]),
                check=False,
                capture_output=True,
                timeout=60,
            )

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
