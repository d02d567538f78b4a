"""Ingest benchmark: the default stack against a bare paho subscriber on the same broker, one run.

    .venv/bin/python bench/bench_ingest.py                 # 60,000 reports, then 10 s at 5,000/s
    .venv/bin/python bench/bench_ingest.py --messages 20000 --rate 1000 --seconds 5

The broker is the server's own (`EmbeddedBroker`: its generated config, ACL and queue limits), on
loopback. Publishers are separate processes (one paho client tops out near 10k msg/s).
1. Raw: a bare paho-mqtt v5 subscriber (QoS 1, persistent session, auto-ack) on
   `fleet/v1/t/+/status` drains N status reports of `--terminals` terminals that the broker
   queued for it while it was away. Rate = N / (reconnect .. last message).
2. Ingest: `fleet serve --broker-url` (SQLite, the real ingest and API) drains the same N reports
   (new seqs) queued for its session while it was stopped. Rate from the stored counter of
   `fleet_ingest_messages_total`, polled every 50 ms. Draining a backlog keeps the publishers,
   which share the two cores, out of both measurements, so the ratio compares consumers only.
3. Live: reports published at `--rate` for `--seconds` while a probe terminal publishes one report
   every 100 ms and polls the API for it: publish-to-API latency (p50/p99/max), and whether the
   ingest kept up (done within 1 s of the last publish).

FAIL (exit 1) when the database holds fewer reports than were published (counted in the SQLite
file, not from the counters), the ingest rate is under 50 % of the raw rate or under 5,000 msg/s,
the live phase fell behind, or p99 latency is 1 s or more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet.server.broker import EmbeddedBroker, free_port  # noqa: E402

BIN = Path(sys.executable).parent
USER, PASSWORD = "fleet-server", "bench-" + os.urandom(12).hex()
PROBE = "PROBE-1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def status_payload(seq: int, printer_state: str = "idle") -> bytes:
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return json.dumps(
        {
            "v": 1,
            "seq": seq,
            "ts": now,
            "agent": "bench",
            "printer": {
                "driver": "sim",
                "state": printer_state,
                "reasons": [],
                "paper": {"level_pct": 50 + seq % 40, "sheets_left": 250, "capacity": 500},
                "toner_pct": 60,
                "pages_total": seq,
            },
            "reader": {"driver": "sim", "state": "ok", "card_present": False},
            "host": {"uptime_s": seq, "disk_free_mb": 5120},
        }
    ).encode()


def client(port: int, client_id: str, connect: bool = True) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(USER, PASSWORD)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    if connect:
        c.connect("127.0.0.1", port, keepalive=60)
    return c


# -- the publisher process -------------------------------------------------------------------------


def publish_main(
    port: int, count: int, terminals: int, first_seq: int, rate: float, offset: int, password: str
) -> None:
    """Publish `count` reports round-robin over `terminals` (ids from `offset`), at `rate` msg/s
    (0: as fast as the broker takes them); print the start and end times."""
    global PASSWORD
    PASSWORD = password
    c = client(port, f"bench-pub-{os.getpid()}")
    c.loop_start()
    ids = [f"B-{offset + i:04d}" for i in range(terminals)]
    topics = [f"fleet/v1/t/{tid}/status" for tid in ids]
    # Built beforehand when unpaced, so the publisher is not what limits the rate.
    payloads = (
        [status_payload(first_seq + n // terminals) for n in range(count)] if not rate else []
    )
    print(f"start {time.time()}", flush=True)
    started = time.monotonic()
    info = None
    for n in range(count):
        if rate:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0.001:
                time.sleep(ahead)
            payload = status_payload(first_seq + n // terminals)
        else:
            payload = payloads[n]
        info = c.publish(topics[n % terminals], payload, qos=1)
    if info is not None:
        info.wait_for_publish(120)
    print(f"done {time.time()}", flush=True)
    c.disconnect()
    c.loop_stop()


def run_publishers(
    port: int, count: int, terminals: int, first_seq: int, rate: float = 0.0, procs: int = 2
) -> list[subprocess.Popen[str]]:
    """`procs` publisher processes sharing the work (one paho client tops out near 10k msg/s)."""
    share, per = count // procs, terminals // procs
    return [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "_publish",
                str(port),
                str(share),
                str(per),
                str(first_seq),
                str(rate / procs),
                str(i * per),
                PASSWORD,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(procs)
    ]


def publisher_times(procs: list[subprocess.Popen[str]]) -> tuple[float, float]:
    starts, ends = [], []
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        times = dict(line.split() for line in out.splitlines() if line)
        starts.append(float(times["start"]))
        ends.append(float(times["done"]))
    return min(starts), max(ends)


# -- throughput: draining the same backlog --------------------------------------------------------
# Both consumers are measured draining a backlog the broker queued for their persistent session
# while they were away, so the publishers (which share the two cores) are not running meanwhile.


def raw_rate(port: int, count: int, terminals: int) -> dict[str, float]:
    """A bare paho subscriber (QoS 1, persistent session, auto-ack) drains `count` reports."""
    received = 0
    last = 0.0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, _m: mqtt.MQTTMessage) -> None:
        nonlocal received, last
        received += 1
        last = time.time()
        if received >= count:
            done.set()

    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    sub = client(port, "bench-raw", connect=False)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port, clean_start=True, properties=props)
    sub.loop_start()
    sub.subscribe("fleet/v1/t/+/status", qos=1)
    subscribed.wait(5)
    sub.disconnect()
    sub.loop_stop()
    publisher_times(run_publishers(port, count, terminals, first_seq=1))
    sub = client(port, "bench-raw", connect=False)
    sub.on_message = on_message
    start = time.time()
    sub.connect("127.0.0.1", port, clean_start=False, properties=props)
    sub.loop_start()
    done.wait(120)
    sub.disconnect()
    sub.loop_stop()
    return {"received": received, "seconds": last - start, "rate": received / (last - start)}


def api_get(url: str, token: str = "") -> bytes:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with _OPENER.open(req, timeout=5) as r:
        body: bytes = r.read()
        return body


def stored_count(api: str) -> int:
    # The server inherits FLEET_METRICS_TOKEN from this environment, if it is set.
    scrape = api_get(api + "/metrics", os.environ.get("FLEET_METRICS_TOKEN", ""))
    for line in scrape.decode().splitlines():
        if line.startswith('fleet_ingest_messages_total{result="stored"}'):
            return int(float(line.split()[-1]))
    return 0


class Server:
    """`fleet serve` against the benchmark's broker, SQLite in `data`."""

    def __init__(self, port: int, data: Path) -> None:
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.data = data
        self.env = {
            **os.environ,
            "FLEET_DEV_MODE": "1",
            "FLEET_DATA_DIR": str(data / "server"),
            "FLEET_API_PORT": str(self.api_port),
            "FLEET_BROKER_URL": f"mqtt://127.0.0.1:{port}",
            "FLEET_BROKER_ADMIN_PASSWORD": PASSWORD,
        }
        for name in ("DATABASE_URL", "FLEET_DATABASE_URL", "FLEET_CONFIG"):
            self.env.pop(name, None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        with (self.data / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "fleet"), "serve", "--log-level", "warning"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            deadline = time.monotonic() + 30
            while not self.ready():
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"fleet serve did not start; see {self.data / 'serve.log'}")
                time.sleep(0.05)

    def ready(self) -> bool:
        try:
            return bool(json.loads(api_get(self.api + "/healthz")).get("status") == "ok")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def token(self) -> str:
        return subprocess.run(
            [str(BIN / "fleet"), "tokens", "create", "--role", "operator", "--name", "bench"],
            env=self.env, capture_output=True, text=True, check=True,
        ).stdout.split()[0]  # fmt: skip


