"""End to end with real processes: `fleet serve` (its own Mosquitto, SQLite in a temp dir) and a
real `fleet-agent` with simulated devices, provisioned by `fleet terminals add`; the API shows what
the agent reports, a publish is visible through the API within the latency budget, a SIGKILLed
agent shows offline with reason `will`, and SIGTERM stops the server and its broker cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.server.alerts.rules import WILL_OFFLINE_GRACE_S
from tests.server.mqtt_helpers import connect
from tests.services import mosquitto
from tests.services.fleet_server import BIN, Server, wait_until

pytestmark = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")

#: Publish -> visible in the API; the issue's benchmark asks p99 < 1 s under load.
LATENCY_BUDGET_S = 2.0


def provision(s: Server, terminal: str) -> Path:
    path = s.data / f"{terminal}.toml"
    s.fleet(
        "terminals",
        "add",
        terminal,
        "--site",
        "WH-HALL",
        "--model",
        "sim",
        "--data-dir",
        str(s.data),
        "--out",
        str(path),
        "--no-config-key",
    )
    text = path.read_text()
    text = re.sub(r"^data_dir = .*$", f'data_dir = "{s.data / terminal}"', text, flags=re.M)
    text = re.sub(r"^status_interval_s = .*$", "status_interval_s = 2", text, flags=re.M)
    path.write_text(text)
    return path


def password_of(config: Path) -> str:
    found = re.search(r'^password = "(.*)"$', config.read_text(), flags=re.M)
    assert found is not None
    return found.group(1)


def test_agent_to_api_latency_will_and_clean_shutdown(server: Server) -> None:
    s = server
    t1, t2 = provision(s, "T1"), provision(s, "T2")
    agent = subprocess.Popen(
        [str(BIN / "fleet-agent"), "run", "--config", str(t1)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        detail = wait_until(
            lambda: (d := s.get("/api/v1/terminals/T1"))["printer_state"] and d["online"] and d,
            15,
            "the agent's status in the API",
        )
        assert detail["site"] == "WH-HALL" and detail["paper_pct"] is not None

        # Publish -> API latency, measured on a report whose seq we choose (terminal T2).
        port = int(re.search(r"mqtt://127.0.0.1:(\d+)", t2.read_text()).group(1))  # type: ignore[union-attr]
        client = connect(port, "T2", password_of(t2), client_id="T2")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        report = {
            "v": 1,
            "seq": 41,
            "ts": now,
            "agent": "e2e",
            "printer": {
                "driver": "sim",
                "state": "idle",
                "reasons": ["media-low"],
                "paper": {"level_pct": 12},
            },
            "reader": {"driver": "sim", "state": "ok"},
        }
        started = time.monotonic()
        client.publish("fleet/v1/t/T2/status", json.dumps(report))
        wait_until(lambda: s.get("/api/v1/terminals/T2")["last_seq"] == 41, 5, "T2's report")
        latency = time.monotonic() - started
        client.close()
        assert latency < LATENCY_BUDGET_S, f"publish to API took {latency:.2f} s"
        print(f"publish-to-API latency {latency * 1000:.0f} ms")

        metrics = {
            (smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for f in text_string_to_metric_families(s.get("/metrics"))
            for smp in f.samples
        }
        assert metrics[("fleet_ingest_messages_total", (("result", "stored"),))] >= 2

        agent.send_signal(signal.SIGKILL)
        agent.wait()
        gone = wait_until(
            lambda: not (d := s.get("/api/v1/terminals/T1"))["online"] and d, 10, "T1 offline"
        )
        assert gone["presence"]["reason"] == "will"
        # Alerted once it is not back within the Will's grace (an agent restarted by systemd is).
        assert s.get("/api/v1/alerts?state=active&terminal=T1")["items"] == []
        alerts = wait_until(
            lambda: s.get("/api/v1/alerts?state=active&terminal=T1")["items"],
            WILL_OFFLINE_GRACE_S + 5,
            "the offline alert",
        )
        assert [a["rule"] for a in alerts] == ["terminal_offline"]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    pid = int((s.data / "mosquitto" / "mosquitto.pid").read_text())
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=15) == 0
    assert not (s.data / "mosquitto" / "mosquitto.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
