"""Capacity benchmark (issue 13): how large a fleet one server holds at a 10 s status interval.

    .venv/bin/python bench/bench_capacity.py                        # SQLite, 1,000 … 20,000
    .venv/bin/python bench/bench_capacity.py --sizes 1000,2000,5000 --seconds 20
    .venv/bin/python bench/bench_capacity.py --db postgres          # one replica on PostgreSQL
    .venv/bin/python bench/bench_capacity.py --replicas 2 --json capacity-r2.json

One mode per run:
- default: one `fleet serve` on SQLite, the default product;
- `--db postgres`: one `fleet serve` on PostgreSQL, which is replicated mode with one replica (its
  receiver relays into `ingest_inbox`, its lease-holding half handles the inbox), so the cost
  of the replica machinery and of PostgreSQL shows against the SQLite row;
- `--replicas 2` (implies PostgreSQL): two `fleet serve` replicas on one PostgreSQL, sharing the
  ingest through the broker's shared subscription; one of them holds the lease and handles.
The broker is the server's own Mosquitto (`EmbeddedBroker`: its generated config, ACL, queue
limits and persistence), started by the benchmark on loopback as bench_ingest.py does, in every
mode, so the modes differ only in the server. PostgreSQL 15 is the test fixture's
(tests/services/postgres.py: fsync off, synchronous_commit on).

Per fleet size N (`--sizes`, ascending; one growing fleet C-00000 … whose terminals keep their
seq numbering from step to step): publisher processes (separate from the server, about 1,500
msg/s each) send every terminal's status report once per `--interval` (N / interval msg/s),
spread evenly over the interval, as the server's MQTT user on the server's listener (no 20,000
terminal accounts; the broker's cost of 20,000 connections is therefore not in the figures).
The reports are what agent/report.py builds for a real agent (printer with paper, toner and
reasons, reader, host, outbox stats); one terminal in 33 reports low paper (`media-low`, 8-15 %),
so the alert rules run on every report and `paper_low` opens and stays open for about 3 % of the
fleet. The server runs with `FLEET_STATUS_INTERVAL_S` = interval (offline after 3 silent ones).

1. Warm-up: one interval (every terminal reported once, new ones registered) plus `--warmup`
   seconds, then until the lease holder has given every terminal its first desired-state document
   (a scan every 15 s): that is the cost of joining the fleet, not of running it (how long it
   took is `first_docs_wait_s` in the JSON).
2. Window (`--seconds`): the CPU time of each process tree from /proc/<pid>/stat (utime + stime,
   plus reaped and live children): `fleet serve` (summed over replicas), the broker, PostgreSQL
   (the postmaster and every backend), the publishers, and the whole machine from /proc/stat, so
   what else ran on the shared machine shows as "other". Meanwhile a probe terminal (PROBE-1)
   publishes a report, polls `GET /api/v1/terminals/PROBE-1` every 50 ms until it shows that seq
   (alternating over the replicas' APIs), waits 0.2 s and goes again: publish-to-API latency
   p50/p99/max over the probes sent in the window. A probe not seen within 10 s counts as
   infinitely late, never as missing.
3. Drain: the publishers stop (each waits for the broker's PUBACKs, counting the acknowledged
   reports); the database is counted until it holds every acknowledged report of the step. "Kept
   up" means it did within `--drain-limit` seconds of the last publish.
A first step of size 0 (`--baseline-seconds`) measures the idle server with the probe alone.

A size holds when p99 < 1 s, the ingest kept up and nothing was lost. Stepping stops at the first
size that does not hold; "largest fleet with p99 < 1 s" is the largest size that held. When that
is short of 20,000 it says so, and prints a linear estimate of the CPU 20,000 would need, from the
baseline and the largest size that held, labelled as an estimate.

Not measured: the paper run-out forecast job (every 300 s by default, its cost grows with hours of
paper history the benchmark does not have) is moved out of the way (`FLEET_FORECAST_INTERVAL_S`
one day); the agents' answers to their desired documents (`reported`) and presence messages; TLS.

This machine is the server and the load generator at once: the publishers, the probe and
whatever else runs here take cores a dedicated server would not share ("pubs" and "other"); with
the machine saturated ("box" near 100 % per core) the latencies say as much about that as about
the server.

FAIL (exit 1) when the database holds fewer reports of a step than the broker acknowledged, a
server process died, or the run was interrupted or broke. A size that does not hold is a
result, not a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_ingest as ingest  # noqa: E402 - bench/ is this script's own folder

from agent import report  # noqa: E402
from agent.drivers.base import PaperLevel, PrinterStatus, ReaderStatus  # noqa: E402
from fleet.server.broker import EmbeddedBroker  # noqa: E402
from tests.services import postgres  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
GOAL = 20_000
#: One terminal in this many reports low paper (paper_low opens and stays open).
LOW_EVERY = 33
#: Reports per second one publisher process is given (one paho client tops out near 10k msg/s,
#: and the publishers share the machine with the server).
PER_PUBLISHER = 1500
PROBE_POLL_S = 0.05
PROBE_PAUSE_S = 0.2
PROBE_GIVE_UP_S = 10.0
P99_LIMIT_S = 1.0
#: Probes at least this slow are listed with when they were sent (JSON: slow_probes).
SLOW_S = 0.5
#: How long a step may wait for the first desired-state documents before measuring anyway.
FIRST_DOCS_WAIT_S = 90.0
#: After the publishers stop, how long the database may take to hold every report before the
#: step counts as data loss.
LOSS_WAIT_S = 60.0
DESIRED = "sha256:" + "5e" * 32  # what an agent that applied its document reports

_children: list[subprocess.Popen[str]] = []  # publishers still running (stopped at the end)


def terminal_id(i: int) -> str:
    return f"C-{i:05d}"


def status_report(i: int, seq: int) -> bytes:
    """Terminal `i`'s report number `seq`, as agent/reporter.py builds it."""
    low = i % LOW_EVERY == 0
    level = 8 + i % 8 if low else max(25, 95 - (i * 7) % 55 - seq // 30)
    printer = PrinterStatus(
        driver="ipp",
        state="idle",
        reasons=("media-low",) if low else (),
        paper=PaperLevel(level_pct=level, sheets_left=level * 5, capacity=500),
        toner_pct=20 + (i * 13) % 75,
        pages_total=10_000 + i + 3 * seq,
    )
    reader = ReaderStatus(driver="pcsc", state="ok", card_present=False)
    doc = report.status(
        seq=seq,
        agent_version="1.2.0",
        printer=printer,
        reader=reader,
        host={"uptime_s": 86_400 + 10 * seq, "disk_free_mb": 5120, "agent_uptime_s": 10 * seq},
        desired=DESIRED,
    )
    doc["outbox"] = {"queued": 0, "bytes": 0, "dropped_status": 0, "dropped_events": 0,
                     "rejected": 0}  # fmt: skip
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# -- the publisher process -------------------------------------------------------------------------


def publish_main(cfg: dict[str, Any]) -> None:
    """Publish the status reports of terminals [first, first + count): each once per interval,
    spread evenly, from `start_at` until a line (or EOF) on stdin; then wait for the PUBACKs and
    print what was published as one JSON line."""
    ingest.PASSWORD = cfg["password"]
    first, count, seq0 = int(cfg["first"]), int(cfg["count"]), int(cfg["first_seq"])
    spacing = float(cfg["interval"]) / count
    acked = 0

    def on_publish(_c: Any, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        nonlocal acked
        if not getattr(rc, "is_failure", False):
            acked += 1

    c = ingest.client(int(cfg["port"]), f"bench-cap-pub-{os.getpid()}")
    c.on_publish = on_publish
    c.loop_start()
    stop = threading.Event()

    def until_told() -> None:
        sys.stdin.readline()  # a line, or EOF when the parent is gone
        stop.set()

    threading.Thread(target=until_told, daemon=True).start()
    topics = [f"fleet/v1/t/{terminal_id(first + k)}/status" for k in range(count)]
    start = float(cfg["start_at"])
    stop.wait(max(0.0, start - time.time()))
    n, behind, last = 0, 0.0, start
    while not stop.is_set():
        ahead = start + n * spacing - time.time()
        if ahead > 0.001 and stop.wait(ahead):
            break
        behind = max(behind, -ahead)
        k, rnd = n % count, n // count
        c.publish(topics[k], status_report(first + k, seq0 + rnd), qos=1)
        last = time.time()
        n += 1
    deadline = time.monotonic() + 30
    while acked < n and time.monotonic() < deadline:
        time.sleep(0.02)
    c.disconnect()
    c.loop_stop()
    t = os.times()
    print(json.dumps({"sent": n, "acked": acked, "start": start, "end": last,
                      "behind_max_s": behind, "next_seq": seq0 + math.ceil(n / count),
                      "cpu_s": t.user + t.system}), flush=True)  # fmt: skip


def start_publishers(
    port: int, n: int, first_seq: int, interval: float, start_at: float
) -> list[subprocess.Popen[str]]:
    procs = max(1, math.ceil(n / interval / PER_PUBLISHER))
    bounds = [n * p // procs for p in range(procs + 1)]
    out = []
    for p in range(procs):
        cfg = {"port": port, "password": ingest.PASSWORD, "first": bounds[p],
               "count": bounds[p + 1] - bounds[p], "first_seq": first_seq,
               "interval": interval, "start_at": start_at}  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, __file__, "_publish", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C is the parent's to handle
        )
        _children.append(proc)
        out.append(proc)
    return out


def stop_publishers(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    for proc in procs:
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.close()
    results = []
    for proc in procs:
        assert proc.stdout is not None
        out = proc.stdout.read()  # to EOF: the publisher prints once it has its PUBACKs
        proc.stdout.close()
        proc.wait(60)
        _children.remove(proc)
        lines = out.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"publisher {proc.pid} failed (exit {proc.returncode})")
        results.append(json.loads(lines[-1]))
    return results


def kill_children() -> None:
    for proc in list(_children):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _children.remove(proc)


# -- CPU from /proc --------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def tree_cpu(pid: int, tree: dict[int, list[int]]) -> float:
    """CPU seconds of `pid`, its reaped children and its live descendants."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    return own + sum(tree_cpu(child, tree) for child in tree.get(pid, []))


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    tree = _children_of()
    out = {name: sum(tree_cpu(pid, tree) for pid in pids) for name, pids in groups.items()}
    own = _stat(os.getpid()) or ["0"] * 15
    out["bench"] = (int(own[11]) + int(own[12])) / CLK_TCK  # the probe; not its children
    out["machine"] = machine_busy_s()
    return out


# -- the stack: broker, database, servers ----------------------------------------------------------


class Database:
    """Counts in the server's database, read beside it (SQLite in WAL mode, or psql)."""

    def __init__(self, sqlite_file: Path | None = None, pg: postgres.Postgres | None = None,
                 name: str = "") -> None:  # fmt: skip
        self.sqlite_file, self.pg, self.name = sqlite_file, pg, name

    def count(self, sql: str) -> int:
        if self.pg is not None:
            return int(self.pg.psql(sql, self.name).strip() or 0)
        assert self.sqlite_file is not None
        db = sqlite3.connect(f"file:{self.sqlite_file}?mode=ro", uri=True, timeout=10)
        try:
            return int(db.execute(sql).fetchone()[0])
        finally:
            db.close()

    def stored(self, first_seq: int) -> int:
        return self.count(
            "SELECT COUNT(*) FROM status_sample WHERE terminal_id LIKE 'C-%' "
            f"AND seq >= {int(first_seq)}"
        )

    def with_documents(self) -> int:
        return self.count(
            "SELECT COUNT(DISTINCT terminal_id) FROM desired_doc WHERE terminal_id LIKE 'C-%'"
        )

    def open_alerts(self, rule: str) -> int:
        assert rule.isidentifier()
        return self.count(
            f"SELECT COUNT(*) FROM alert WHERE active_key = 1 AND rule = '{rule}' "
            "AND terminal_id LIKE 'C-%'"
        )


class Stack:
    """The broker, PostgreSQL (if asked for) and the `fleet serve` processes of one mode."""

    def __init__(self, data: Path, db: str, replicas: int, interval: int) -> None:
        self.data, self.db_kind, self.replicas, self.interval = data, db, replicas, interval
        self.broker: EmbeddedBroker | None = None
        self.pg: postgres.Postgres | None = None
        self.servers: list[ingest.Server] = []
        self.db: Database | None = None

    def start(self) -> None:
        self.broker = EmbeddedBroker(
            self.data / "mosquitto", server_user=ingest.USER, server_password=ingest.PASSWORD
        ).start()
        env: dict[str, str] = {
            "FLEET_STATUS_INTERVAL_S": str(self.interval),
            "FLEET_FORECAST_INTERVAL_S": str(24 * 3600),
        }
        if self.db_kind == "postgres":
            self.pg = postgres.Postgres(durable_commits=True).start()
            url = self.pg.new_database()
            self.db = Database(pg=self.pg, name=url.rsplit("/", 1)[1])
            keys = self.data / "keys"
            keys.mkdir()
            env |= {"FLEET_DATABASE_URL": url,
                    "FLEET_CONFIG_KEY_FILE": str(keys / "config-key.pem"),
                    "FLEET_ISSUER_KEY_FILE": str(keys / "issuer-key.pem")}  # fmt: skip
        for r in range(self.replicas):
            folder = self.data / f"r{r + 1}"
            folder.mkdir()
            server = ingest.Server(self.broker.server_port, folder)
            server.env |= env
            if self.pg is not None:
                server.env["FLEET_REPLICA_ID"] = f"r{r + 1}"
            self.servers.append(server)
            server.start()  # one after the other: the first makes the keys the others read
        if self.pg is None:
            self.db = Database(sqlite_file=self.data / "r1" / "server" / "fleet.sqlite3")

    def groups(self) -> dict[str, list[int]]:
        serve = [s.proc.pid for s in self.servers if s.proc is not None]
        broker = [self.broker.pid] if self.broker is not None and self.broker.pid else []
        db: list[int] = []
        if self.pg is not None:
            db = [int((self.pg.data / "postmaster.pid").read_text().split()[0])]
        groups = {"serve": serve, "broker": broker, "db": db}
        if len(self.servers) > 1:
            groups |= {f"serve {s.data.name}": [s.proc.pid] for s in self.servers if s.proc}
        return groups

    def check_alive(self) -> None:
        for s in self.servers:
            if s.proc is None or s.proc.poll() is not None:
                raise RuntimeError(f"fleet serve died; see {s.data / 'serve.log'}")
        if self.broker is None or self.broker.pid is None:
            raise RuntimeError("the broker is not running")

    def lease_holder(self) -> str:
        if self.pg is None or self.db is None:
            return ""
        out = self.pg.psql(
            "SELECT holder FROM lease WHERE name = 'leader' AND expires_at > now()", self.db.name
        )
        return out.strip().split(":", 1)[0]

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            self.pg.close()


# -- the latency probe -----------------------------------------------------------------------------


class Prober:
    """PROBE-1 publishes a report, polls the API until it shows it, pauses, and again.

    Not bench_ingest.probe_latencies: a probe not seen in time is recorded (as infinitely late)
    instead of left out, an API error does not end the thread, and polling every 50 ms rather
    than 20 ms keeps the probe's own load on the server small beside a 1,000-terminal fleet."""

    def __init__(self, port: int, apis: list[str], token: str) -> None:
        self.port, self.apis, self.token = port, apis, token
        self.samples: list[tuple[float, float]] = []  # (sent at, seconds until the API showed it)
        self.requests = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def _run(self) -> None:
        c = ingest.client(self.port, f"bench-cap-probe-{os.getpid()}")
        c.loop_start()
        seq = 0
        try:
            while not self.stop.is_set():
                seq += 1
                api = self.apis[seq % len(self.apis)]
                sent_at, started = time.time(), time.monotonic()
                c.publish(f"fleet/v1/t/{ingest.PROBE}/status", ingest.status_payload(seq), qos=1)
                latency = math.inf
                while time.monotonic() - started < PROBE_GIVE_UP_S and not self.stop.is_set():
                    self.requests += 1
                    try:
                        url = f"{api}/api/v1/terminals/{ingest.PROBE}"
                        body = json.loads(ingest.api_get(url, self.token))
                    except (OSError, ValueError):
                        body = {}
                    if (body.get("last_seq") or 0) >= seq:
                        latency = time.monotonic() - started
                        break
                    time.sleep(PROBE_POLL_S)
                if self.stop.is_set() and math.isinf(latency):
                    break
                self.samples.append((sent_at, latency))
                self.stop.wait(PROBE_PAUSE_S)
        finally:
            c.disconnect()
            c.loop_stop()

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not any(math.isfinite(lat) for _, lat in self.samples):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the probe terminal never showed in the API")
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(PROBE_GIVE_UP_S + 5)

    def between(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """(sent at, latency) of the probes sent in [t0, t1)."""
        return [(sent, lat) for sent, lat in list(self.samples) if t0 <= sent < t1]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank on sorted `values`."""
    if not values:
        return None
    return values[max(0, math.ceil(q * len(values)) - 1)]


# -- one step --------------------------------------------------------------------------------------


@dataclass
class Step:
    size: int
    rate: float = 0.0
    window_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU-s per s (1.0 = one core)
    probes: list[float] = field(default_factory=list)  # sorted latencies, s
    slow_probes: list[tuple[float, float]] = field(default_factory=list)  # (s into window, s)
    probe_requests_per_s: float = 0.0
    sent: int = 0
    acked: int = 0
    stored: int = 0
    drain_s: float | None = None
    publisher_behind_max_s: float = 0.0
    alerts_paper_low: int = 0
    alerts_offline: int = 0
    first_docs_wait_s: float = 0.0
    lease_holder: str = ""
    notes: list[str] = field(default_factory=list)
    kept_up: bool = True

    @property
    def p99(self) -> float | None:
        return percentile(self.probes, 0.99)

    @property
    def held(self) -> bool:
        p99 = self.p99
        return p99 is not None and p99 < P99_LIMIT_S and self.kept_up and self.stored >= self.acked

    def server_cpu(self) -> float:
        return self.cpu["serve"] + self.cpu["broker"] + self.cpu["db"]

    def to_json(self) -> dict[str, Any]:
        def finite(v: float | None) -> float | None:
            return v if v is not None and math.isfinite(v) else None

        return {
            "size": self.size, "msg_per_s": self.rate, "window_s": self.window_s,
            "cpu_cores": self.cpu,
            "cpu_s_per_s_per_1000": {k: self.cpu[k] / (self.size / 1000) for k in
                                     ("serve", "broker", "db")} if self.size else None,
            "latency_s": {"p50": finite(percentile(self.probes, 0.5)), "p99": finite(self.p99),
                          "max": finite(self.probes[-1] if self.probes else None),
                          "probes": len(self.probes),
                          "not_seen_in_10s": sum(math.isinf(p) for p in self.probes)},
            "slow_probes": [[at, finite(lat)] for at, lat in self.slow_probes],
            "probe_requests_per_s": self.probe_requests_per_s,
            "sent": self.sent, "acked": self.acked, "stored": self.stored,
            "drain_s": self.drain_s, "kept_up": self.kept_up, "held": self.held,
            "publisher_behind_max_s": self.publisher_behind_max_s,
            "open_alerts": {"paper_low": self.alerts_paper_low,
                            "terminal_offline": self.alerts_offline},
            "expected_paper_low": len(range(0, self.size, LOW_EVERY)),
            "first_docs_wait_s": self.first_docs_wait_s, "lease_holder": self.lease_holder,
            "notes": self.notes,
        }  # fmt: skip


def wait_checking(stack: Stack, until: float) -> None:
    while (left := until - time.time()) > 0:
        stack.check_alive()
        time.sleep(min(left, 0.5))


def measure(stack: Stack, prober: Prober, step: Step, seconds: float, pids: list[int]) -> None:
    groups = stack.groups() | {"publishers": pids}
    before, t0 = cpu_snapshot(groups), time.time()
    requests0 = prober.requests
    wait_checking(stack, t0 + seconds)
    after, t1 = cpu_snapshot(groups), time.time()
    step.window_s = t1 - t0
    step.cpu = {k: (after[k] - before[k]) / step.window_s for k in before}
    known = sum(step.cpu[k] for k in ("serve", "broker", "db", "publishers", "bench"))
    step.cpu["other"] = max(0.0, step.cpu["machine"] - known)
    probes = prober.between(t0, t1)
    step.probes = sorted(lat for _, lat in probes)
    step.slow_probes = [(round(sent - t0, 1), lat) for sent, lat in probes if lat >= SLOW_S]
    if step.slow_probes:
        slow = ", ".join(f"{_ms(lat)} at +{at:.0f} s" for at, lat in step.slow_probes[:10])
        step.notes.append(f"probes of {SLOW_S * 1000:.0f} ms or more: {slow}")
    step.probe_requests_per_s = (prober.requests - requests0) / step.window_s
    step.lease_holder = stack.lease_holder()
    if len(stack.servers) > 1:
        each = ", ".join(
            f"{k.split()[1]}{' (lease)' if k.split()[1] == step.lease_holder else ''} {v:.1%}"
            for k, v in step.cpu.items()
            if k.startswith("serve ")
        )
        step.notes.append(f"fleet serve by replica: {each}")


def run_step(
    stack: Stack, prober: Prober, n: int, seq: list[int], args: argparse.Namespace
) -> Step:
    """Fleet size `n` at one report per terminal per interval; `seq[0]` is the next seq."""
    assert stack.broker is not None and stack.db is not None
    step = Step(n, rate=n / args.interval)
    first_seq = seq[0]
    start_at = time.time() + 0.5
    pubs = start_publishers(stack.broker.server_port, n, first_seq, args.interval, start_at)
    try:
        wait_checking(stack, start_at + args.interval + args.warmup)
        waited = time.monotonic()
        while stack.db.with_documents() < n:
            if time.monotonic() - waited > FIRST_DOCS_WAIT_S:
                step.notes.append("measured before every terminal had its first document")
                break
            wait_checking(stack, time.time() + 0.5)
        step.first_docs_wait_s = time.monotonic() - waited
        measure(stack, prober, step, args.seconds, [p.pid for p in pubs])
    finally:
        results = stop_publishers(pubs)
    step.sent = sum(r["sent"] for r in results)
    step.acked = sum(r["acked"] for r in results)
    step.rate = step.sent / max(1e-9, max(r["end"] for r in results) - start_at)
    step.publisher_behind_max_s = max(r["behind_max_s"] for r in results)
    seq[0] = max(r["next_seq"] for r in results)
    last_publish = max(r["end"] for r in results)
    if step.publisher_behind_max_s > 1.0:
        step.notes.append(
            f"the publishers fell up to {step.publisher_behind_max_s:.1f} s behind their "
            "schedule (the machine is saturated): the load offered was uneven"
        )
    if step.acked < step.sent:
        step.notes.append(f"the broker acknowledged {step.acked} of {step.sent} reports")
    while True:
        step.stored = stack.db.stored(first_seq)
        now = time.time()
        if step.stored >= step.acked:
            step.drain_s = max(0.0, now - last_publish)
            break
        if now - last_publish > LOSS_WAIT_S:
            break
        stack.check_alive()
        time.sleep(0.1)
    step.kept_up = step.drain_s is not None and step.drain_s <= args.drain_limit
    step.alerts_paper_low = stack.db.open_alerts("paper_low")
    step.alerts_offline = stack.db.open_alerts("terminal_offline")
    return step


def run_baseline(stack: Stack, prober: Prober, seconds: float) -> Step:
    step = Step(0)
    measure(stack, prober, step, seconds, [])
    return step


# -- printing --------------------------------------------------------------------------------------

HEADER = (
    f"{'size':>6} {'msg/s':>6} | {'serve':>6} {'broker':>6} {'db':>6} {'server':>6} | "
    f"{'serve/1k':>8} {'server/1k':>9} | {'pubs':>5} {'other':>5} {'box':>5} | "
    f"{'p50':>6} {'p99':>6} {'max':>6} {'probes':>6} | {'drain':>5} {'kept up':>7}"
)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return ">10 s" if math.isinf(v) else f"{v * 1000:.0f}ms"


def row(step: Step) -> str:
    c = step.cpu

    def per_k(cores: float) -> str:
        return f"{cores / (step.size / 1000):.3f}" if step.size else "-"

    drain = "-" if step.drain_s is None else f"{step.drain_s:.1f}s"
    kept = ("yes" if step.kept_up else "NO") if step.size else "-"
    return (
        f"{step.size:>6} {step.rate:>6.0f} | {c['serve']:>6.1%} {c['broker']:>6.1%} "
        f"{c['db']:>6.1%} {step.server_cpu():>6.1%} | {per_k(c['serve']):>8} "
        f"{per_k(step.server_cpu()):>9} | {c['publishers']:>5.0%} {c['other']:>5.0%} "
        f"{c['machine']:>5.0%} | {_ms(percentile(step.probes, 0.5)):>6} {_ms(step.p99):>6} "
        f"{_ms(step.probes[-1] if step.probes else None):>6} {len(step.probes):>6} | "
        f"{drain:>5} {kept:>7}"
    )


#: Warnings every run of this benchmark makes on purpose: dev-mode keys, and its terminals
#: registered on their first report (they have no accounts: they publish as the server's user).
EXPECTED = ("dev mode: made a new", "auto-registered")


def log_problems(stack: Stack) -> list[str]:
    """WARNING/ERROR lines and tracebacks in the servers' logs (they run at --log-level
    warning), but the expected ones; the first few of each replica."""
    out = []
    for s in stack.servers:
        path = s.data / "serve.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        bad = [
            ln
            for ln in lines
            if any(w in ln for w in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
            and not any(e in ln for e in EXPECTED)
        ]
        if bad:
            out.append(f"{s.data.name}/serve.log: {len(bad)} unexpected warning/error lines:")
            out += [f"    {ln[:220]}" for ln in bad[:8]]
    return out


# -- main ------------------------------------------------------------------------------------------


def _interrupted(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # so SIGTERM runs the same clean-up as Ctrl-C


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    data = Path(tempfile.mkdtemp(prefix="fleet-bench-capacity-"))
    os.chmod(data, 0o755)  # the broker drops to the mosquitto user
    try:
        yield data
    finally:
        if keep:
            print(f"kept {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_publish":
        publish_main(json.loads(sys.argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default="1000,2000,5000,10000,20000",
        help="fleet sizes, ascending (default 1000,2000,5000,10000,20000)",
    )
    p.add_argument("--seconds", type=float, default=30, help="measured window per size (30)")
    p.add_argument("--warmup", type=float, default=3, help="warm-up after one interval, s (3)")
    p.add_argument("--interval", type=int, default=10, help="status interval, s (10)")
    p.add_argument(
        "--baseline-seconds",
        type=float,
        default=10,
        help="idle server with the probe alone, s (10; 0: skip)",
    )
    p.add_argument(
        "--drain-limit",
        type=float,
        default=2.0,
        help="kept up: every report stored within this many s of the last publish (2)",
    )
    p.add_argument("--db", choices=("sqlite", "postgres"), default=None)
    p.add_argument("--replicas", type=int, default=1, help="fleet serve replicas (PostgreSQL)")
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument("--keep", action="store_true", help="keep the data folder (logs, databases)")
    args = p.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    db = args.db or ("postgres" if args.replicas > 1 else "sqlite")
    if args.replicas > 1 and db != "postgres":
        p.error("replicas need PostgreSQL")
    if db == "postgres" and not postgres.available():
        p.error(f"PostgreSQL not found in {postgres.BIN}")
    mode = f"{args.replicas} x fleet serve on {'SQLite' if db == 'sqlite' else 'PostgreSQL'}"
    signal.signal(signal.SIGTERM, _interrupted)

    steps: list[Step] = []
    failures: list[str] = []
    problems: list[str] = []
    print(f"mode: {mode}, embedded-config Mosquitto; {os.cpu_count()} CPUs on this machine, "
          f"shared with the publishers (and whatever else runs: 'other')\n"
          f"status every {args.interval} s per terminal, {args.seconds:.0f} s measured per size; "
          f"CPU in % of one core (box: the whole machine, {os.cpu_count()}00 % = all cores); "
          f"/1k = CPU-s/s per 1,000 terminals;\np99 = nearest rank over the window's probes (with "
          f"fewer than 100 probes, the slowest one)\n", flush=True)  # fmt: skip
    with workdir(args.keep) as data:
        stack = Stack(data, db, args.replicas, args.interval)
        prober: Prober | None = None
        try:
            stack.start()
            assert stack.broker is not None
            token = stack.servers[0].token()
            prober = Prober(stack.broker.server_port, [s.api for s in stack.servers], token)
            prober.start()
            print(HEADER, flush=True)
            if args.baseline_seconds > 0:
                steps.append(run_baseline(stack, prober, args.baseline_seconds))
                print(row(steps[-1]), flush=True)
                for note in steps[-1].notes:
                    print(f"       note: {note}")
            seq = [1]
            for n in sizes:
                step = run_step(stack, prober, n, seq, args)
                steps.append(step)
                print(row(step), flush=True)
                for note in step.notes:
                    print(f"       note: {note}")
                if step.stored < step.acked:
                    failures.append(f"{n} terminals: {step.acked - step.stored} of {step.acked} "
                                    f"acknowledged reports not stored")  # fmt: skip
                if not step.held:
                    break
        except KeyboardInterrupt:
            failures.append("interrupted")
        except Exception as e:  # reported, after the clean-up
            traceback.print_exc()
            failures.append(f"{type(e).__name__}: {e}")
        finally:
            if prober is not None:
                prober.close()
            kill_children()
            problems = log_problems(stack)
            stack.close()

    result = summary(mode, steps, args)
    result["failures"] = failures
    result["server_log"] = problems
    for line in problems:
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("PASS (no data lost)" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


def summary(mode: str, steps: list[Step], args: argparse.Namespace) -> dict[str, Any]:
    loaded = [s for s in steps if s.size]
    held = 0
    for s in loaded:
        if not s.held:
            break
        held = s.size
    print(f"\nlargest fleet with p99 < 1 s ({mode}): {held:,}" if held else
          f"\nlargest fleet with p99 < 1 s ({mode}): none of the sizes tried")  # fmt: skip
    for s in loaded:
        if not s.held:
            p99 = s.p99
            why = [f"p99 {_ms(p99)}"] if p99 is None or p99 >= P99_LIMIT_S else []
            why += [] if s.kept_up else ["the ingest fell behind"]
            why += ["reports lost"] if s.stored < s.acked else []
            print(f"{s.size:,} did not hold: {', '.join(why)}")
    estimate: dict[str, float] | None = None
    base = steps[0] if steps and steps[0].size == 0 else None
    top = next((s for s in reversed(loaded) if s.size == held), None)
    if held < GOAL and top is not None and base is not None:
        # Linear in the fleet size from the idle server to the largest size that held, each
        # process on its own (a slope below zero is noise: none).
        def at_goal(name: str) -> float:
            assert top is not None and base is not None
            slope = max(0.0, (top.cpu[name] - base.cpu[name]) / top.size)
            return base.cpu[name] + slope * GOAL

        serve = at_goal("serve")
        per_terminal = [s.server_cpu() / s.size for s in loaded if s.held]
        falling = len(per_terminal) > 1 and per_terminal[-1] < per_terminal[0]
        estimate = {"serve_cores": serve,
                    "server_cores": serve + at_goal("broker") + at_goal("db")}  # fmt: skip
        failed = any(not s.held for s in loaded)
        print(
            (
                f"{GOAL:,} terminals: not reached on this machine (largest held: {held:,}). "
                if failed
                else f"{GOAL:,} terminals: not tried in this run (every size tried held). "
            )
            + f"A straight line from the idle server through {top.size:,} terminals (an "
            f"estimate, not a measurement): fleet serve {estimate['serve_cores']:.2f} cores, "
            f"with broker and database {estimate['server_cores']:.2f} cores, at "
            f"{GOAL / args.interval:,.0f} msg/s"
            + (
                "; the CPU per terminal fell as the fleet grew in the sizes measured, so the "
                "line likely overstates it"
                if falling
                else ""
            )
        )
    elif held >= GOAL:
        print(f"{GOAL:,} terminals held on this machine")
    return {
        "mode": mode, "replicas": args.replicas,
        "db": args.db or ("postgres" if args.replicas > 1 else "sqlite"),
        "cpus": os.cpu_count(), "interval_s": args.interval, "window_s": args.seconds,
        "low_paper_share": 1 / LOW_EVERY, "steps": [s.to_json() for s in steps],
        "largest_held": held, "goal": GOAL, "goal_reached": held >= GOAL,
        "estimate_at_goal": estimate,
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
