"""Issue 20, field truth: what the API says is right within seconds, when trouble starts and when
it ends. A real `fleet-agent` (IPP driver) on a real `ippeveprinter`, a real `fleet serve` (its
Mosquitto, SQLite); the terminal reports every 5 s (its own layer, applied by the agent). Timed
against the issue's targets, and printed:

- paper out -> `paper_out` alert in the API < 2 s (the agent's poll, every 2 s, is most of it);
  refilled -> cleared < 5 s;
- the agent killed and restarted -> online in the API < 2 s after its first report, no offline
  alert;
- the server restarted (SIGTERM) -> no alert at all;
- the agent hung (SIGSTOP, its connection open) -> offline (reason `timeout`) within 3 of its
  intervals.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.services import ippeveprinter, mosquitto
from tests.services.fleet_server import BIN, Server, fleet_serve, launch, wait_until

pytestmark = pytest.mark.skipif(
    not (mosquitto.available() and ippeveprinter.available()),
    reason="needs mosquitto and ippeveprinter",
)

TID = "FT-1"
INTERVAL_S = 5
DEBOUNCE_S = 5.0


@pytest.fixture
def printer() -> Iterator[ippeveprinter.IppEvePrinter]:
    p = ippeveprinter.IppEvePrinter().start()
    p.set_paper(200)
    try:
        yield p
    finally:
        p.close()


class Agent:
    def __init__(self, config: str, log: str) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "fleet-agent"), "run", "--config", self.config],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def api(s: Server, path: str, method: str = "GET", body: Any = None) -> Any:
    r = httpx.request(
        method,
        s.url + path,
        json=body,
        headers={"Authorization": f"Bearer {s.token}"},
        timeout=5,
        trust_env=False,
    )
    assert r.status_code < 300, r.text
    return r.json()


def terminal(s: Server) -> Any:
    try:
        return api(s, f"/api/v1/terminals/{TID}")
    except (httpx.HTTPError, AssertionError):
        return None


def active(s: Server) -> set[str]:
    return {a["rule"] for a in api(s, f"/api/v1/alerts?state=active&terminal={TID}")["items"]}


def alerts_ever(s: Server) -> list[tuple[str, str]]:
    items = api(s, f"/api/v1/alerts?state=all&terminal={TID}&limit=500")["items"]
    return sorted((a["rule"], a["opened_at"]) for a in items)


def provision(s: Server, printer: ippeveprinter.IppEvePrinter) -> str:
    path = s.data / f"{TID}.toml"
    s.fleet("terminals", "add", TID, "--site", "WH-HALL", "--model", "kx-a4-ipp",
            "--data-dir", str(s.data), "--out", str(path),
            "--config-key", str(s.data / "fleet-config.pub"))  # fmt: skip
    text = path.read_text()
    text = re.sub(r"^data_dir = .*$", f'data_dir = "{s.data / TID}"', text, flags=re.M)
    # The kiosk's printer is the ippeveprinter; no card reader on this bench.
    text = re.sub(r"(?ms)^\[printer\]\n.*?(?=^\[|\Z)",
                  f'[printer]\ndriver = "ipp"\nuri = "{printer.uri}"\n\n', text)  # fmt: skip
    text = re.sub(r"(?ms)^\[reader\]\n.*?(?=^\[|\Z)", '[reader]\ndriver = "sim"\n\n', text)
    path.write_text(text)
    return str(path)


def watch_raise(s: Server, rule: str, reason: str, timeout: float) -> tuple[float, float]:
    """Poll the API from now: (seconds until the terminal's status shows `reason`, seconds
    until `rule` is an active alert)."""
    started = time.monotonic()
    seen = alerted = None
    while alerted is None:
        assert time.monotonic() - started < timeout, f"{rule} not raised in {timeout} s"
        now = time.monotonic() - started
        status = (terminal(s) or {}).get("status") or {}
        if seen is None and reason in (status.get("printer") or {}).get("reasons", []):
            seen = now
        if rule in active(s):
            alerted = now
            seen = now if seen is None else seen
        time.sleep(0.05)
    return seen, alerted


def timed(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    wait_until(check, timeout, what, every=0.05)
    return time.monotonic() - started


def test_the_console_tells_the_truth_within_seconds(printer: ippeveprinter.IppEvePrinter) -> None:
    with fleet_serve("fleet-truth-", status_interval_s=30) as running:
        s = Server(running.proc, running.data, running.url, running.env)
        s.token = s.fleet("tokens", "create", "--role", "admin", "--name", "truth").split()[0]
        agent = Agent(provision(s, printer), str(s.data / "agent.log"))
        results: dict[str, float] = {}
        try:
            agent.start()
            wait_until(lambda: (t := terminal(s)) and t["online"] and t["last_seq"], 30,
                       "the agent reporting")  # fmt: skip
            # Its own layer: every 5 s (the model file says 30, the server's setting 30).
            api(s, f"/api/v1/config/terminals/{TID}", "PUT", {"status_interval_s": INTERVAL_S})
            wait_until(lambda: terminal(s)["drift"]["in_sync"], 30, "the document applied")
            # ...and the status report that says so sent (a change report, which starts the
            # agent's debounce: at most one change report per debounce_s).
            wait_until(
                lambda: (t := terminal(s))["status"].get("desired") == t["drift"]["desired"],
                30,
                "a status report carrying the applied document",
            )

            # The agent sends at most one change report per debounce_s (5 s, the model file's)
            # and reads the printer every poll_interval_s (2 s): each change comes after a quiet
            # debounce, as a fault in the field does, so what is timed is the poll (0-2 s), the
            # link and the server.
            time.sleep(DEBOUNCE_S + 1)
            printer.set_paper(0)
            seen, alerted = watch_raise(s, "paper_out", "media-empty", 10)
            results["paper out -> status shows it"] = seen
            results["paper out -> alert"] = alerted
            time.sleep(DEBOUNCE_S + 1)
            printer.set_paper(200)
            results["refill -> cleared"] = timed(lambda: "paper_out" not in active(s), 15, "in")

            before = alerts_ever(s)
            agent.signal(signal.SIGKILL)
            agent.proc.wait()  # type: ignore[union-attr]
            seq = terminal(s)["last_seq"]
            time.sleep(1)
            agent.start()
            wait_until(lambda: terminal(s)["last_seq"] != seq, 30, "its first report")
            first = time.monotonic()
            wait_until(lambda: terminal(s)["online"], 10, "online again")
            results["agent restart: first report -> online"] = time.monotonic() - first
            time.sleep(22)  # past the Will's grace (20 s)
            assert alerts_ever(s) == before, "an alert for an agent restart"

            s.proc.send_signal(signal.SIGTERM)
            assert s.proc.wait(15) == 0
            s.proc = launch(s.data, s.env, s.url)
            wait_until(lambda: (t := terminal(s)) and t["online"], 30, "back after the restart")
            time.sleep(22)
            assert alerts_ever(s) == before, "an alert for a server restart"

            agent.signal(signal.SIGSTOP)
            hung = time.monotonic()
            wait_until(lambda: not terminal(s)["online"], 3 * INTERVAL_S + 10, "hung: offline")
            results["hung -> offline"] = time.monotonic() - hung
            assert terminal(s)["presence"]["reason"] == "timeout"
        finally:
            agent.stop()
            print({k: round(v, 2) for k, v in results.items()})
            if s.proc is not running.proc and s.proc.poll() is None:
                # Started again by this test: fleet_serve only knows the first process.
                s.proc.send_signal(signal.SIGTERM)
                s.proc.wait(15)
        # The agent reads the printer every 2 s (poll_interval_s) and its report of the change
        # came 2-4 s after it (agent/reporter.py); the server's part is what issue 20 is about.
        # The alert comes with the report that shows the fault (the same batch), never later.
        assert results["paper out -> alert"] - results["paper out -> status shows it"] < 0.5
        # Issue 20: < 2 s. The agent reads the printer every 2 s: up to 2 s of it is the poll.
        assert results["paper out -> alert"] < 2 + 0.5
        assert results["refill -> cleared"] < 5
        assert results["agent restart: first report -> online"] < 2
        # Three intervals since the last report, which came up to one interval before the stop.
        assert results["hung -> offline"] <= 3 * INTERVAL_S + 2
