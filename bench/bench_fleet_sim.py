"""Fleet simulator benchmark: the highest N `fleet-sim` sustains at a 10 s status interval.

    .venv/bin/python bench/bench_fleet_sim.py                         # 1000 … 15000 terminals
    .venv/bin/python bench/bench_fleet_sim.py --steps 200,500 --windows 1   # quick check
    .venv/bin/python bench/bench_fleet_sim.py --json bench/results/fleet_sim.json

For each N: a fresh real Mosquitto on loopback (password file with N terminals written by the
simulator's own hashing, the terminal ACL, its fd limit raised), `fleet-sim --terminals N` as a
separate process, and a subscriber logged in as `fleet-server` on `fleet/v1/t/+/{status,event,
presence}` counting what arrives. After every terminal is online (its retained presence seen) and
one interval of warm-up, it measures `--windows` intervals.

"Sustained" means every terminal connected and at least 99 % of the periodic reports due in the
measured span arrived in it: each terminal reports exactly once per interval, so a span of W
intervals holds W reports per terminal whatever its phase; a simulator that falls behind spaces its
reports wider and delivers fewer. Steps stop at the first N not sustained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agent.sim import credentials  # noqa: E402 - after the path set-up, like bench_seal.py
from agent.sim.sites import layout  # noqa: E402
from tests.services import mosquitto  # noqa: E402

SERVER_PASSWORD = "bench-server-secret"
TEMPLATE = "bench-{id}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET = 5000


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Counter:
    """The fleet server's view: presence per terminal, statuses per terminal and their seq."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.online: set[str] = set()
        self.last_seq: dict[str, int] = {}
        self.seq_faults = 0
        self.span: tuple[float, float] | None = None
        self.in_span: dict[str, int] = {}
        self.status_in_span = 0
        self.events_in_span = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set("fleet-server", SERVER_PASSWORD)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"fleet/v1/t/+/{k}", 1) for k in ("status", "event", "presence")])
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the counting subscriber got no SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        _, _, _, tid, kind = msg.topic.split("/")
        with self.lock:
            counting = self.span is not None and self.span[0] <= now < self.span[1]
            if kind == "status":
                seq = json.loads(msg.payload)["seq"]
                if tid in self.last_seq and seq != self.last_seq[tid] + 1:
                    self.seq_faults += 1
                self.last_seq[tid] = seq
                if counting:
                    self.status_in_span += 1
                    self.in_span[tid] = self.in_span.get(tid, 0) + 1
            elif kind == "event":
                if counting:
                    self.events_in_span += 1
            elif json.loads(msg.payload)["online"]:
                self.online.add(tid)
            else:
                self.online.discard(tid)

    def count_online(self) -> int:
        with self.lock:
            return len(self.online)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Row:
    terminals: int
    connected: int
    connect_s: float
    status_per_s: float
    msgs_per_s: float
    delivered_pct: float
    seq_faults: int
    sim_cpu_pct: float
    sim_rss_mb: float
    broker_cpu_pct: float
    sim_max_lag_s: float
    sustained: bool


def start_broker(ids: list[str], workdir: Path) -> mosquitto.Broker:
    broker = mosquitto.Broker(users={"fleet-server": SERVER_PASSWORD})
    # One mosquitto_passwd call per user would take minutes: append the simulator's own hashes.
    credentials.write_passwd(
        broker.dir / "passwd", credentials.from_template(TEMPLATE, ids), append=True
    )
    # The broker inherits this process's RLIMIT_NOFILE (raised in main) across Popen.
    return broker.start()