def stack_drain(server: Server, port: int, count: int, terminals: int) -> dict[str, float]:
    """The ingest drains `count` reports queued for its session while it was stopped."""
    server.stop()
    publisher_times(run_publishers(port, count, terminals, first_seq=1_000_000))
    server.start(wait=False)
    first: tuple[float, int] | None = None
    last_t, last_n = time.time(), -1
    give_up = time.time() + 120
    while time.time() - last_t < 10 and time.time() < give_up:
        try:
            n = stored_count(server.api)
        except OSError:
            time.sleep(0.01)
            continue
        now = time.time()
        if first is None:
            first = (now, n)
        if n != last_n:
            last_t, last_n = now, n
        if n >= count:
            break
        # Not faster: each scrape costs the server's event loop a few milliseconds.
        time.sleep(0.05)
    assert first is not None
    t0, n0 = first
    seconds = last_t - t0
    return {"seconds": seconds, "rate": (last_n - n0) / seconds if seconds > 0 else 0.0}


# -- latency: paced publishing ---------------------------------------------------------------------


def probe_latencies(
    port: int, api: str, token: str, stop: threading.Event, out: list[float]
) -> None:
    """Publish a probe report every 100 ms and time until the API shows it."""
    c = client(port, "bench-probe")
    c.loop_start()
    seq = 0
    while not stop.is_set():
        seq += 1
        started = time.monotonic()
        c.publish(f"fleet/v1/t/{PROBE}/status", status_payload(seq), qos=1)
        while time.monotonic() - started < 10:
            body = json.loads(api_get(f"{api}/api/v1/terminals/{PROBE}", token) or b"{}")
            if body.get("last_seq") == seq:
                out.append(time.monotonic() - started)
                break
            time.sleep(0.02)
        stop.wait(0.1)
    c.disconnect()
    c.loop_stop()


