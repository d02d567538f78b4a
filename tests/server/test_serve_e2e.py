"""End to end with real processes: `fleet serve` (its own Mosquitto, SQLite in a temp dir) and a
real `fleet-agent` with simulated devices, provisioned by `fleet terminals add`; the API shows what
the agent reports, a publish is visible through the API within the latency budget, a SIGKILLed
agent shows offline with reason `will`, and SIGTERM stops the server and its broker cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.mqtt_helpers import connect
from tests.services import mosquitto
from tests.services.ports import free_port

pytestmark = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")

BIN = Path(sys.executable).parent
#: Publish -> visible in the API; the issue's benchmark asks p99 < 1 s under load.
LATENCY_BUDGET_S = 2.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    data: Path
    url: str
    env: dict[str, str]
    token: str = ""

    def get(self, path: str) -> Any:
        # trust_env=False: a proxy set in the environment must not see loopback requests.
        r = httpx.get(
            self.url + path,
            headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
            timeout=5,
            trust_env=False,
        )
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("content-type", "") else r.text

    def fleet(self, *args: str) -> str:
        out = subprocess.run(
            [str(BIN / "fleet"), *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass  # not up yet
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[Server]:
    # /tmp, open to the `mosquitto` user the broker drops to (pytest's tmp_path is 0700).
    data = Path(tempfile.mkdtemp(prefix="fleet-e2e-"))
    os.chmod(data, 0o755)
    port = free_port()
    env = {
        **os.environ,
        "FLEET_DEV_MODE": "1",
        "FLEET_DATA_DIR": str(data),
        "FLEET_API_PORT": str(port),
        "FLEET_STATUS_INTERVAL_S": "2",
    }
    for name in ("FLEET_BROKER_URL", "FLEET_DATABASE_URL", "DATABASE_URL", "FLEET_CONFIG"):
        env.pop(name, None)
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "fleet"), "serve", "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    s = Server(proc, data, f"http://127.0.0.1:{port}", env)
    try:
        try:
            wait_until(lambda: s.get("/healthz")["status"] == "ok", 20, "fleet serve to be ready")
        except AssertionError:
            print((data / "serve.log").read_text(errors="replace")[-3000:])  # why it did not
            raise
        s.token = s.fleet("tokens", "create", "--role", "operator", "--name", "e2e").split()[0]
        yield s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _stop_broker(data)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def _stop_broker(data: Path) -> None:
    pid_file = data / "mosquitto" / "mosquitto.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


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
        alerts = s.get("/api/v1/alerts?state=active&terminal=T1")["items"]
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