def wait_until(check: Any, timeout_s: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return bool(check())


def run_step(n: int, args: argparse.Namespace, workdir: Path) -> Row:
    ids = [s.terminal_id for s in layout(n)]
    broker = start_broker(ids, workdir)
    assert broker.proc is not None
    broker_pid = broker.proc.pid
    counter = Counter(broker.port)
    interval = args.interval
    measure_s = args.windows * interval
    bound_s = args.connect_timeout + interval + measure_s + 30  # the simulator stops by itself
    summary_path = workdir / f"summary-{n}.json"
    log = open(workdir / f"sim-{n}.log", "wb")  # noqa: SIM115 - closed below
    sim = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent.sim", "--terminals", str(n), "--broker", broker.url),
            *("--password-template", TEMPLATE, "--status-interval", str(interval)),
            *("--duration", str(bound_s), "--seed", "1", "--summary", str(summary_path)),
            *("--stats-interval", "5"),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        t0 = time.monotonic()
        all_on = wait_until(lambda: counter.count_online() >= n, args.connect_timeout, sim)
        connect_s = time.monotonic() - t0
        connected = counter.count_online()
        if all_on:
            time.sleep(interval)  # every terminal's jittered first report is out
        start = time.monotonic()
        with counter.lock:
            counter.span = (start, start + measure_s)
        sim_cpu0, broker_cpu0 = cpu_seconds(sim.pid), cpu_seconds(broker_pid)
        time.sleep(measure_s + 0.5)  # the half second lets the last reports of the span land
        alive = sim.poll() is None
        sim_cpu = cpu_seconds(sim.pid) - sim_cpu0 if alive else float("nan")
        broker_cpu = cpu_seconds(broker_pid) - broker_cpu0
        rss = rss_mb(sim.pid) if alive else float("nan")
        connected = min(connected, counter.count_online())
    finally:
        if sim.poll() is None:
            sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        log.close()
        counter.close()
        broker.close()

    summary: dict[str, Any] = {}
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
    with counter.lock:
        delivered = sum(min(c, args.windows) for c in counter.in_span.values())
        status_n, events_n, faults = (
            counter.status_in_span,
            counter.events_in_span,
            counter.seq_faults,
        )
    delivered_pct = 100.0 * delivered / (n * args.windows)
    return Row(
        terminals=n,
        connected=connected,
        connect_s=round(connect_s, 1),
        status_per_s=round(status_n / measure_s, 1),
        msgs_per_s=round((status_n + events_n) / measure_s, 1),
        delivered_pct=round(delivered_pct, 2),
        seq_faults=faults,
        sim_cpu_pct=round(100.0 * sim_cpu / measure_s, 1),
        sim_rss_mb=round(rss, 1),
        broker_cpu_pct=round(100.0 * broker_cpu / measure_s, 1),
        sim_max_lag_s=round(float(summary.get("max_lag_s", float("nan"))), 2),
        sustained=connected == n and delivered_pct >= 99.0,
    )


def raise_own_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", default="1000,2500,5000,7500,10000,15000", help="terminal counts")
    p.add_argument("--interval", type=float, default=10.0, help="status interval, seconds")
    p.add_argument("--windows", type=int, default=2, help="intervals measured per step")
    p.add_argument("--connect-timeout", type=float, default=90.0)
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args()
    if not mosquitto.available():
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    steps = sorted(int(x) for x in args.steps.split(","))
    limit = raise_own_fd_limit()
    if steps[-1] + 200 > limit:
        print(f"RLIMIT_NOFILE hard limit {limit} is too low for {steps[-1]}", file=sys.stderr)
        return 2
    print(
        f"fleet-sim benchmark: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, interval {args.interval:g}s, {args.windows} windows/step, "
        f"fd limit {limit}",
        flush=True,
    )
    header = (
        f"{'N':>6} {'connected':>9} {'conn s':>6} {'status/s':>8} {'msgs/s':>7} "
        f"{'on time':>7} {'seq!':>4} {'sim CPU':>7} {'sim RSS':>7} {'broker':>6} {'lag':>5}"
        "  sustained"
    )
    print(header, flush=True)
    rows: list[Row] = []
    best = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        for n in steps:
            row = run_step(n, args, Path(tmp))
            rows.append(row)
            print(
                f"{row.terminals:>6} {row.connected:>9} {row.connect_s:>6.1f} "
                f"{row.status_per_s:>8.1f} {row.msgs_per_s:>7.1f} {row.delivered_pct:>6.2f}% "
                f"{row.seq_faults:>4} {row.sim_cpu_pct:>6.1f}% {row.sim_rss_mb:>5.0f}MB "
                f"{row.broker_cpu_pct:>5.1f}% {row.sim_max_lag_s:>5.2f}  "
                f"{'yes' if row.sustained else 'NO'}",
                flush=True,
            )
            if not row.sustained:
                break
            best = n
    elapsed = time.monotonic() - started
    verdict = "meets" if best >= TARGET else "misses"
    print(
        f"highest sustained N at a {args.interval:g}s status interval: {best} "
        f"({verdict} the {TARGET} target; run took {elapsed:.0f}s)",
        flush=True,
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "interval_s": args.interval,
            "windows": args.windows,
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "highest_sustained": best,
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