def paced(
    server: Server, port: int, token: str, rate: float, seconds: float, terminals: int
) -> dict[str, Any]:
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(
        target=probe_latencies, args=(port, server.api, token, stop, latencies)
    )
    count = int(rate * seconds)
    before = stored_count(server.api)
    prober.start()
    start, published_end = publisher_times(
        run_publishers(port, count, terminals, 2_000_000, rate=rate, procs=1)
    )
    end = time.time()
    while time.time() - end < 30:
        if stored_count(server.api) - before - len(latencies) >= count:
            break
        time.sleep(0.05)
    drained = time.time()
    stop.set()
    prober.join()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
    return {
        "published": count,
        "publish_rate": count / (published_end - start),
        "drain_after_publish_s": max(0.0, drained - published_end),
        "latency_probes": len(latencies),
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p99_s": p99,
        "latency_max_s": latencies[-1] if latencies else None,
    }


def stored_in_db(data: Path, lo: int, hi: int) -> int:
    db = sqlite3.connect(data / "server" / "fleet.sqlite3")
    try:
        row = db.execute(
            "SELECT COUNT(*) FROM status_sample WHERE terminal_id LIKE 'B-%' AND seq >= ? "
            "AND seq < ?",
            (lo, hi),
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_publish":
        port, count, terminals, first_seq = (int(x) for x in sys.argv[2:6])
        rate, offset = float(sys.argv[6]), int(sys.argv[7])
        publish_main(port, count, terminals, first_seq, rate, offset, sys.argv[8])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=60_000)
    p.add_argument("--terminals", type=int, default=100)
    p.add_argument("--rate", type=float, default=5000, help="live phase, msg/s (default 5000)")
    p.add_argument("--seconds", type=float, default=10, help="live phase length (default 10)")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()

    data = Path(tempfile.mkdtemp(prefix="fleet-bench-ingest-"))
    os.chmod(data, 0o755)  # the broker drops to the mosquitto user
    broker = EmbeddedBroker(data / "mosquitto", server_user=USER, server_password=PASSWORD)
    broker.start()
    server = Server(broker.server_port, data)
    try:
        raw = raw_rate(broker.server_port, args.messages, args.terminals)
        print(f"raw paho subscriber: {raw['received']} msgs in {raw['seconds']:.2f} s = "
              f"{raw['rate']:,.0f} msg/s", flush=True)  # fmt: skip
        server.start()
        token = server.token()
        # The probe terminal registers before the load.
        c = client(broker.server_port, "bench-warmup")
        c.loop_start()
        c.publish(f"fleet/v1/t/{PROBE}/status", status_payload(0), qos=1).wait_for_publish(5)
        c.disconnect()
        c.loop_stop()
        drain = stack_drain(server, broker.server_port, args.messages, args.terminals)
        while not server.ready():
            time.sleep(0.05)
        live = paced(server, broker.server_port, token, args.rate, args.seconds, args.terminals)
        server.stop()
        drain["stored"] = stored_in_db(data, 1_000_000, 2_000_000)
        live["stored"] = stored_in_db(data, 2_000_000, 3_000_000)
    finally:
        server.stop()
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)
    ratio = drain["rate"] / raw["rate"] if raw["rate"] else 0.0
    p99 = live["latency_p99_s"]
    print(
        f"fleet ingest (SQLite): {drain['stored']}/{args.messages} stored, "
        f"{drain['rate']:,.0f} msg/s\n"
        f"ratio to raw: {ratio:.0%} (target >= 50 %)\n"
        f"live at {live['publish_rate']:,.0f} msg/s for {args.seconds:.0f} s: {live['stored']}/"
        f"{live['published']} stored, done {live['drain_after_publish_s']:.2f} s after the "
        f"last publish\n"
        f"publish-to-API latency over {live['latency_probes']} probes: "
        f"p50 {live['latency_p50_s'] or 0:.3f} s, p99 {p99 or 0:.3f} s "
        f"(target < 1 s), max {live['latency_max_s'] or 0:.3f} s"
    )
    failures = []
    for name, phase, n in (("drain", drain, args.messages), ("live", live, live["published"])):
        if phase["stored"] != n:
            failures.append(f"{name}: published {n} != stored {phase['stored']}")
    if ratio < 0.5:
        failures.append(f"ratio {ratio:.0%} < 50 %")
    if drain["rate"] < 5000:
        failures.append(f"ingest {drain['rate']:,.0f} msg/s < 5,000")
    if live["drain_after_publish_s"] > 1.0:
        failures.append(f"live rate not kept up with ({live['drain_after_publish_s']:.1f} s late)")
    if p99 is None or p99 >= 1.0:
        failures.append(f"p99 latency {p99} >= 1 s")
    result = {"messages": args.messages, "terminals": args.terminals, "raw": raw,
              "ingest": drain, "live": live, "ratio": ratio, "failures": failures}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
