"""Browser tests: a real `fleet serve` (its own Mosquitto, SQLite in a temp dir, dev mode) with
terminals that publish over MQTT as the agents would, driven by Playwright through Debian's
headless Chromium (`/usr/bin/chromium`; the set-up installs it, nothing is downloaded).

One server and one browser per module; each test opens its own browser context (cookies).
Screenshots go to `.artifacts/screenshots/` (ignored by git)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.mqtt_helpers import Client, connect
from tests.services import mosquitto
from tests.services.fleet_server import Running, fleet_serve, wait_until

CHROMIUM = Path(os.environ.get("FLEET_TEST_CHROMIUM", "/usr/bin/chromium"))
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".artifacts" / "screenshots"
TIMEOUT_MS = 10_000

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]


def skip_reason() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed (pip install '.[dev]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh does)"
    if not mosquitto.available():
        return "mosquitto is not installed"
    return None


#: Terminal -> site: two sites, so the per-site counts mean something.
TERMINALS = {"WH-HALL-01": "WH-HALL", "WH-HALL-02": "WH-HALL", "YL-ST-01": "YL-STREET"}


@dataclass
class Fleet(Running):
    tokens: dict[str, str] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)

    def api(self, method: str, path: str, role: str = "admin", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        return httpx.request(
            method, self.url + path, headers=headers, timeout=10, trust_env=False, **kw
        )

    def report(self, terminal: str, paper_pct: int, reasons: list[str] | None = None) -> None:
        """Publish one status report as the terminal's agent would."""
        self.seq[terminal] = self.seq.get(terminal, 0) + 1
        state = "stopped" if paper_pct == 0 else "idle"
        report = {
            "v": 1,
            "seq": self.seq[terminal],
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "agent": "1.2.0",
            "printer": {
                "driver": "sim",
                "state": state,
                "reasons": reasons if reasons is not None else [],
                "paper": {"level_pct": paper_pct, "capacity": 500},
                "toner_pct": 60,
            },
            "reader": {"driver": "sim", "state": "ok", "card_present": False},
            "host": {"uptime_s": 3600, "disk_free_mb": 5120},
        }
        info = self.clients[terminal].mqtt.publish(
            f"fleet/v1/t/{terminal}/status", json.dumps(report), qos=1
        )
        info.wait_for_publish(5)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    # Long enough that no terminal times out while the module runs.
    with fleet_serve("fleet-web-", status_interval_s=120, ready_timeout_s=30) as running:
        f = Fleet(running.proc, running.data, running.url, running.env)
        try:
            for role in ("operator", "auditor", "admin"):
                out = f.fleet("tokens", "create", "--role", role, "--name", f"web-{role}")
                f.tokens[role] = out.split()[0]
            for terminal, site in TERMINALS.items():
                _provision(f, terminal, site)
            for terminal in TERMINALS:
                f.report(terminal, 80)
            wait_until(
                lambda: (
                    all(
                        t["paper_pct"] == 80
                        for t in f.api("GET", "/api/v1/terminals").json()["items"]
                    )
                    and len(f.api("GET", "/api/v1/terminals").json()["items"]) == len(TERMINALS)
                ),
                15,
                "the terminals' first reports",
            )
            yield f
        finally:
            for c in f.clients.values():
                with contextlib.suppress(Exception):
                    c.close()


def _provision(f: Fleet, terminal: str, site: str) -> None:
    path = f.data / f"{terminal}.toml"
    f.fleet(
        "terminals", "add", terminal, "--site", site, "--model", "sim",
        "--data-dir", str(f.data), "--out", str(path), "--no-config-key",
    )  # fmt: skip
    text = path.read_text()
    port = int(re.search(r"mqtt://127.0.0.1:(\d+)", text).group(1))  # type: ignore[union-attr]
    password = re.search(r'^password = "(.*)"$', text, flags=re.M).group(1)  # type: ignore[union-attr]
    f.clients[terminal] = connect(port, terminal, password, client_id=terminal)


@pytest.fixture(scope="module")
def browser(fleet: Fleet) -> Iterator[Browser]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield b
        finally:
            b.close()


def login(browser: Browser, fleet: Fleet, role: str, lang: str = "zh-CN") -> Page:
    """A new browser context logged in with `role`'s token."""
    context = browser.new_context(base_url=fleet.url, locale=lang)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto("/login")
    page.fill("#token", fleet.tokens[role])
    page.click("#login-submit")
    page.wait_for_load_state()
    return page


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def admin(browser: Browser, fleet: Fleet) -> Iterator[Page]:
    page = login(browser, fleet, "admin")
    yield page
    page.context.close()


@pytest.fixture
def operator(browser: Browser, fleet: Fleet) -> Iterator[Page]:
    page = login(browser, fleet, "operator")
    yield page
    page.context.close()


@pytest.fixture
def auditor(browser: Browser, fleet: Fleet) -> Iterator[Page]:
    page = login(browser, fleet, "auditor")
    yield page
    page.context.close()
