"""What the fault tests drive: a publisher that notes every report the broker acknowledged, and
what the database stored of them."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.services import postgres

TERMINALS = [f"F-{i:03d}" for i in range(40)]
RATE = 250.0


class Publisher:
    """Reports round-robin over TERMINALS as the server's user; records what the broker took."""

    def __init__(
        self,
        port: int,
        user: str,
        password: str,
        first: int = 0,
        terminals: list[str] = TERMINALS,
        rate: float = RATE,
    ) -> None:
        self.terminals, self.rate = terminals, rate
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
            ahead = (n - first) / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            tid = self.terminals[n % len(self.terminals)]
            seq = n // len(self.terminals) + 1
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
